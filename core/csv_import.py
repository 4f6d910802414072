"""What every all-or-nothing CSV import shares (past objections in optout.imports, the
audience in campaigns.audience): the problems found, each named by its line; the header
check; the exceptions that roll an import back or send it down its careful path; and the
management command's run around an importer (progress bar, problems on stderr)."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _
from tqdm import tqdm

# Problems kept for the report; the rest are only counted.
MAX_ERRORS_KEPT = 10_000
T = TypeVar("T")


@dataclass
class LineErrors:
    """The problems found in an input file, each named by its line."""

    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    rows: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, line: int | None, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            prefix = _("line {line}: ").format(line=line) if line else ""
            self.errors.append(prefix + message)

    def counted(self, rows: Iterable[T]) -> Iterator[T]:
        """The rows, counted as they are read."""
        for row in rows:
            self.rows += 1
            yield row

    def check_complete(self) -> None:
        """Called once every line has been read: roll back unless all were good."""
        if self.ok and self.rows == 0:
            self.add_error(None, _("The file has no rows to import."))
        if not self.ok:
            raise InvalidLines


class InvalidLines(Exception):
    """Raised inside an import's transaction to roll it back after a bad line."""


class NeedsCarefulPath(Exception):
    """A fast path's check met a line it does not clear: the line-by-line path decides."""


def read_header(
    reader: Iterator[list[str]], report: LineErrors, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> list[str] | None:
    """The header line's column names (a byte order mark dropped, trimmed, lower case), or
    None after naming what is wrong with it: no header, missing, unknown or repeated columns."""
    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as exc:
        report.add_error(1, _("not a valid CSV line ({detail}).").format(detail=exc))
        return None
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    header = [name.strip().lower() for name in header]
    if not any(header):
        report.add_error(None, _("The file is empty."))
        return None
    missing = [name for name in required if name not in header]
    unknown = [name for name in header if name not in required + optional]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if missing:
        report.add_error(1, _("missing column(s): {columns}.").format(columns=", ".join(missing)))
    if unknown:
        report.add_error(1, _("unknown column(s): {columns}.").format(columns=", ".join(unknown)))
    if repeated:
        report.add_error(1, _("column(s) named more than once: {columns}.").format(columns=", ".join(repeated)))
    return None if missing or unknown or repeated else header


def run_file_import(command: BaseCommand, path: str, importer: Callable, *, verbosity: int):
    """Run `importer(path, progress=...)` for a management command, with a progress bar
    on a terminal, and return its report; or raise CommandError after writing each
    problem to stderr."""
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
