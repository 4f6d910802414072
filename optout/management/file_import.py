"""What every all-or-nothing CSV import command does around its importer: check the
file, show a progress bar on a terminal, and list every problem if the file is refused."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm


def run_file_import(command: BaseCommand, path: str, importer: Callable, *, verbosity: int):
    """Run `importer(path, progress=...)` and return its report, or raise CommandError
    after writing each problem to stderr."""
    if not os.path.isfile(path):
        raise CommandError(f"No such file: {path}")
    show_bar = sys.stderr.isatty() and verbosity > 0
    with tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="importing", disable=not show_bar) as bar:
        report = importer(path, progress=bar.update)
    if not report.ok:
        for message in report.errors:
            command.stderr.write(message)
        if report.error_count > len(report.errors):
            command.stderr.write(f"... and {report.error_count - len(report.errors)} more")
        raise CommandError(f"{report.error_count} problem(s) found; nothing was imported.")
    return report
