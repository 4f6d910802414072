from __future__ import annotations

from django.core.management.base import BaseCommand

from campaigns.audience import audience_import
from core.csv_import import run_file_import


class Command(BaseCommand):
    help = (
        "Add or update recipients from a UTF-8 CSV file with the columns subject_id, email, "
        "language (one of LANGUAGES) and country (an EU/EEA ISO code). Nothing is imported "
        "unless every line is valid."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, path: str, **options):
        report = run_file_import(self, path, audience_import, verbosity=options["verbosity"])
        self.stdout.write(
            f"{report.rows} rows read: {report.created} recipients added, {report.updated} updated, "
            f"{report.unchanged} unchanged."
        )
