"""Writes to the objection ledger. Every change of a person's answer goes through here."""

from __future__ import annotations

import uuid as uuid_lib
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

import psycopg
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.models import Campaign, NoticeVersion
from config.metrics import OBJECTIONS_RECORDED
from optout.ledger import GENESIS_HASH, event_hash, new_event_uuid, new_receipt_code
from optout.models import Action, ObjectionEvent, ObjectionState, OutboxMessage, Purpose, Source
from optout.outbox import outbox_enqueue


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
    if not subject_id or len(subject_id) > 128:
        raise LedgerError(_("A subject id must have 1 to 128 characters."))
    now = timezone.now()
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
    append = _append_postgresql if connection.vendor == "postgresql" else _append_python
    receipt, outbox_id = append(purpose=purpose, event=event, mail=mail)
    if not receipt.created and idempotency_key:
        receipt = _replayed_receipt(receipt, purpose=purpose, idempotency_key=idempotency_key)
    if receipt.created:
        transaction.on_commit(OBJECTIONS_RECORDED.labels(action, source).inc)
    if outbox_id is not None:
        transaction.on_commit(partial(outbox_enqueue, message_id=outbox_id))
    return receipt


def _mail_kind(action: str) -> str:
    return OutboxMessage.Kind.RECEIPT if action == Action.OBJECTED else OutboxMessage.Kind.WITHDRAWAL


def _key_reused() -> IdempotencyKeyReused:
    return IdempotencyKeyReused(_("This idempotency key was already used for a different request."))


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


def _append_postgresql(*, purpose: str, event: dict, mail: tuple[str, str, str] | None) -> tuple[Receipt, int | None]:
    """One round trip: demur_objection_append() (migration optout/0009) locks the state,
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


def _append_python(*, purpose: str, event: dict, mail: tuple[str, str, str] | None) -> tuple[Receipt, int | None]:
    """The same as demur_objection_append(), statement by statement (SQLite)."""
    purpose_obj = purpose_get(purpose)
    action, subject_id = event["action"], event["subject_id"]
    with transaction.atomic():
        if action == Action.OBJECTED:
            # Make sure the state row exists, so that concurrent calls for one subject
            # queue on its row lock below instead of racing to create it.
            ObjectionState.objects.bulk_create(
                [ObjectionState(subject_id=subject_id, purpose=purpose_obj)], ignore_conflicts=True
            )
        state = ObjectionState.objects.select_for_update().filter(subject_id=subject_id, purpose=purpose_obj).first()
        if event["idempotency_key"]:
            earlier = ObjectionEvent.objects.filter(
                purpose=purpose_obj, idempotency_key=event["idempotency_key"]
            ).first()
            if earlier is not None:
                if earlier.subject_id != subject_id or earlier.action != action:
                    raise _key_reused()
                return _receipt_for(state, purpose, created=False, subject_id=subject_id), None
        if state is None or (action == Action.OBJECTED) == state.objected:
            return _receipt_for(state, purpose, created=False, subject_id=subject_id), None

        # A link names the campaign and notice version it came from; one deleted since
        # then is left out rather than refusing the objection.
        if event["campaign_id"] is not None and not Campaign.objects.filter(id=event["campaign_id"]).exists():
            event["campaign_id"] = None
        if (
            event["notice_version_id"] is not None
            and not NoticeVersion.objects.filter(id=event["notice_version_id"]).exists()
        ):
            event["notice_version_id"] = None
        prev_hash = state.head_hash or GENESIS_HASH
        row = ObjectionEvent(purpose=purpose_obj, prev_hash=prev_hash, **event)
        row.hash = event_hash(prev_hash=prev_hash, purpose=purpose_obj.slug, **event)
        try:
            with transaction.atomic():
                row.save(force_insert=True)
        except IntegrityError:
            raise _key_reused() from None

        state_follow(state, row)
        outbox_id = None
        if mail:
            kind, to, language = mail
            outbox_id = OutboxMessage.objects.create(kind=kind, to=to, language=language, event=row).id
        return _receipt_for(state, purpose, created=True), outbox_id


def state_follow(state: ObjectionState, event: ObjectionEvent) -> None:
    """Move a subject's state to the event just appended to their chain (the ORM paths:
    SQLite; on PostgreSQL demur_objection_append and the import's SQL do it)."""
    state.objected = event.action == Action.OBJECTED
    state.source = event.source
    state.received_at = event.received_at
    state.effective_at = event.effective_at
    state.receipt = event.receipt
    state.last_event = event
    state.head_hash = event.hash
    state.save(
        update_fields=[
            "objected",
            "source",
            "received_at",
            "effective_at",
            "receipt",
            "last_event",
            "head_hash",
            "updated_at",
        ]
    )


def _replayed_receipt(receipt: Receipt, *, purpose: str, idempotency_key: str) -> Receipt:
    """A retry with a key already used answers what the first request was answered (its
    event's receipt), not the subject's state now, which a later withdrawal may have
    changed. Without such an event (nothing was written the first time) the answer is
    the state's. Only retries pay this query."""
    earlier = (
        ObjectionEvent.objects.filter(purpose__slug=purpose, idempotency_key=idempotency_key)
        .only("id", "receipt_code", "uuid", "action", "received_at", "effective_at")
        .first()
    )
    if earlier is None:
        return receipt
    return replace(
        receipt,
        receipt=earlier.receipt,
        objected=earlier.action == Action.OBJECTED,
        received_at=earlier.received_at,
        effective_at=earlier.effective_at,
    )


def _receipt_for(state: ObjectionState | None, purpose: str, *, created: bool, subject_id: str = "") -> Receipt:
    if state is None:
        return Receipt(
            receipt="",
            subject_id=subject_id,
            purpose=purpose,
            objected=False,
            received_at=None,
            effective_at=None,
            created=False,
            event_uuid=None,
        )
    return Receipt(
        receipt=state.receipt,
        subject_id=state.subject_id,
        purpose=purpose,
        objected=state.objected,
        received_at=state.received_at,
        effective_at=state.effective_at,
        created=created,
        event_uuid=state.last_event.uuid if created and state.last_event else None,
    )


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
