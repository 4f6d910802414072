from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

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
        if not os.path.isfile(path):
            raise CommandError(f"No such file: {path}")
        show_bar = sys.stderr.isatty() and options["verbosity"] > 0
        size = os.path.getsize(path)
        with tqdm(total=size, unit="B", unit_scale=True, desc="importing", disable=not show_bar) as bar:
            report = objections_import(path, progress=bar.update)
        if not report.ok:
            for message in report.errors:
                self.stderr.write(message)
            if report.error_count > len(report.errors):
                self.stderr.write(f"... and {report.error_count - len(report.errors)} more")
            raise CommandError(
                f"{report.error_count} problem(s) found; nothing was imported."
            )
        self.stdout.write(
            f"{report.rows} rows read: {report.imported} objections imported, "
            f"{report.already_recorded} already recorded, {report.duplicates_in_file} duplicates in the file."
        )
