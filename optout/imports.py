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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from optout.ledger import GENESIS_HASH, event_hash, new_receipt_code
from optout.models import Action, ObjectionEvent, ObjectionState, Purpose, Source

REQUIRED_COLUMNS = ("subject_id", "purpose", "received_at", "source")
OPTIONAL_COLUMNS = ("email",)
MAX_ERRORS_KEPT = 10_000
_SOURCES = frozenset(Source.values)


@dataclass
class LineErrors:
    """The problems found in an input file, each named by its line; shared by every
    all-or-nothing import (objections here, the audience in campaigns.audience)."""

    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, line: int | None, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            prefix = _("line {line}: ").format(line=line) if line else ""
            self.errors.append(prefix + message)


@dataclass
class ImportReport(LineErrors):
    rows: int = 0
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


class _Invalid(Exception):
    """Raised inside the import transaction to roll it back after a bad line."""


def objections_import(path: str, *, progress: Callable[[int], None] | None = None) -> ImportReport:
    """Validate and import `path` in one transaction: all of it, or nothing."""
    report = ImportReport()
    purposes = dict(Purpose.objects.values_list("slug", "id"))
    now = timezone.now()
    rows = _counted(_parse(path, purposes, report, now, progress), report)
    load = _load_postgres if connection.vendor == "postgresql" else _load_orm
    try:
        with transaction.atomic():
            load(rows, report, now)
    except _Invalid:
        pass
    return report


def _counted(rows: Iterator[_Row], report: ImportReport) -> Iterator[_Row]:
    for row in rows:
        report.rows += 1
        yield row


def _check_complete(report: ImportReport) -> None:
    """Called once every line has been read: roll back unless all were good."""
    if report.ok and report.rows == 0 and not report.errors:
        report.add_error(None, _("The file has no rows to import."))
    if not report.ok:
        raise _Invalid


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
    try:
        header = next(reader)
    except StopIteration:
        report.add_error(None, _("The file is empty."))
        return
    except csv.Error as exc:
        report.add_error(1, _("not a valid CSV line ({detail}).").format(detail=exc))
        return
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    header = [name.strip().lower() for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        if missing:
            report.add_error(1, _("missing column(s): {columns}.").format(columns=", ".join(missing)))
        if unknown:
            report.add_error(1, _("unknown column(s): {columns}.").format(columns=", ".join(unknown)))
        return
    index = {name: header.index(name) for name in header}
    width = len(header)
    future_limit = now + timedelta(minutes=5)

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
                validate_email(email)
            except ValidationError:
                problems.append(_("email {email!r} is not a valid address").format(email=email))
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
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # documented: times without an offset are UTC
    return value.astimezone(UTC)


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
    _check_complete(report)

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
        state.objected = True
        state.source = event.source
        state.received_at = state.effective_at = event.received_at
        state.receipt = event.receipt
        state.last_event = event
        state.head_hash = event.hash
        state.save(
            update_fields=[
                "objected", "source", "received_at", "effective_at", "receipt", "last_event", "head_hash", "updated_at",
            ]
        )
        report.imported += 1


# --- loading: PostgreSQL ----------------------------------------------------------------------

# One statement: the earliest row per subject and purpose, minus what the ledger already
# has, becomes one chained event each; then the states follow. Existing state rows were
# locked beforehand; a state row that appears meanwhile for a new subject (someone
# objecting while the import runs) makes `created` come up short, and the import is
# rolled back rather than fork that person's chain.
_IMPORT_SQL = """
WITH candidates AS (
    SELECT DISTINCT ON (subject_id, purpose_id) subject_id, purpose_id, received_at, source, email
    FROM import_staging
    ORDER BY subject_id, purpose_id, received_at, line
), eligible AS (
    SELECT c.*, s.id AS state_id, coalesce(nullif(s.head_hash, ''), %(genesis)s) AS prev_hash,
           nextval('optout_objectionevent_id_seq') AS id, row_number() OVER () AS rn,
           gen_random_uuid() AS random_uuid, floor(random() * 16777216)::integer AS receipt_code
    FROM candidates c
    LEFT JOIN optout_objectionstate s ON s.subject_id = c.subject_id AND s.purpose_id = c.purpose_id
    WHERE (s.id IS NULL OR (NOT s.objected AND (s.received_at IS NULL OR s.received_at < c.received_at)))
      AND NOT EXISTS (
          SELECT 1 FROM optout_objectionevent e
          WHERE e.subject_id = c.subject_id AND e.purpose_id = c.purpose_id
            AND e.action = 'objected' AND e.received_at = c.received_at
      )
), inserted AS (
    INSERT INTO optout_objectionevent (
        id, uuid, subject_id, email, purpose_id, action, source, reason, staff_user,
        received_at, effective_at, recorded_at, receipt_code, prev_hash, hash
    )
    SELECT n.id, n.uuid, n.subject_id, n.email, n.purpose_id, 'objected', n.source, '', '',
           n.received_at, n.received_at, %(now)s, n.receipt_code, n.prev_hash,
           demur_event_hash(
               n.prev_hash, n.uuid, n.subject_id, p.slug, 'objected', n.source, n.received_at,
               n.received_at, %(now)s, n.receipt_code, n.email, '', NULL, NULL, '', NULL
           )
    FROM (
        SELECT e.*, demur_uuid7_at(%(ms)s + e.rn / 4096, (e.rn %% 4096)::integer, e.random_uuid) AS uuid
        FROM eligible e
    ) n JOIN optout_purpose p ON p.id = n.purpose_id
    RETURNING id, uuid, subject_id, purpose_id, source, received_at, effective_at,
              demur_receipt(id, receipt_code) AS receipt, hash
), updated AS (
    UPDATE optout_objectionstate s SET
        objected = true, source = i.source, received_at = i.received_at,
        effective_at = i.effective_at, receipt = i.receipt, last_event_id = i.id,
        head_hash = i.hash, updated_at = %(now)s
    FROM inserted i JOIN eligible n ON n.id = i.id
    WHERE n.state_id IS NOT NULL AND s.id = n.state_id
    RETURNING 1
), created AS (
    INSERT INTO optout_objectionstate (
        subject_id, purpose_id, objected, source, received_at, effective_at, receipt,
        last_event_id, head_hash, updated_at
    )
    SELECT i.subject_id, i.purpose_id, true, i.source, i.received_at, i.effective_at,
           i.receipt, i.id, i.hash, %(now)s
    FROM inserted i JOIN eligible n ON n.id = i.id
    WHERE n.state_id IS NULL
    ON CONFLICT (subject_id, purpose_id) DO NOTHING
    RETURNING 1
)
SELECT
    (SELECT count(*) FROM candidates),
    (SELECT count(*) FROM inserted),
    (SELECT count(*) FROM updated) + (SELECT count(*) FROM created)
"""


def _load_postgres(rows: Iterator[_Row], report: ImportReport, now: datetime) -> None:
    with connection.cursor() as cursor:
        pg = cursor.cursor  # the psycopg cursor, for COPY
        # Dropped at the end rather than ON COMMIT: a caller may hold an outer transaction.
        pg.execute("DROP TABLE IF EXISTS pg_temp.import_staging")
        pg.execute(
            "CREATE TEMP TABLE import_staging (line integer, subject_id text, purpose_id bigint, "
            "received_at timestamptz, source text, email text)"
        )
        with pg.copy("COPY import_staging (line, subject_id, purpose_id, received_at, source, email) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row.line, row.subject_id, row.purpose_id, row.received_at, row.source, row.email))
        _check_complete(report)

        pg.execute("ANALYZE import_staging")
        pg.execute("SET LOCAL work_mem = '256MB'")
        # Whoever objects or withdraws for these people now waits for the import.
        pg.execute(
            """
            SELECT 1 FROM optout_objectionstate
            WHERE (subject_id, purpose_id) IN (SELECT subject_id, purpose_id FROM import_staging)
            FOR UPDATE
            """
        )
        pg.execute(_IMPORT_SQL, {"genesis": GENESIS_HASH, "now": now, "ms": int(now.timestamp() * 1000)})
        candidates, inserted, states = pg.fetchone()
        pg.execute("DROP TABLE pg_temp.import_staging")
        if states != inserted:
            report.add_error(
                None,
                _("Someone objected or withdrew while the import ran; nothing was imported. Run it again."),
            )
            raise _Invalid
        report.duplicates_in_file = report.rows - candidates
        report.imported = inserted
        report.already_recorded = candidates - inserted
