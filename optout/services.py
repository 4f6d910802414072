"""Writes to the objection ledger. Every change of a person's answer goes through here."""

from __future__ import annotations

import uuid as uuid_lib
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from config.metrics import OBJECTIONS_RECORDED
from optout.ledger import GENESIS_HASH, event_hash, new_receipt_code
from optout.models import Action, ObjectionEvent, ObjectionState, Purpose, Source


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
) -> Receipt:
    """Record that `subject_id` objects to `purpose`.

    Idempotent: objecting again while objected writes nothing and returns the original
    receipt. The answer is durable once this returns (the caller's transaction aside).
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
) -> Receipt:
    """Record that `subject_id` withdraws an objection. A no-op when not objected."""
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
) -> Receipt:
    if source not in Source.values:
        raise LedgerError(_("Unknown source: {source}.").format(source=source))
    if not subject_id or len(subject_id) > 128:
        raise LedgerError(_("A subject id must have 1 to 128 characters."))
    purpose_obj = purpose_get(purpose)
    now = timezone.now()
    received_at = received_at or now
    effective_at = effective_at or received_at

    with transaction.atomic():
        if action == Action.OBJECTED:
            # Make sure the state row exists, so that concurrent calls for one subject
            # queue on its row lock below instead of racing to create it.
            ObjectionState.objects.bulk_create(
                [ObjectionState(subject_id=subject_id, purpose=purpose_obj)], ignore_conflicts=True
            )
        state = (
            ObjectionState.objects.select_for_update()
            .filter(subject_id=subject_id, purpose=purpose_obj)
            .first()
        )
        if idempotency_key:
            earlier = ObjectionEvent.objects.filter(purpose=purpose_obj, idempotency_key=idempotency_key).first()
            if earlier is not None:
                if earlier.subject_id != subject_id or earlier.action != action:
                    raise IdempotencyKeyReused(
                        _("This idempotency key was already used for a different request.")
                    )
                return _receipt_for(state, purpose, created=False)
        if state is None or (action == Action.OBJECTED) == state.objected:
            return _receipt_for(state, purpose, created=False, subject_id=subject_id)

        event = ObjectionEvent(
            subject_id=subject_id,
            email=email,
            purpose=purpose_obj,
            action=action,
            source=source,
            reason=reason,
            campaign_id=campaign_id,
            notice_version_id=notice_version_id,
            staff_user=staff_user,
            received_at=received_at,
            effective_at=effective_at,
            recorded_at=now,
            receipt_code=new_receipt_code(),
            idempotency_key=idempotency_key or None,
            prev_hash=state.head_hash or GENESIS_HASH,
        )
        event.hash = event_hash(
            prev_hash=event.prev_hash,
            uuid=event.uuid,
            subject_id=subject_id,
            purpose=purpose_obj.slug,
            action=action,
            source=source,
            received_at=received_at,
            effective_at=effective_at,
            recorded_at=now,
            receipt_code=event.receipt_code,
            email=email,
            reason=reason,
            campaign_id=campaign_id,
            notice_version_id=notice_version_id,
            staff_user=staff_user,
            idempotency_key=event.idempotency_key,
        )
        try:
            with transaction.atomic():
                event.save(force_insert=True)
        except IntegrityError:
            raise IdempotencyKeyReused(
                _("This idempotency key was already used for a different request.")
            ) from None

        transaction.on_commit(OBJECTIONS_RECORDED.labels(action, source).inc)
        state.objected = action == Action.OBJECTED
        state.source = source
        state.received_at = received_at
        state.effective_at = effective_at
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
        return _receipt_for(state, purpose, created=True)


def _receipt_for(
    state: ObjectionState | None, purpose: str, *, created: bool, subject_id: str = ""
) -> Receipt:
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
