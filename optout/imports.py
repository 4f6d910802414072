"""Import of past objections from CSV (`manage.py import_objections`).

The whole file is validated inside one transaction; one bad line and it is rolled back,
with every bad line listed. Each row becomes one `objected` event with the row's own date;
an event with the same subject, purpose and date already in the ledger means the row was
imported before, so importing a file again adds nothing. A row is also skipped when the
ledger already says the subject objects, or holds a later answer from them (say, a
withdrawal made after the imported objection).

A file with exactly the expected header goes whole through PostgreSQL's own CSV parser
(COPY) into a staging table, where one set-based check clears every line; any other file
(or one with a line that check does not clear) is parsed and validated here line by line,
its rows streaming through COPY into the same table. Either way the ledger's one
set-based append (optout.services.objections_append_staged) writes the events, hashed by
demur_event_hash, and the states.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.csv_import import InvalidLines, LineErrors, NeedsCarefulPath, read_header
from optout.ledger import EARLIEST_RECEIVED_AT
from optout.models import ObjectionEvent, Purpose, Source
from optout.services import STAGING_DDL, objections_append_staged

REQUIRED_COLUMNS = ("subject_id", "purpose", "received_at", "source")
OPTIONAL_COLUMNS = ("email",)
_SOURCES = frozenset(Source.values)
# How far in the future a received_at may be: clocks differ a little.
_FUTURE_GRACE = timedelta(minutes=5)
_EMAIL_MAX = ObjectionEvent._meta.get_field("email").max_length


@dataclass
class ImportReport(LineErrors):
    imported: int = 0
    already_recorded: int = 0
    duplicates_in_file: int = 0


@dataclass(frozen=True)
class _Row:
    line: int
    subject_id: str
    purpose_id: int
    purpose_slug: str
    received_at: datetime
    source: str
    email: str


def objections_import(path: str, *, progress: Callable[[int], None] | None = None) -> ImportReport:
    """Validate and import `path` in one transaction: all of it, or nothing."""
    now = timezone.now()
    fast = _import_fast(path, now, progress)
    if fast is not None:
        return fast
    report = ImportReport()
    purposes = dict(Purpose.objects.values_list("slug", "id"))
    rows = report.counted(_parse(path, purposes, report, now, progress))
    try:
        with transaction.atomic():
            _load_checked(rows, report, now)
    except InvalidLines:
        pass
    return report


# --- parsing and validation ---------------------------------------------------------------


def _lines(path: str, progress: Callable[[int], None] | None) -> Iterator[str]:
    # surrogateescape keeps undecodable bytes visible as lone surrogates, so the row that
    # holds them can be named with its line number instead of failing the whole read.
    with open(path, "rb") as handle:
        for raw in handle:
            if progress:
                progress(len(raw))
            yield raw.decode("utf-8", errors="surrogateescape")


def _parse(
    path: str,
    purposes: dict[str, int],
    report: ImportReport,
    now: datetime,
    progress: Callable[[int], None] | None,
) -> Iterator[_Row]:
    lines = _lines(path, progress)
    reader = csv.reader(lines, strict=True)
    header = read_header(reader, report, REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    if header is None:
        return
    index = {name: header.index(name) for name in header}
    width = len(header)
    future_limit = now + _FUTURE_GRACE

    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.add_error(reader.line_num, _("not a valid CSV line ({detail}).").format(detail=exc))
            continue
        line = reader.line_num
        if not values:
            continue
        if _has_bad_bytes(values):
            report.add_error(line, _("the text is not valid UTF-8."))
            continue
        if len(values) != width:
            report.add_error(
                line, _("expected {expected} fields, found {found}.").format(expected=width, found=len(values))
            )
            continue
        problems = []
        subject_id = values[index["subject_id"]].strip()
        if not subject_id:
            problems.append(_("subject_id is empty"))
        elif len(subject_id) > 128 or not subject_id.isprintable():
            problems.append(_("subject_id must be at most 128 printable characters"))
        slug = values[index["purpose"]].strip()
        purpose_id = purposes.get(slug)
        if purpose_id is None:
            problems.append(_("unknown purpose {purpose!r}").format(purpose=slug))
        received_at = _parse_timestamp(values[index["received_at"]].strip())
        if received_at is None:
            problems.append(
                _("received_at {value!r} is not an ISO 8601 date or date and time").format(
                    value=values[index["received_at"]]
                )
            )
        elif received_at > future_limit:
            problems.append(_("received_at is in the future"))
        elif received_at < EARLIEST_RECEIVED_AT:
            problems.append(_("received_at is before {date}").format(date=EARLIEST_RECEIVED_AT.date().isoformat()))
        source = values[index["source"]].strip()
        if source not in _SOURCES:
            problems.append(
                _("unknown source {source!r} (expected one of: {choices})").format(
                    source=source, choices=", ".join(Source.values)
                )
            )
        email = values[index["email"]].strip() if "email" in index else ""
        if email:
            try:
                validate_email(email)  # takes up to 320 characters; the column holds 254
            except ValidationError:
                problems.append(_("email {email!r} is not a valid address").format(email=email))
            else:
                if len(email) > _EMAIL_MAX:
                    problems.append(_("email is longer than {max} characters").format(max=_EMAIL_MAX))
        if problems:
            report.add_error(line, "; ".join(problems) + ".")
            continue
        yield _Row(line, subject_id, purpose_id, slug, received_at, source, email)


def _has_bad_bytes(values: list[str]) -> bool:
    """True when a field holds bytes that were not UTF-8 (kept as lone surrogates)."""
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parse_timestamp(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # documented: times without an offset are UTC
        # Raises OverflowError for a time whose UTC falls outside years 1 to 9999.
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


# --- loading ---------------------------------------------------------------------------------


def _load_checked(rows: Iterator[_Row], report: ImportReport, now: datetime) -> None:
    """The careful path's rows (already validated in Python) into staging, then the import."""
    with connection.cursor() as cursor:
        pg = cursor.cursor  # the psycopg cursor, for COPY
        # Dropped at the end rather than ON COMMIT: a caller may hold an outer transaction.
        pg.execute("DROP TABLE IF EXISTS pg_temp.import_staging")
        pg.execute(STAGING_DDL)
        with pg.copy("COPY import_staging (subject_id, purpose, received_at, source, email) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row.subject_id, row.purpose_slug, row.received_at.isoformat(), row.source, row.email))
        report.check_complete()
        _import_staged(pg, report, now)


def _import_staged(pg: psycopg.Cursor, report: ImportReport, now: datetime) -> None:
    """Write the events and states for what import_staging holds (report.rows lines)."""
    appended = objections_append_staged(cursor=pg, now=now)
    if appended is None:
        report.add_error(
            None,
            _("Someone objected or withdrew while the import ran; nothing was imported. Run it again."),
        )
        raise InvalidLines
    pg.execute("DROP TABLE pg_temp.import_staging")
    report.duplicates_in_file = report.rows - appended.candidates
    report.imported = appended.appended
    report.already_recorded = appended.candidates - appended.appended


# The fast path's check, deliberately narrow: a row that passes it passes the Python
# validation too and means the same there. Anything else (a Unicode subject id, spaces to
# strip, a date with an offset, an odd address) sends the file through the careful path,
# which decides exactly and names every bad line. A date passes only in the two forms it
# reads back as (2025-04-21T10:00:00Z or 2025-04-21), so PostgreSQL's looser date input
# never decides anything; an impossible date (2025-02-30) makes the cast fail, which
# also means the careful path. No bounded repeats ({1,128}) in the patterns: PostgreSQL's
# regex engine made the subject id pattern cost 25 µs a row with one, under 1 µs without;
# lengths are checked apart, and an address over 64 characters (so possibly with a domain
# label over 63) is left to the careful path.
_FAST_SUBJECT = r"^[A-Za-z0-9._:@+=/-]+$"
_FAST_EMAIL = r"^[A-Za-z0-9_%+-]+(\.[A-Za-z0-9_%+-]+)*@([A-Za-z0-9]+(-+[A-Za-z0-9]+)*\.)+[A-Za-z][A-Za-z]+$"
FAST_CHECK_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE NOT coalesce(
           s.subject_id ~ %(subject)s AND length(s.subject_id) <= 128
           AND p.id IS NOT NULL AND s.source = ANY(%(sources)s::text[])
           AND (s.email = '' OR (length(s.email) <= 64 AND s.email ~ %(email)s))
           AND (to_char(s.received_at::timestamptz, 'YYYY-MM-DD"T"HH24:MI:SS"Z"') = s.received_at
                OR to_char(s.received_at::timestamptz, 'YYYY-MM-DD') = s.received_at),
           false)),
       max(s.received_at::timestamptz), min(s.received_at::timestamptz)
FROM import_staging s LEFT JOIN optout_purpose p ON p.slug = s.purpose
"""


def fast_check_params() -> dict:
    """FAST_CHECK_SQL's parameters."""
    return {"subject": _FAST_SUBJECT, "sources": sorted(_SOURCES), "email": _FAST_EMAIL}


def _import_fast(path: str, now: datetime, progress: Callable[[int], None] | None) -> ImportReport | None:
    """The file through PostgreSQL's own CSV parser (COPY) into staging, one set-based
    check, and the import. None, with nothing written, when any line needs the careful
    path: a line the check does not clear, malformed CSV or UTF-8, or a line count that
    differs from the rows COPY read (a quoted line break, or a "\\." line that ends COPY)."""
    with open(path, "rb") as handle:
        first = handle.readline()
        try:
            header = next(csv.reader([first.decode("utf-8-sig")]))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            return None
        header = [name.strip().lower() for name in header]
        if sorted(header) not in (sorted(REQUIRED_COLUMNS), sorted(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)):
            return None
        if progress:
            progress(len(first))
        report = ImportReport()
        options = "FORMAT csv, FORCE_NOT_NULL (email)" if "email" in header else "FORMAT csv"
        lines = 0
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                pg = cursor.cursor
                pg.execute("DROP TABLE IF EXISTS pg_temp.import_staging")
                pg.execute(STAGING_DDL)
                pg.execute("SET LOCAL TimeZone = 'UTC'")  # a time without an offset is UTC
                last = b"\n"
                with pg.copy(f"COPY import_staging ({', '.join(header)}) FROM STDIN ({options})") as copy:
                    while chunk := handle.read(1 << 20):
                        copy.write(chunk)
                        lines += chunk.count(b"\n")
                        last = chunk[-1:]
                        if progress:
                            progress(len(chunk))
                lines += last != b"\n"
                pg.execute(FAST_CHECK_SQL, fast_check_params())
                report.rows, bad, latest, earliest = pg.fetchone()
                if (
                    bad
                    or not report.rows
                    or report.rows != lines
                    or latest > now + _FUTURE_GRACE
                    or earliest < EARLIEST_RECEIVED_AT
                ):
                    raise NeedsCarefulPath
                _import_staged(pg, report, now)
        except (NeedsCarefulPath, psycopg.errors.DataError, psycopg.errors.BadCopyFileFormat):
            return None
        except InvalidLines:
            return report
    return report
