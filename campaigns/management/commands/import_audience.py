from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from campaigns.audience import audience_import


class Command(BaseCommand):
    help = (
        "Add or update recipients from a UTF-8 CSV file with the columns subject_id, email, "
        "language (one of LANGUAGES) and country (an EU/EEA ISO code). Nothing is imported "
        "unless every line is valid."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, path: str, **options):
        if not os.path.isfile(path):
            raise CommandError(f"No such file: {path}")
        show_bar = sys.stderr.isatty() and options["verbosity"] > 0
        with tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="importing", disable=not show_bar) as bar:
            report = audience_import(path, progress=bar.update)
        if not report.ok:
            for message in report.errors:
                self.stderr.write(message)
            if report.error_count > len(report.errors):
                self.stderr.write(f"... and {report.error_count - len(report.errors)} more")
            raise CommandError(f"{report.error_count} problem(s) found; nothing was imported.")
        self.stdout.write(
            f"{report.rows} rows read: {report.created} recipients added, {report.updated} updated, "
            f"{report.unchanged} unchanged."
        )
