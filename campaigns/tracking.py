"""Mail providers' tracking webhooks (django-anymail): delivered, opened, clicked,
bounced and complained update the delivery; hard bounces, complaints and provider-side
unsubscribes go on the suppression list. anymail authenticates each webhook as the
provider prescribes (signature or basic auth) before the `tracking` signal fires, and a
replayed event (same provider and event id) changes nothing."""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from campaigns.models import Delivery, Suppression, TrackingEvent
from core.metrics import WEBHOOK_EVENTS

DELIVERY_FIELDS = {
    "delivered": "delivered_at",
    "opened": "opened_at",
    "clicked": "clicked_at",
    "bounced": "bounced_at",
    "complained": "complained_at",
}
SUPPRESSIONS = {
    "bounced": Suppression.Reason.BOUNCED,  # anymail's "bounced" is a permanent failure
    "complained": Suppression.Reason.COMPLAINED,
    "unsubscribed": Suppression.Reason.UNSUBSCRIBED,
}


def tracking_event_record(
    *,
    esp: str,
    event_id: str,
    event_type: str,
    delivery_id: str | int | None,
    recipient: str,
    occurred_at: dt.datetime | None = None,
) -> bool:
    """Apply one tracking event. False when it was seen before (a replay)."""
    occurred_at = occurred_at or timezone.now()
    delivery = None
    if (
        delivery_id is not None
        and str(delivery_id).isascii()
        and str(delivery_id).isdigit()
        and int(delivery_id) < 2**63
    ):
        delivery = Delivery.objects.filter(pk=int(delivery_id), channel=Delivery.Channel.MAIL).first()
    with transaction.atomic():
        if event_id:
            _event, created = TrackingEvent.objects.get_or_create(
                esp=esp[:32],
                event_id=event_id[:200],
                defaults={"event_type": event_type[:32], "delivery": delivery, "occurred_at": occurred_at},
            )
            if not created:
                return False
        field = DELIVERY_FIELDS.get(event_type)
        if delivery is not None and field:
            Delivery.objects.filter(pk=delivery.pk, **{f"{field}__isnull": True}).update(**{field: occurred_at})
        reason = SUPPRESSIONS.get(event_type)
        if reason and recipient:
            # Not get_or_create: nothing makes (email, reason) unique, and two webhooks for
            # one address at once may both insert; a second row is harmless, a
            # MultipleObjectsReturned on every later webhook for it would not be.
            if not Suppression.objects.filter(email=recipient, reason=reason).exists():
                Suppression.objects.create(
                    email=recipient, reason=reason, subject_id=delivery.subject_id if delivery else ""
                )
    return True


def on_tracking(sender, event, esp_name: str, **kwargs) -> None:
    """anymail's `tracking` signal receiver (connected in CampaignsConfig.ready)."""
    WEBHOOK_EVENTS.labels(esp_name, event.event_type or "unknown").inc()
    metadata = event.metadata or {}
    tracking_event_record(
        esp=esp_name,
        event_id=event.event_id or "",
        event_type=event.event_type or "",
        delivery_id=metadata.get("delivery_id"),
        recipient=event.recipient or "",
        occurred_at=event.timestamp,
    )
