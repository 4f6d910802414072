"""The mail outbox: confirmation and verification mails are written as rows in the same
transaction as what caused them, then sent by a Celery task enqueued on commit. If the
broker is down the row stays pending and the periodic sweep (optout.tasks) sends it
later; recording an objection never waits on the broker or the mail provider.

A row is claimed with a conditional UPDATE (pending -> sending, exactly one row
changed), so two workers, or a task and the sweep, never send the same mail twice.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone, translation

from optout.models import OutboxMessage

logger = logging.getLogger(__name__)

# A mail is tried this many times before it is left as failed for staff to look at.
MAX_ATTEMPTS = 5
# A row stuck in "sending" this long belongs to a worker that died mid-send: the sweep
# hands it out again (at most this one mail can go twice, the one in flight at the crash).
STALE_CLAIM = timedelta(minutes=15)


def outbox_add(
    *,
    kind: str,
    to: str,
    language: str,
    template: str,
    context: dict,
    event_id: int | None = None,
) -> OutboxMessage:
    """Render `templates/<template>_{subject,text,html}` in `language` and queue the mail.

    Call inside the transaction that writes what the mail confirms; the send is enqueued
    only once that transaction commits."""
    with translation.override(language):
        context = {**context, "language": language}
        subject = " ".join(render_to_string(f"{template}_subject.txt", context).split())
        body_text = render_to_string(f"{template}.txt", context)
        body_html = render_to_string(f"{template}.html", context)
    message = OutboxMessage.objects.create(
        kind=kind,
        to=to,
        language=language,
        subject=subject[:300],
        body_text=body_text,
        body_html=body_html,
        event_id=event_id,
    )
    message_id = message.id
    transaction.on_commit(lambda: outbox_enqueue(message_id=message_id))
    return message


def outbox_enqueue(*, message_id: int) -> None:
    """Hand the send to Celery. With a broker, publishing happens on a short-lived
    thread: redis-py retries an unreachable broker for seconds, and the person's answer
    must not wait for that. A publish that fails is not an error: the row stays pending
    and the sweep sends it once the broker is back."""
    from optout.tasks import outbox_send_task

    if outbox_send_task.app.conf.task_always_eager:
        _publish(message_id)
    else:
        # In a copy of this context, so that the task carries the request's id (config.logs).
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(_publish, message_id), name="outbox-enqueue", daemon=True).start()


def _publish(message_id: int) -> None:
    from optout.tasks import outbox_send_task

    try:
        outbox_send_task.apply_async((message_id,), retry=False)
    except Exception:  # kombu raises several types for an unreachable broker
        logger.warning("outbox: could not enqueue mail %s; the sweep will send it", message_id, exc_info=True)


def outbox_send(*, message_id: int) -> bool:
    """Send one pending mail. Returns True if this call sent it; False if it was not
    pending (already sent, or in another worker's hands)."""
    claimed = OutboxMessage.objects.filter(id=message_id, status=OutboxMessage.Status.PENDING).update(
        status=OutboxMessage.Status.SENDING, claimed_at=timezone.now(), attempts=F("attempts") + 1
    )
    if claimed != 1:
        return False
    message = OutboxMessage.objects.get(id=message_id)
    mail = EmailMultiAlternatives(
        subject=message.subject,
        body=message.body_text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[message.to],
        headers={"Auto-Submitted": "auto-generated"},
    )
    if message.body_html:
        mail.attach_alternative(message.body_html, "text/html")
    try:
        mail.send()
    except Exception as exc:  # the mail backend's errors are not ours to enumerate
        status = OutboxMessage.Status.FAILED if message.attempts >= MAX_ATTEMPTS else OutboxMessage.Status.PENDING
        OutboxMessage.objects.filter(id=message_id, status=OutboxMessage.Status.SENDING).update(
            status=status, last_error=str(exc)[:2000], claimed_at=None
        )
        logger.warning("outbox: mail %s failed (attempt %s)", message_id, message.attempts, exc_info=True)
        return False
    OutboxMessage.objects.filter(id=message_id, status=OutboxMessage.Status.SENDING).update(
        status=OutboxMessage.Status.SENT, sent_at=timezone.now(), last_error=""
    )
    return True


def outbox_sweep(*, limit: int = 500) -> list[int]:
    """Re-enqueue mail left pending (the broker was down when it was written) and mail
    whose worker died mid-send. Returns the ids handed out."""
    stale_before = timezone.now() - STALE_CLAIM
    OutboxMessage.objects.filter(status=OutboxMessage.Status.SENDING, claimed_at__lt=stale_before).update(
        status=OutboxMessage.Status.PENDING, claimed_at=None
    )
    ids = list(
        OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING)
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )
    for message_id in ids:
        outbox_enqueue(message_id=message_id)
    return ids
