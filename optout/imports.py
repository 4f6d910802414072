"""Import of past objections from CSV (`manage.py import_objections`).

The whole file is validated inside one transaction; one bad line and it is rolled back,
with every bad line listed. Each row becomes one `objected` event with the row's own date;
an event with the same subject, purpose and date already in the ledger means the row was
imported before, so importing a file again adds nothing. A row is also skipped when the
ledger already says the subject objects, or holds a later answer from them (say, a
withdrawal made after the imported objection).

On PostgreSQL rows stream through COPY into a staging table and one set-based statement
writes the events (hashed by demur_event_hash, the SQL twin of optout.ledger.event_hash)
and the states; elsewhere (the SQLite quick start) the ORM does the same row by row.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from optout.ledger import EARLIEST_RECEIVED_AT, GENESIS_HASH, event_hash, format_timestamp, new_receipt_code
from optout.models import Action, ObjectionEvent, ObjectionState, Purpose, Source
from optout.services import state_follow

REQUIRED_COLUMNS = ("subject_id", "purpose", "received_at", "source")
OPTIONAL_COLUMNS = ("email",)
MAX_ERRORS_KEPT = 10_000
_SOURCES = frozenset(Source.values)
# How far in the future a received_at may be: clocks differ a little.
_FUTURE_GRACE = timedelta(minutes=5)
_EMAIL_MAX = ObjectionEvent._meta.get_field("email").max_length
T = TypeVar("T")


@dataclass
class LineErrors:
    """The problems found in an input file, each named by its line; shared by every
    all-or-nothing import (objections here, the audience in campaigns.audience)."""

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
    if connection.vendor == "postgresql":
        fast = _import_postgres_fast(path, now, progress)
        if fast is not None:
            return fast
    report = ImportReport()
    purposes = dict(Purpose.objects.values_list("slug", "id"))
    rows = report.counted(_parse(path, purposes, report, now, progress))
    load = _load_postgres if connection.vendor == "postgresql" else _load_orm
    try:
        with transaction.atomic():
            load(rows, report, now)
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


# --- loading: SQLite and other backends -----------------------------------------------------


def _load_orm(rows: Iterator[_Row], report: ImportReport, now: datetime) -> None:
    chosen: dict[tuple[str, int], _Row] = {}
    for row in rows:
        key = (row.subject_id, row.purpose_id)
        other = chosen.get(key)
        if other is not None:
            report.duplicates_in_file += 1
            if other.received_at <= row.received_at:
                continue
        chosen[key] = row
    report.check_complete()

    for row in chosen.values():
        state, _created = ObjectionState.objects.select_for_update().get_or_create(
            subject_id=row.subject_id, purpose_id=row.purpose_id
        )
        seen_before = ObjectionEvent.objects.filter(
            subject_id=row.subject_id,
            purpose_id=row.purpose_id,
            action=Action.OBJECTED,
            received_at=row.received_at,
        ).exists()
        if seen_before or state.objected or (state.received_at and state.received_at >= row.received_at):
            report.already_recorded += 1
            continue
        event = ObjectionEvent(
            subject_id=row.subject_id,
            email=row.email,
            purpose_id=row.purpose_id,
            action=Action.OBJECTED,
            source=row.source,
            received_at=row.received_at,
            effective_at=row.received_at,
            recorded_at=now,
            receipt_code=new_receipt_code(),
            prev_hash=state.head_hash or GENESIS_HASH,
        )
        event.hash = event_hash(
            prev_hash=event.prev_hash,
            uuid=event.uuid,
            subject_id=row.subject_id,
            purpose=row.purpose_slug,
            action=Action.OBJECTED,
            source=row.source,
            received_at=row.received_at,
            effective_at=row.received_at,
            recorded_at=now,
            receipt_code=event.receipt_code,
            email=row.email,
        )
        event.save(force_insert=True)
        state_follow(state, event)
        report.imported += 1


# --- loading: PostgreSQL ----------------------------------------------------------------------

# Both PostgreSQL paths fill this table in file order (so `ctid` breaks ties between two
# lines for one person with the same date, as the first line wins elsewhere) and hand it
# to _IMPORT_SQL. Text columns: the fast path copies the file's own fields in unchanged.
_STAGING_DDL = (
    "CREATE TEMP TABLE import_staging (subject_id text, purpose text, received_at text, source text, "
    "email text NOT NULL DEFAULT '')"
)

# One statement: the earliest row per subject and purpose, minus what the ledger already
# has, becomes one chained event each, and the states follow. Existing state rows were
# locked beforehand; a state row that appears meanwhile for a new subject (someone
# objecting while the import runs) violates the unique constraint, and the import is
# rolled back rather than fork that person's chain.
#
# The hash is optout.ledger.event_hash spelled out for an import row (demur_event_hash
# with the constant fields folded in): the date is formatted once for received_at and
# effective_at, recorded_at once for the whole file (%(recorded)s, formatted in Python),
# and reason, campaign, notice version, staff user and idempotency key are always
# '', NULL, NULL, '' and NULL ('0:~~0:~'). verify_ledger recomputes every hash in Python,
# and the import tests run it. The uuid7 is assembled from two integers: Unix
# milliseconds with a 12-bit counter (so one import's ids rise strictly), then the
# variant and 62 random bits. subject_id sorts under "C", which orders exactly as the
# database's C.UTF-8 and compares far faster.
_IMPORT_SQL = """
WITH candidates AS (
    SELECT DISTINCT ON (s.subject_id COLLATE "C", p.id)
           s.subject_id, p.id AS purpose_id, length(p.slug) || ':' || p.slug || '8:objected' AS hashed_purpose,
           s.received_at::timestamptz AS received_at, s.source, s.email
    FROM import_staging s JOIN optout_purpose p ON p.slug = s.purpose
    ORDER BY s.subject_id COLLATE "C", p.id, s.received_at::timestamptz, s.ctid
), eligible AS (
    SELECT c.*, s.id AS state_id, coalesce(nullif(s.head_hash, ''), %(genesis)s) AS prev_hash,
           nextval('optout_objectionevent_id_seq') AS id, row_number() OVER () AS rn,
           floor(random() * 2147483648)::bigint << 31 | floor(random() * 2147483648)::bigint AS random62,
           floor(random() * 16777216)::integer AS receipt_code
    FROM candidates c
    LEFT JOIN optout_objectionstate s ON s.subject_id = c.subject_id AND s.purpose_id = c.purpose_id
    WHERE (s.id IS NULL OR (NOT s.objected AND (s.received_at IS NULL OR s.received_at < c.received_at)))
      AND NOT EXISTS (
          SELECT 1 FROM optout_objectionevent e
          WHERE e.subject_id = c.subject_id AND e.purpose_id = c.purpose_id
            AND e.action = 'objected' AND e.received_at = c.received_at
      )
), events AS (
    SELECT e.subject_id, e.purpose_id, e.received_at, e.source, e.email, e.state_id, e.prev_hash, e.id,
           e.receipt_code, e.uuid, demur_receipt(e.id, e.receipt_code) AS receipt,
           encode(sha256(convert_to(
               'demur-event-v1|' || length(e.prev_hash) || ':' || e.prev_hash || '36:' || e.uuid
               || length(e.subject_id) || ':' || e.subject_id || e.hashed_purpose
               || length(e.source) || ':' || e.source || '27:' || e.ts || '27:' || e.ts || %(recorded)s
               || length(e.receipt_code::text) || ':' || e.receipt_code
               || length(e.email) || ':' || e.email || '0:~~0:~',
               'UTF8')), 'hex') AS hash
    FROM (
        SELECT e.*,
               encode(int8send((%(ms)s + e.rn / 4096) << 16 | 28672 | e.rn %% 4096)
                      || int8send(-9223372036854775808 | e.random62), 'hex')::uuid AS uuid,
               to_char(e.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts
        FROM eligible e
    ) e
), inserted AS (
    INSERT INTO optout_objectionevent (
        id, uuid, xid, subject_id, email, purpose_id, action, source, reason, staff_user,
        received_at, effective_at, recorded_at, receipt_code, prev_hash, hash
    )
    SELECT id, uuid, (SELECT pg_current_xact_id()::text::bigint), subject_id, email, purpose_id, 'objected',
           source, '', '', received_at, received_at, %(now)s, receipt_code, prev_hash, hash
    FROM events
    RETURNING 1
), updated AS (
    UPDATE optout_objectionstate s SET
        objected = true, source = e.source, received_at = e.received_at,
        effective_at = e.received_at, receipt = e.receipt, last_event_id = e.id,
        head_hash = e.hash, updated_at = %(now)s
    FROM events e
    WHERE e.state_id IS NOT NULL AND s.id = e.state_id
    RETURNING 1
), created AS (
    INSERT INTO optout_objectionstate (
        subject_id, purpose_id, objected, source, received_at, effective_at, receipt,
        last_event_id, head_hash, updated_at
    )
    SELECT subject_id, purpose_id, true, source, received_at, received_at, receipt, id, hash, %(now)s
    FROM events
    WHERE state_id IS NULL
    RETURNING 1
)
SELECT
    (SELECT count(*) FROM candidates),
    (SELECT count(*) FROM inserted),
    (SELECT count(*) FROM updated) + (SELECT count(*) FROM created)
"""


def _load_postgres(rows: Iterator[_Row], report: ImportReport, now: datetime) -> None:
    """The careful path's rows (already validated in Python) into staging, then the import."""
    with connection.cursor() as cursor:
        pg = cursor.cursor  # the psycopg cursor, for COPY
        # Dropped at the end rather than ON COMMIT: a caller may hold an outer transaction.
        pg.execute("DROP TABLE IF EXISTS pg_temp.import_staging")
        pg.execute(_STAGING_DDL)
        with pg.copy("COPY import_staging (subject_id, purpose, received_at, source, email) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row.subject_id, row.purpose_slug, row.received_at.isoformat(), row.source, row.email))
        report.check_complete()
        _import_staged(pg, report, now)


def _import_staged(pg, report: ImportReport, now: datetime) -> None:
    """Write the events and states for what import_staging holds (report.rows lines)."""
    pg.execute("ANALYZE import_staging")
    # Enough for a million rows' sort and the materialised events (about 250 MB) to stay
    # in memory; for this transaction only.
    pg.execute("SET LOCAL work_mem = '512MB'")
    # Whoever objects or withdraws for these people now waits for the import.
    pg.execute(
        """
        SELECT 1 FROM optout_objectionstate
        WHERE (subject_id, purpose_id) IN (
            SELECT s.subject_id, p.id FROM import_staging s JOIN optout_purpose p ON p.slug = s.purpose
        )
        FOR UPDATE
        """
    )
    recorded = format_timestamp(now)
    params = {
        "genesis": GENESIS_HASH,
        "now": now,
        "recorded": f"{len(recorded)}:{recorded}",
        "ms": int(now.timestamp() * 1000),
    }
    try:
        pg.execute(_IMPORT_SQL, params)
    except psycopg.errors.UniqueViolation:
        candidates = inserted = states = -1
    else:
        candidates, inserted, states = pg.fetchone()
    if states != inserted:
        report.add_error(
            None,
            _("Someone objected or withdrew while the import ran; nothing was imported. Run it again."),
        )
        raise InvalidLines
    pg.execute("DROP TABLE pg_temp.import_staging")
    report.duplicates_in_file = report.rows - candidates
    report.imported = inserted
    report.already_recorded = candidates - inserted


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
_FAST_CHECK_SQL = """
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


def _import_postgres_fast(path: str, now: datetime, progress: Callable[[int], None] | None) -> ImportReport | None:
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
                pg.execute(_STAGING_DDL)
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
                pg.execute(
                    _FAST_CHECK_SQL,
                    {
                        "subject": _FAST_SUBJECT,
                        "sources": sorted(_SOURCES),
                        "email": _FAST_EMAIL,
                    },
                )
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
