from __future__ import annotations

from django.core.management.base import BaseCommand

from core.csv_import import run_file_import
from optout.imports import objections_import


class Command(BaseCommand):
    help = (
        "Import past objections from a UTF-8 CSV file with the columns subject_id, purpose, "
        "received_at (ISO 8601; UTC when no offset is given), source and optionally email. "
        "Nothing is imported unless every line is valid; importing a file again adds nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, path: str, **options):
        report = run_file_import(self, path, objections_import, verbosity=options["verbosity"])
        self.stdout.write(
            f"{report.rows} rows read: {report.imported} objections imported, "
            f"{report.already_recorded} already recorded, {report.duplicates_in_file} duplicates in the file."
        )
