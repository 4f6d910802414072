"""The audience: recipients from CSV (`manage.py import_audience`), and the retention
that erases their email once their last campaign has long ended.

An import is all or nothing: every line is validated first, and one bad line (or a
subject id given twice) rolls the whole file back with every problem listed by line
number. A subject already in the audience is updated (email, language, country).

A plain file goes whole through PostgreSQL's own CSV parser (COPY) while each line is
checked against a narrow pattern; any other file is parsed and validated line by line and
its rows stream through COPY. Either way they land in one staging table, written to the
audience by the same two statements (`staging_write`).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.models import Recipient
from core.countries import EU_EEA
from core.csv_import import InvalidLines, LineErrors, NeedsCarefulPath, read_header

COLUMNS = ("subject_id", "email", "language", "country")
_COUNTRIES = frozenset(EU_EEA)
# A cheap pre-check that accepts the common address shape; anything else still goes
# through Django's validator, which is exact but ten times slower.
# Dot-atom local part and hostname labels (no leading, trailing or doubled dots, no
# hyphen at a label's edge): a subset of what Django's validator accepts.
_SIMPLE_EMAIL_SOURCE = (
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_SIMPLE_EMAIL = re.compile(_SIMPLE_EMAIL_SOURCE)


@dataclass
class AudienceReport(LineErrors):
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class AudienceRow:
    line: int
    subject_id: str
    email: str
    language: str
    country: str


def _languages() -> frozenset[str]:
    return frozenset(code for code, _name in settings.LANGUAGES)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def audience_fields_clean(
    subject_id: str, email: str, language: str, country: str, languages: frozenset[str]
) -> tuple[tuple[str, str, str, str], dict[str, str]]:
    """One recipient's fields normalised (trimmed, language lower case, country upper case)
    and what is wrong with them, field by field (empty when nothing is). The one set of
    rules for the CSV command, the admin upload and the audience API."""
    subject_id, email = subject_id.strip(), email.strip()
    language, country = language.strip().lower(), country.strip().upper()
    problems: dict[str, str] = {}
    if not subject_id:
        problems["subject_id"] = _("subject_id is empty")
    elif len(subject_id) > 128 or not subject_id.isprintable():  # lone surrogates are not printable
        problems["subject_id"] = _("subject_id must be at most 128 printable characters")
    if not email:
        problems["email"] = _("email is empty")
    elif not _is_utf8(email):  # Django's validator passes a lone surrogate in the domain
        problems["email"] = _("{field} is not valid UTF-8 text").format(field="email")
    elif not _SIMPLE_EMAIL.fullmatch(email):
        try:
            validate_email(email)  # accepts up to 320 characters; the column holds 254
        except ValidationError:
            problems["email"] = _("email {email!r} is not a valid address").format(email=email)
    if "email" not in problems and len(email) > 254:
        problems["email"] = _("email {email!r} is not a valid address").format(email=email)
    if language not in languages:
        problems["language"] = _("unknown language {language!r}").format(language=language)
    if country not in _COUNTRIES:
        problems["country"] = _("country {country!r} is not an EU or EEA country code").format(country=country)
    return (subject_id, email, language, country), problems


def audience_items_clean(items: list) -> tuple[list[AudienceRow], dict[str, dict[str, list[str]]]]:
    """The audience API's recipients (a decoded JSON list) checked with the same rules as a
    file: the rows when all are good, else the problems by item index and field. A subject
    given twice is a problem, as in a file; `AudienceRow.line` holds the item's index."""
    languages = _languages()
    rows: list[AudienceRow] = []
    errors: dict[str, dict[str, list[str]]] = {}
    first_index: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            message = _("Expected an object with the fields {fields}.").format(fields=", ".join(COLUMNS))
            errors[str(index)] = {"non_field_errors": [message]}
            continue
        problems: dict[str, str] = {}
        for name in COLUMNS:
            if name not in item:
                problems[name] = _("This field is required.")
            elif type(item[name]) is not str:
                problems[name] = _("Not a valid string.")
        if not problems:
            values, problems = audience_fields_clean(*(item[name] for name in COLUMNS), languages)
            if not problems:
                other = first_index.setdefault(values[0], index)
                if other != index:
                    problems["subject_id"] = _("subject_id {subject_id!r} is also item {other}.").format(
                        subject_id=values[0], other=other
                    )
                else:
                    rows.append(AudienceRow(index, *values))
        if problems:
            errors[str(index)] = {name: [message] for name, message in problems.items()}
    return rows, errors


def audience_import(path: str, *, progress: Callable[[int], None] | None = None) -> AudienceReport:
    """Validate and upsert the recipients in `path`: all of them, or none."""
    report = _import_fast(path, progress)
    if report is not None:
        return report
    report = AudienceReport()
    rows = _parse(path, report, progress)
    return audience_load(rows, report)


# The fast path's test of each line, as bytes: deliberately narrow, so that a line that
# passes passes audience_fields_clean too. Any other line (quoted fields, a Unicode
# subject id, spaces to strip, "DE " or "De", a blank line) sends the whole file
# through the line-by-line path, which decides exactly and names every bad line. The
# email's 254 characters are bounded by refusing lines longer than that. Checked in
# Python while PostgreSQL parses the same bytes for COPY: the same test in SQL cost as
# much as the insert (PostgreSQL's regex engine unrolls {1,128} and {2,63} into states).
_FAST_LINE_MAX = 254
_FAST_FIELDS = {
    "subject_id": rb"[A-Za-z0-9._:@+=/-]{1,128}",
    "email": _SIMPLE_EMAIL_SOURCE.encode(),
}


def fast_line_pattern(header: list[str]) -> re.Pattern[bytes]:
    """The fast path's test of one line of a file whose columns come in `header`'s order."""
    fields = {
        **_FAST_FIELDS,
        "language": b"(?:" + b"|".join(code.encode() for code in sorted(_languages())) + b")",
        "country": b"(?:" + b"|".join(code.encode() for code in sorted(_COUNTRIES)) + b")",
    }
    return re.compile(b",".join(fields[name] for name in header) + rb"\r?")


def fast_lines_ok(pattern: re.Pattern[bytes], lines: list[bytes]) -> bool:
    """Whether every line (without its newline) passes the fast path's test."""
    return max(map(len, lines), default=0) <= _FAST_LINE_MAX and all(map(pattern.fullmatch, lines))


def _import_fast(path: str, progress: Callable[[int], None] | None) -> AudienceReport | None:
    """The whole file through PostgreSQL's own CSV parser (COPY), checked line by line on
    the way and for duplicates once staged, then written. None when any line needs the
    careful path (a bad or unusual line, a subject given twice, a malformed CSV): nothing
    has been written then."""
    with open(path, "rb") as handle:
        try:
            header = next(csv.reader([handle.readline().decode("utf-8-sig")]))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            return None
        header = [name.strip().lower() for name in header]
        if sorted(header) != sorted(COLUMNS):
            return None
        pattern = fast_line_pattern(header)
        report = AudienceReport()
        now = timezone.now()
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                pg = cursor.cursor
                staging_create(pg)
                with pg.copy(f"COPY audience_staging ({', '.join(header)}) FROM STDIN (FORMAT csv)") as copy:
                    tail = b""
                    while chunk := handle.read(1 << 20):
                        copy.write(chunk)
                        lines = (tail + chunk).split(b"\n")
                        tail = lines.pop()
                        report.rows += len(lines)
                        if not fast_lines_ok(pattern, lines):
                            raise NeedsCarefulPath
                        if progress:
                            progress(len(chunk))
                    if tail:
                        report.rows += 1
                        if not fast_lines_ok(pattern, [tail]):
                            raise NeedsCarefulPath
                if not report.rows or staging_duplicated(pg):
                    raise NeedsCarefulPath  # the careful path names the lines
                report.created, report.updated = staging_write(pg, now=now)
                pg.execute("DROP TABLE pg_temp.audience_staging")
        except (NeedsCarefulPath, psycopg.Error):
            return None
    report.unchanged = report.rows - report.created - report.updated
    return report


def audience_load(rows: Iterable[AudienceRow], report: AudienceReport) -> AudienceReport:
    """Upsert already-parsed rows in one transaction (the CSV import and the API)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            _load(report.counted(rows), report, now)
    except InvalidLines:
        report.created = report.updated = report.unchanged = 0
    return report


# --- parsing ---------------------------------------------------------------------------------


class _CountingReader(io.BufferedReader):
    """Reports the bytes read, chunk by chunk (not line by line, which costs)."""

    def __init__(self, raw, progress: Callable[[int], None] | None) -> None:
        super().__init__(raw, buffer_size=1 << 20)
        self.progress = progress

    def read1(self, size: int = -1) -> bytes:
        data = super().read1(size)
        if self.progress:
            self.progress(len(data))
        return data


def _parse(path: str, report: AudienceReport, progress: Callable[[int], None] | None) -> Iterator[AudienceRow]:
    with io.TextIOWrapper(
        _CountingReader(io.FileIO(path, "r"), progress),
        encoding="utf-8",
        errors="surrogateescape",  # undecodable bytes stay visible, so their line is named
        newline="",
    ) as text:
        yield from _parse_text(text, report)


def _parse_text(text: io.TextIOBase, report: AudienceReport) -> Iterator[AudienceRow]:
    reader = csv.reader(text, strict=True)
    header = read_header(reader, report, COLUMNS)
    if header is None:
        return
    i_subject, i_email, i_language, i_country = (header.index(name) for name in COLUMNS)
    width = len(header)
    languages = _languages()
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
        if len(values) != width:
            report.add_error(
                line, _("expected {expected} fields, found {found}.").format(expected=width, found=len(values))
            )
            continue
        cleaned, problems = audience_fields_clean(
            values[i_subject], values[i_email], values[i_language], values[i_country], languages
        )
        if problems:
            report.add_error(line, "; ".join(problems.values()) + ".")
            continue
        yield AudienceRow(line, *cleaned)


# --- loading ---------------------------------------------------------------------------------
#
# Both paths stage their rows in audience_staging and write them with the same two
# statements: changed subjects by an UPDATE, new ones by a plain INSERT. INSERT ... ON
# CONFLICT inserts each row speculatively and took 1.7x as long for a million new
# recipients (bench/audience_import.py). The UPDATE would apply one of two rows for the
# same subject unnoticed, so each path checks for duplicates before writing.

RECIPIENTS_UPDATE_SQL = """
UPDATE campaigns_recipient r SET
    email = s.email, language = s.language, country = s.country,
    updated_at = %(now)s, email_erased_at = NULL
FROM audience_staging s
WHERE r.subject_id = s.subject_id
  AND (r.email, r.language, r.country) IS DISTINCT FROM (s.email, s.language, s.country)
"""
RECIPIENTS_INSERT_SQL = """
INSERT INTO campaigns_recipient (subject_id, email, language, country, created_at, updated_at)
SELECT subject_id, email, language, country, %(now)s, %(now)s FROM audience_staging s
WHERE NOT EXISTS (SELECT FROM campaigns_recipient r WHERE r.subject_id = s.subject_id)
"""
_WRITE_ATTEMPTS = 5


def staging_create(pg: psycopg.Cursor) -> None:
    """An empty audience_staging for this transaction's import; `line` stays empty on
    the fast path, which never names a line."""
    pg.execute("DROP TABLE IF EXISTS pg_temp.audience_staging")
    pg.execute(
        "CREATE TEMP TABLE audience_staging (line integer, subject_id text, email text, language text, country text)"
    )
    pg.execute("SET LOCAL work_mem = '256MB'")  # the duplicate check sorts the whole file


def staging_duplicated(pg: psycopg.Cursor) -> bool:
    """Whether a subject is staged twice."""
    pg.execute("SELECT count(*) - count(DISTINCT subject_id) FROM audience_staging")
    return bool(pg.fetchone()[0])


def staging_write(pg: psycopg.Cursor, *, now: datetime) -> tuple[int, int]:
    """Write the staged rows (no subject twice) to the audience: (created, updated). A
    subject that another writer adds meanwhile makes the INSERT fail; the pair then runs
    again, and the UPDATE takes that subject."""
    attempts = _WRITE_ATTEMPTS
    while True:
        attempts -= 1
        try:
            with transaction.atomic():
                pg.execute(RECIPIENTS_UPDATE_SQL, {"now": now})
                updated = pg.rowcount
                pg.execute(RECIPIENTS_INSERT_SQL, {"now": now})
                return pg.rowcount, updated
        except psycopg.errors.UniqueViolation:
            if not attempts:
                raise


def _report_duplicates(pg: psycopg.Cursor, report: AudienceReport) -> None:
    pg.execute(
        """
        SELECT line, subject_id, first_line FROM (
            SELECT line, subject_id, min(line) OVER (PARTITION BY subject_id) AS first_line
            FROM audience_staging
        ) s WHERE line > first_line ORDER BY line
        """
    )
    for line, subject_id, first_line in pg.fetchall():
        report.add_error(
            line,
            _("subject_id {subject_id!r} is also on line {other}.").format(subject_id=subject_id, other=first_line),
        )


def _load(rows: Iterable[AudienceRow], report: AudienceReport, now: datetime) -> None:
    with connection.cursor() as cursor:
        pg = cursor.cursor  # the psycopg cursor, for COPY
        staging_create(pg)
        with pg.copy("COPY audience_staging (line, subject_id, email, language, country) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row.line, row.subject_id, row.email, row.language, row.country))
        if not report.ok or staging_duplicated(pg):
            _report_duplicates(pg, report)  # beside any other bad line, so that all are named
        report.check_complete()
        report.created, report.updated = staging_write(pg, now=now)
        pg.execute("DROP TABLE pg_temp.audience_staging")
    report.unchanged = report.rows - report.created - report.updated


# --- retention -------------------------------------------------------------------------------


def recipients_erase_expired(*, now: datetime | None = None) -> int:
    """Erase the email of everyone whose last campaign ended more than
    DEMUR_RECIPIENT_RETENTION_DAYS ago and who is in no campaign still sending. The
    recipient row, the deliveries and the ledger stay. Returns how many were erased."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.DEMUR_RECIPIENT_RETENTION_DAYS)
    from campaigns.models import Campaign, Delivery

    active = Delivery.objects.filter(
        campaign__status__in=[Campaign.Status.SCHEDULED, Campaign.Status.RUNNING, Campaign.Status.PAUSED],
        status__in=[Delivery.Status.PENDING, Delivery.Status.SENDING],
    ).values("subject_id")
    return (
        Recipient.objects.filter(last_campaign_ended_at__lt=cutoff)
        .exclude(email="")
        .exclude(subject_id__in=active)
        .update(email="", email_erased_at=now)
    )
