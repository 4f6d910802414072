"""Writes to the objection ledger. Every change of a person's answer goes through here:
one at a time through demur_objection_append (the pages, the API, staff entry), or a
whole import at once through one set-based statement (objections_append_staged); both
hash with demur_event_hash (optout/sql/)."""

from __future__ import annotations

import logging
import uuid as uuid_lib
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

import psycopg
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.metrics import OBJECTIONS_RECORDED
from optout.ledger import GENESIS_HASH, SUBJECT_ID_MAX, new_event_uuid, new_receipt_code, subject_id_valid
from optout.models import Action, LedgerCheck, ObjectionEvent, OutboxMessage, Purpose, Source
from optout.outbox import outbox_enqueue
from optout.selectors import feed_position, ledger_verify

logger = logging.getLogger(__name__)


class LedgerError(Exception):
    """A request the ledger refuses; the message is safe to show."""


class UnknownPurpose(LedgerError):
    pass


class IdempotencyKeyReused(LedgerError):
    pass


@dataclass(frozen=True)
class Receipt:
    """What the person (or API client) is told after a request."""

    receipt: str
    subject_id: str
    purpose: str
    objected: bool
    received_at: datetime | None
    effective_at: datetime | None
    created: bool  # False when the request changed nothing (already in that state)
    event_uuid: uuid_lib.UUID | None


def purpose_get(slug: str) -> Purpose:
    try:
        return Purpose.objects.get(slug=slug)
    except Purpose.DoesNotExist:
        raise UnknownPurpose(_("Unknown purpose: {purpose}.").format(purpose=slug)) from None


def objection_record(
    *,
    subject_id: str,
    source: str,
    purpose: str = "ai-training",
    received_at: datetime | None = None,
    effective_at: datetime | None = None,
    email: str = "",
    reason: str = "",
    campaign_id: int | None = None,
    notice_version_id: int | None = None,
    staff_user: str = "",
    idempotency_key: str | None = None,
    confirm_to: str = "",
    confirm_language: str = "",
) -> Receipt:
    """Record that `subject_id` objects to `purpose`.

    Idempotent: objecting again while objected writes nothing and returns the original
    receipt. The answer is durable once this returns (the caller's transaction aside).
    With `confirm_to`, a new event also gets its confirmation mail (in
    `confirm_language`) through the outbox, written in the same transaction.
    """
    return _append(
        action=Action.OBJECTED,
        subject_id=subject_id,
        source=source,
        purpose=purpose,
        received_at=received_at,
        effective_at=effective_at,
        email=email,
        reason=reason,
        campaign_id=campaign_id,
        notice_version_id=notice_version_id,
        staff_user=staff_user,
        idempotency_key=idempotency_key,
        confirm_to=confirm_to,
        confirm_language=confirm_language,
    )


def objection_withdraw(
    *,
    subject_id: str,
    source: str,
    purpose: str = "ai-training",
    received_at: datetime | None = None,
    email: str = "",
    staff_user: str = "",
    idempotency_key: str | None = None,
    confirm_to: str = "",
    confirm_language: str = "",
) -> Receipt:
    """Record that `subject_id` withdraws an objection. A no-op when not objected.
    `confirm_to` as for objection_record."""
    return _append(
        action=Action.WITHDRAWN,
        subject_id=subject_id,
        source=source,
        purpose=purpose,
        received_at=received_at,
        effective_at=None,
        email=email,
        reason="",
        campaign_id=None,
        notice_version_id=None,
        staff_user=staff_user,
        idempotency_key=idempotency_key,
        confirm_to=confirm_to,
        confirm_language=confirm_language,
    )


def _append(
    *,
    action: str,
    subject_id: str,
    source: str,
    purpose: str,
    received_at: datetime | None,
    effective_at: datetime | None,
    email: str,
    reason: str,
    campaign_id: int | None,
    notice_version_id: int | None,
    staff_user: str,
    idempotency_key: str | None,
    confirm_to: str = "",
    confirm_language: str = "",
) -> Receipt:
    if source not in Source.values:
        raise LedgerError(_("Unknown source: {source}.").format(source=source))
    if not subject_id_valid(subject_id):
        raise LedgerError(_("A subject id is a string of 1 to {max} printable characters.").format(max=SUBJECT_ID_MAX))
    now = timezone.now()
    # The times as the request gave them: a retry with its idempotency key must repeat them.
    asked = {"received_at": received_at, "effective_at": effective_at}
    received_at = received_at or now
    effective_at = effective_at or received_at
    event = {
        "action": action,
        "subject_id": subject_id,
        "source": source,
        "received_at": received_at,
        "effective_at": effective_at,
        "recorded_at": now,
        "uuid": new_event_uuid(),
        "receipt_code": new_receipt_code(),
        "email": email,
        "reason": reason,
        "campaign_id": campaign_id,
        "notice_version_id": notice_version_id,
        "staff_user": staff_user,
        "idempotency_key": idempotency_key or None,
    }
    mail = (_mail_kind(action), confirm_to, confirm_language) if confirm_to else None
    try:
        receipt, outbox_id = _append_sql(purpose=purpose, event=event, mail=mail)
    except IdempotencyKeyReused:
        raise _key_reused(_key_request_differences(purpose=purpose, request={**event, **asked})) from None
    if not receipt.created and idempotency_key:
        receipt = _replayed_receipt(receipt, purpose=purpose, request={**event, **asked})
    if receipt.created:
        transaction.on_commit(OBJECTIONS_RECORDED.labels(action, source).inc)
    if outbox_id is not None:
        transaction.on_commit(partial(outbox_enqueue, message_id=outbox_id))
    return receipt


def _mail_kind(action: str) -> str:
    return OutboxMessage.Kind.RECEIPT if action == Action.OBJECTED else OutboxMessage.Kind.WITHDRAWAL


def _key_reused(differences: list[str] | None = None) -> IdempotencyKeyReused:
    if not differences:
        return IdempotencyKeyReused(_("This idempotency key was already used for a different request."))
    return IdempotencyKeyReused(
        _(
            "This idempotency key was already used for a request with other values ({fields}). "
            "Repeat that request unchanged to get its receipt, or use a new key for a new request."
        ).format(fields=", ".join(differences))
    )


# Bound on the server and prepared once per connection (connections persist, CONN_MAX_AGE):
# Django's own cursors bind on the client, so PostgreSQL parsed and planned this call
# with its 18 values spelled out for every objection (about 0.1 ms of its CPU; measured
# with /proc per backend, 2,000 calls each way). The casts fix the parameter types.
_APPEND_SQL = (
    "SELECT status, objected, receipt, received_at, effective_at, event_uuid, outbox_id"
    " FROM demur_objection_append(%s::text, %s::text, %s::text, %s::text, %s::timestamptz, %s::timestamptz,"
    " %s::timestamptz, %s::uuid, %s::integer, %s::text, %s::text, %s::bigint, %s::bigint, %s::text, %s::text,"
    " %s::text, %s::text, %s::text)"
)


class _PreparingCursor(psycopg.Cursor):
    """Binds on the server and prepares what it runs, once per connection."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def _prepared_cursor():
    """A _PreparingCursor on Django's connection, in Django's cursor wrapper (its error
    translation, execute wrappers and query log stay as for any other statement)."""
    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw = _PreparingCursor(connection.connection)
    return connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)


def _append_sql(*, purpose: str, event: dict, mail: tuple[str, str, str] | None) -> tuple[Receipt, int | None]:
    """One round trip: demur_objection_append() (optout/sql/demur_objection_append.sql) locks the state,
    chains, inserts the event, updates the state and writes the mail's outbox row. On
    its own it is one transaction; inside the caller's it runs in a savepoint, so that a
    refusal leaves the caller's transaction usable."""
    kind, to, language = mail or ("", "", "")
    params = [
        event["action"], event["subject_id"], purpose, event["source"], event["received_at"],
        event["effective_at"], event["recorded_at"], event["uuid"], event["receipt_code"], event["email"],
        event["reason"], event["campaign_id"], event["notice_version_id"], event["staff_user"],
        event["idempotency_key"], kind, to, language,
    ]  # fmt: skip
    try:
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), _prepared_cursor() as cursor:
            cursor.execute(_APPEND_SQL, params)
            status, objected, receipt, received_at, effective_at, event_uuid, outbox_id = cursor.fetchone()
    except IntegrityError as exc:
        # Two requests with one key for different subjects at the same moment.
        if getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") == "optout_event_idempotency_key":
            raise _key_reused() from None
        raise
    if status == "unknown_purpose":
        raise UnknownPurpose(_("Unknown purpose: {purpose}.").format(purpose=purpose))
    if status == "key_reused":
        raise _key_reused()
    receipt = Receipt(
        receipt=receipt,
        subject_id=event["subject_id"],
        purpose=purpose,
        objected=objected,
        received_at=received_at,
        effective_at=effective_at,
        created=status == "created",
        event_uuid=event_uuid,
    )
    return receipt, outbox_id


def _replayed_receipt(receipt: Receipt, *, purpose: str, request: dict) -> Receipt:
    """A retry with a key already used answers what the first request was answered (its
    event's receipt), not the subject's state now, which a later withdrawal may have
    changed; a request that differs from the first in anything is refused. Without such
    an event (nothing was written the first time) the answer is the state's. Only
    retries pay this query."""
    earlier = _key_first_event(purpose=purpose, idempotency_key=request["idempotency_key"])
    if earlier is None:
        return receipt
    differences = _request_differences(earlier, request)
    if differences:
        raise _key_reused(differences)
    return replace(
        receipt,
        receipt=earlier.receipt,
        objected=earlier.action == Action.OBJECTED,
        received_at=earlier.received_at,
        effective_at=earlier.effective_at,
    )


def _key_first_event(*, purpose: str, idempotency_key: str) -> ObjectionEvent | None:
    return ObjectionEvent.objects.filter(purpose__slug=purpose, idempotency_key=idempotency_key).first()


# What a retry must repeat of the request that first used its idempotency key, compared
# with the event that request wrote (every field it recorded).
_REPEATED_FIELDS = (
    "subject_id", "action", "source", "email", "reason", "campaign_id", "notice_version_id", "staff_user",
)  # fmt: skip


def _request_differences(earlier: ObjectionEvent, request: dict) -> list[str]:
    """The names of the fields in which `request` (_append's event, with the times as
    given) differs from the request that wrote `earlier`. A time left out stands for what
    it stood for the first time: received_at for the moment of recording, effective_at
    for received_at."""
    differences = [name for name in _REPEATED_FIELDS if getattr(earlier, name) != request[name]]
    received_at = request["received_at"] or earlier.recorded_at
    if received_at != earlier.received_at:
        differences.append("received_at")
    if (request["effective_at"] or received_at) != earlier.effective_at:
        differences.append("effective_at")
    return differences


def _key_request_differences(*, purpose: str, request: dict) -> list[str]:
    earlier = _key_first_event(purpose=purpose, idempotency_key=request["idempotency_key"])
    return _request_differences(earlier, request) if earlier is not None else []


# --- the bulk import's append ---------------------------------------------------------------

# The table optout.imports fills and STAGED_APPEND_SQL reads, in file order (so `ctid`
# breaks ties between two lines for one person with the same date: the first line wins).
# Text columns: the import's fast path copies the file's own fields in unchanged.
STAGING_DDL = (
    "CREATE TEMP TABLE import_staging (subject_id text, purpose text, received_at text, source text, "
    "email text NOT NULL DEFAULT '')"
)

# One statement: the earliest row per subject and purpose, minus what the ledger already
# has, becomes one chained event each, and the states follow. Existing state rows were
# locked beforehand; a state row that appears meanwhile for a new subject (someone
# objecting while the import runs) violates the unique constraint, and the import is
# rolled back rather than fork that person's chain.
#
# The hash is demur_event_hash (optout/sql/demur_event_hash.sql), which PostgreSQL inlines
# here as one expression; its arguments are plain columns, constants and %(now)s, as
# inlining needs for an argument the function reads twice. The uuid7 is assembled from
# two integers: Unix milliseconds with a 12-bit counter (so one import's ids rise
# strictly), then the variant and 62 random bits. subject_id sorts under "C", which orders
# exactly as the database's C.UTF-8 and compares far faster. Each event continues its
# chain's numbering (seq) and takes this transaction's feed position, or its
# predecessor's if that is higher (demur_ledger_epoch.sql).
STAGED_APPEND_SQL = """
WITH position AS MATERIALIZED (
    SELECT base + pg_current_xact_id()::text::bigint AS feed_key FROM demur_ledger_epoch()
), candidates AS (
    SELECT DISTINCT ON (s.subject_id COLLATE "C", p.id)
           s.subject_id, p.id AS purpose_id, p.slug AS purpose,
           s.received_at::timestamptz AS received_at, s.source, s.email
    FROM import_staging s JOIN optout_purpose p ON p.slug = s.purpose
    ORDER BY s.subject_id COLLATE "C", p.id, s.received_at::timestamptz, s.ctid
), eligible AS (
    SELECT c.*, s.id AS state_id, coalesce(nullif(s.head_hash, ''), %(genesis)s) AS prev_hash,
           coalesce(s.seq, 0) + 1 AS seq, greatest((SELECT feed_key FROM position), s.feed_key) AS feed_key,
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
           e.seq, e.feed_key,
           e.receipt_code, e.uuid, demur_receipt(e.id, e.receipt_code) AS receipt,
           demur_event_hash(
               e.prev_hash, e.uuid, e.subject_id, e.purpose, 'objected', e.source, e.received_at, e.received_at,
               %(now)s, e.receipt_code, e.email, '', NULL, NULL, '', NULL
           ) AS hash
    FROM (
        SELECT e.*,
               encode(int8send((%(ms)s + e.rn / 4096) << 16 | 28672 | e.rn %% 4096)
                      || int8send(-9223372036854775808 | e.random62), 'hex')::uuid AS uuid
        FROM eligible e
    ) e
), inserted AS (
    INSERT INTO optout_objectionevent (
        id, uuid, xid, subject_id, email, purpose_id, action, source, reason, staff_user,
        received_at, effective_at, recorded_at, receipt_code, prev_hash, hash, seq, feed_key
    )
    SELECT id, uuid, (SELECT pg_current_xact_id()::text::bigint), subject_id, email, purpose_id, 'objected',
           source, '', '', received_at, received_at, %(now)s, receipt_code, prev_hash, hash, seq, feed_key
    FROM events
    RETURNING 1
), updated AS (
    UPDATE optout_objectionstate s SET
        objected = true, source = e.source, received_at = e.received_at,
        effective_at = e.received_at, receipt = e.receipt, last_event_id = e.id,
        head_hash = e.hash, seq = e.seq, feed_key = e.feed_key, updated_at = %(now)s
    FROM events e
    WHERE e.state_id IS NOT NULL AND s.id = e.state_id
    RETURNING 1
), created AS (
    INSERT INTO optout_objectionstate (
        subject_id, purpose_id, objected, source, received_at, effective_at, receipt,
        last_event_id, head_hash, seq, feed_key, updated_at
    )
    SELECT subject_id, purpose_id, true, source, received_at, received_at, receipt, id, hash, seq, feed_key, %(now)s
    FROM events
    WHERE state_id IS NULL
    RETURNING 1
)
SELECT
    (SELECT count(*) FROM candidates),
    (SELECT count(*) FROM inserted),
    (SELECT count(*) FROM updated) + (SELECT count(*) FROM created)
"""

# Whoever objects or withdraws for the staged people waits for the import from here on.
_STAGED_LOCK_SQL = """
SELECT 1 FROM optout_objectionstate
WHERE (subject_id, purpose_id) IN (
    SELECT s.subject_id, p.id FROM import_staging s JOIN optout_purpose p ON p.slug = s.purpose
)
FOR UPDATE
"""


@dataclass(frozen=True)
class StagedAppend:
    """What objections_append_staged wrote: of the `candidates` left once each subject's
    earliest line was kept, `appended` became events (the rest the ledger had already)."""

    candidates: int
    appended: int


def staged_append_params(*, now: datetime) -> dict:
    """STAGED_APPEND_SQL's parameters, for events recorded at `now`."""
    return {"genesis": GENESIS_HASH, "now": now, "ms": int(now.timestamp() * 1000)}


def objections_append_staged(*, cursor: psycopg.Cursor, now: datetime) -> StagedAppend | None:
    """Append what import_staging (STAGING_DDL) holds as `objected` events recorded at
    `now`: one per subject and purpose, from its earliest line, unless the ledger already
    has that objection, says the subject objects, or holds a later answer; the states
    follow. Runs on `cursor` (psycopg's own, inside the caller's transaction).

    None when someone objected or withdrew for a staged subject while it ran: the caller
    must roll back, as nothing it wrote may stay."""
    cursor.execute("ANALYZE import_staging")
    # Enough for a million rows' sort and the materialised events (about 250 MB) to stay
    # in memory; for this transaction only.
    cursor.execute("SET LOCAL work_mem = '512MB'")
    cursor.execute(_STAGED_LOCK_SQL)
    try:
        cursor.execute(STAGED_APPEND_SQL, staged_append_params(now=now))
    except psycopg.errors.UniqueViolation:
        return None
    candidates, inserted, states = cursor.fetchone()
    if states != inserted:
        return None
    return StagedAppend(candidates=candidates, appended=inserted)


def ledger_checkpoint() -> int:
    """Record that every event of the current epoch below its horizon is in this
    database, and return that position. A backup taken afterwards holds the record: a
    client whose cursor is below it continues after a restore of that backup, one
    beyond it is told to resynchronise (optout.selectors.cursor_continue). Beat runs it
    every DEMUR_LEDGER_CHECKPOINT_SECONDS. The horizon is the one feed_position() read:
    what had committed below it then is still there when this records it."""
    position = feed_position()
    with connection.cursor() as db:
        db.execute(
            "UPDATE optout_ledgerepoch SET complete_below = greatest(complete_below, %s) WHERE epoch = %s"
            " RETURNING complete_below",
            [position.horizon, position.epoch],
        )
        (complete_below,) = db.fetchone()
    return complete_below


def ledger_check_record() -> LedgerCheck:
    """Verify the whole ledger (optout.selectors.ledger_verify) and record the outcome as
    a LedgerCheck; a finding is also logged as an error. Beat runs it every
    DEMUR_LEDGER_VERIFY_SECONDS (optout.ledger_verify)."""
    report = ledger_verify()
    first = report.first_problem
    if first is None:
        described = ""
    elif first.event_id:
        described = f"event #{first.event_id} (receipt {first.receipt}): {first.reason}"
    else:
        described = f"a current-state row (receipt {first.receipt or '-'}): {first.reason}"
    check = LedgerCheck.objects.create(
        events=report.events,
        chains=report.chains,
        problems=len(report.problems),
        first_problem=described,
        first_receipt=(first.receipt or "-") if first else "",
    )
    if check.problems:
        logger.error("ledger check found %d problem(s); the first is %s", check.problems, described)
    return check


def audit_record(*, user, action: str, target: str = "", details: dict | None = None) -> None:
    """Add a line to the staff audit log. Call it inside the action's transaction, so the
    trail has the action exactly when the action happened."""
    from optout.models import AuditEntry

    AuditEntry.objects.create(
        user=user if getattr(user, "pk", None) else None,
        username=getattr(user, "username", "") or "-",
        action=action,
        target=target[:300],
        details=details or {},
    )
