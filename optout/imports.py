"""Import of past objections from CSV (`manage.py import_objections`).

The whole file is validated before anything is written; one bad line and nothing is
imported, with every bad line listed. Each row becomes one `objected` event keyed by
"import:<digest of subject, purpose, received_at>", so importing a file again adds
nothing. A row is skipped when the ledger already says the subject objects, or when it
holds a later answer (say, a withdrawal made after the imported objection).

On PostgreSQL rows go through COPY into a staging table and set-based SQL; elsewhere
(the SQLite quick start) through the ORM.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid as uuid_lib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from optout.ledger import GENESIS_HASH, event_hash, new_receipt
from optout.models import Action, ObjectionEvent, ObjectionState, Purpose, Source

REQUIRED_COLUMNS = ("subject_id", "purpose", "received_at", "source")
OPTIONAL_COLUMNS = ("email",)
MAX_ERRORS_KEPT = 10_000


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    already_recorded: int = 0
    duplicates_in_file: int = 0
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


@dataclass(frozen=True)
class _Row:
    line: int
    subject_id: str
    purpose_id: int
    purpose_slug: str
    received_at: datetime
    source: str
    email: str

    @property
    def key(self) -> str:
        digest = hashlib.sha256(
            f"{self.subject_id}\x1f{self.purpose_slug}\x1f{self.received_at.isoformat()}".encode()
        ).hexdigest()
        return f"import:{digest[:40]}"


def objections_import(
    path: str, *, progress: Callable[[int], None] | None = None
) -> ImportReport:
    """Validate `path`, then import it in one transaction if every line is good."""
    report = ImportReport()
    purposes = dict(Purpose.objects.values_list("slug", "id"))
    now = timezone.now()
    for _row in _parse(path, purposes, report, now, progress):
        report.rows += 1
    if not report.ok:
        return report
    if report.rows == 0:
        report.add_error(None, _("The file has no rows to import."))
        return report

    rows = _parse(path, purposes, ImportReport(), now, None)
    slugs = {pk: slug for slug, pk in purposes.items()}
    if connection.vendor == "postgresql":
        _load_postgres(rows, slugs, report, now)
    else:
        _load_orm(rows, slugs, report, now)
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
        if any(_has_bad_bytes(value) for value in values):
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
        if source not in Source.values:
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


def _has_bad_bytes(value: str) -> bool:
    try:
        value.encode("utf-8")
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


def _new_event_fields(row: _Row, head_hash: str, now: datetime) -> dict:
    event_uuid = uuid_lib.uuid4()
    receipt = new_receipt()
    key = row.key
    prev = head_hash or GENESIS_HASH
    digest = event_hash(
        prev_hash=prev,
        uuid=event_uuid,
        subject_id=row.subject_id,
        purpose=row.purpose_slug,
        action=Action.OBJECTED,
        source=row.source,
        received_at=row.received_at,
        effective_at=row.received_at,
        recorded_at=now,
        receipt=receipt,
        email=row.email,
        idempotency_key=key,
    )
    return {
        "uuid": event_uuid,
        "subject_id": row.subject_id,
        "email": row.email,
        "purpose_id": row.purpose_id,
        "action": Action.OBJECTED,
        "source": row.source,
        "received_at": row.received_at,
        "effective_at": row.received_at,
        "recorded_at": now,
        "receipt": receipt,
        "idempotency_key": key,
        "prev_hash": prev,
        "hash": digest,
    }


# --- loading: SQLite and other backends -----------------------------------------------------


def _earliest_per_subject(rows: Iterator[_Row], report: ImportReport) -> dict[tuple[str, int], _Row]:
    chosen: dict[tuple[str, int], _Row] = {}
    for row in rows:
        key = (row.subject_id, row.purpose_id)
        other = chosen.get(key)
        if other is not None:
            report.duplicates_in_file += 1
            if other.received_at <= row.received_at:
                continue
        chosen[key] = row
    return chosen


def _load_orm(rows: Iterator[_Row], slugs: dict[int, str], report: ImportReport, now: datetime) -> None:
    candidates = _earliest_per_subject(rows, report)
    with transaction.atomic():
        for row in candidates.values():
            if ObjectionEvent.objects.filter(purpose_id=row.purpose_id, idempotency_key=row.key).exists():
                report.already_recorded += 1
                continue
            state, _created = ObjectionState.objects.select_for_update().get_or_create(
                subject_id=row.subject_id, purpose_id=row.purpose_id
            )
            if state.objected or (state.received_at and state.received_at >= row.received_at):
                report.already_recorded += 1
                continue
            event = ObjectionEvent.objects.create(**_new_event_fields(row, state.head_hash, now))
            _apply_to_state(state, event)
            report.imported += 1


def _apply_to_state(state: ObjectionState, event: ObjectionEvent) -> None:
    state.objected = True
    state.source = event.source
    state.received_at = event.received_at
    state.effective_at = event.effective_at
    state.receipt = event.receipt
    state.last_event = event
    state.head_hash = event.hash
    state.save(
        update_fields=["objected", "source", "received_at", "effective_at", "receipt", "last_event", "head_hash", "updated_at"]
    )


# --- loading: PostgreSQL ----------------------------------------------------------------------

_EVENT_COLUMNS = (
    "uuid", "subject_id", "email", "purpose_id", "action", "source", "reason", "staff_user",
    "received_at", "effective_at", "recorded_at", "receipt", "idempotency_key", "prev_hash", "hash",
)


def _load_postgres(rows: Iterator[_Row], slugs: dict[int, str], report: ImportReport, now: datetime) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        pg = cursor.cursor  # the psycopg cursor, for COPY and a named cursor
        # Dropped at the end rather than ON COMMIT: a caller may hold an outer transaction.
        pg.execute("DROP TABLE IF EXISTS pg_temp.import_staging, pg_temp.import_candidates")
        pg.execute(
            """
            CREATE TEMP TABLE import_staging (
                line integer, subject_id text, purpose_id bigint, received_at timestamptz,
                source text, email text, key text
            )
            """
        )
        with pg.copy(
            "COPY import_staging (line, subject_id, purpose_id, received_at, source, email, key) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row((row.line, row.subject_id, row.purpose_id, row.received_at, row.source, row.email, row.key))

        # Earliest row per subject and purpose; count the rest as duplicates.
        pg.execute(
            """
            CREATE TEMP TABLE import_candidates AS
            SELECT DISTINCT ON (subject_id, purpose_id) *
            FROM import_staging ORDER BY subject_id, purpose_id, received_at, line
            """
        )
        pg.execute("SELECT (SELECT count(*) FROM import_staging) - (SELECT count(*) FROM import_candidates)")
        report.duplicates_in_file = pg.fetchone()[0]

        # Lock every state row the import touches (creating the missing ones), so a
        # concurrent objection_record for the same person waits for this transaction.
        pg.execute(
            """
            INSERT INTO optout_objectionstate
                (subject_id, purpose_id, objected, source, receipt, head_hash, updated_at)
            SELECT subject_id, purpose_id, false, '', '', '', now() FROM import_candidates
            ON CONFLICT (subject_id, purpose_id) DO NOTHING
            """
        )
        pg.execute(
            """
            SELECT 1 FROM optout_objectionstate s JOIN import_candidates c
              ON s.subject_id = c.subject_id AND s.purpose_id = c.purpose_id
            FOR UPDATE OF s
            """
        )

        pg.execute(
            """
            DECLARE import_eligible NO SCROLL CURSOR FOR
            SELECT c.line, c.subject_id, c.purpose_id, c.received_at, c.source, c.email, s.head_hash
            FROM import_candidates c
            JOIN optout_objectionstate s ON s.subject_id = c.subject_id AND s.purpose_id = c.purpose_id
            WHERE NOT s.objected
              AND (s.received_at IS NULL OR s.received_at < c.received_at)
              AND NOT EXISTS (
                  SELECT 1 FROM optout_objectionevent e
                  WHERE e.purpose_id = c.purpose_id AND e.idempotency_key = c.key
              )
            """
        )
        copy_sql = f"COPY optout_objectionevent ({', '.join(_EVENT_COLUMNS)}) FROM STDIN"
        while True:
            pg.execute("FETCH 20000 FROM import_eligible")
            batch = pg.fetchall()
            if not batch:
                break
            with pg.copy(copy_sql) as copy:
                for line, subject_id, purpose_id, received_at, source, email, head_hash in batch:
                    row = _Row(line, subject_id, purpose_id, slugs[purpose_id], received_at, source, email)
                    fields = _new_event_fields(row, head_hash, now)
                    fields["reason"] = ""
                    fields["staff_user"] = ""
                    copy.write_row(tuple(fields[name] for name in _EVENT_COLUMNS))
            report.imported += len(batch)
        pg.execute("CLOSE import_eligible")

        # Point the states at the events just written: this run's keys and timestamp.
        pg.execute(
            """
            UPDATE optout_objectionstate s SET
                objected = true, source = e.source, received_at = e.received_at,
                effective_at = e.effective_at, receipt = e.receipt, last_event_id = e.id,
                head_hash = e.hash, updated_at = now()
            FROM import_candidates c JOIN optout_objectionevent e
              ON e.purpose_id = c.purpose_id AND e.idempotency_key = c.key
            WHERE e.recorded_at = %s
              AND s.subject_id = e.subject_id AND s.purpose_id = e.purpose_id
            """,
            [now],
        )
        pg.execute("DROP TABLE pg_temp.import_staging, pg_temp.import_candidates")
        report.already_recorded = report.rows - report.duplicates_in_file - report.imported
