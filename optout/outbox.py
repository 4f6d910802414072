"""The mail outbox: confirmation and verification mails are written as rows in the same
transaction as what caused them, then sent by a Celery task enqueued on commit. If the
broker is down the row stays pending and the periodic sweep (optout.tasks) sends it
later; recording an objection never waits on the broker or the mail provider.

A receipt or withdrawal mail is a row that names its ledger event; the worker renders
it from that (immutable) event when it sends it, and keeps what it sent on the row. A
verification mail has no event and is rendered when it is written.

Publishing to the broker happens on one background thread per process, which hands
out whatever ids have queued up as one task: the page's answer never waits for it, and
a busy process publishes once per batch instead of once per mail.

A row is claimed with a conditional UPDATE (pending -> sending, exactly one row
changed), so two workers, or a task and the sweep, never send the same mail twice.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone, translation

from core.metrics import ERRORS
from core.request_id import request_id_var
from optout.formatting import when
from optout.links import LinkClaims, account_unproven, status_url
from optout.models import ObjectionEvent, OutboxMessage

logger = logging.getLogger(__name__)

# A mail is tried this many times before it is left as failed for staff to look at.
MAX_ATTEMPTS = 5
# A row stuck in "sending" this long belongs to a worker that died mid-send: the sweep
# hands it out again (at most this one mail can go twice, the one in flight at the crash).
STALE_CLAIM = timedelta(minutes=15)
# The task that sends a published batch (optout.tasks, which imports this module), so it
# is sent by its name.
SEND_MANY_TASK = "optout.outbox_send_many"


# Templates of the mails that confirm a ledger event, by kind.
EVENT_TEMPLATES = {
    OutboxMessage.Kind.RECEIPT: "optout/mail/receipt",
    OutboxMessage.Kind.WITHDRAWAL: "optout/mail/withdrawal",
}
# Most mails one published task carries, and how long (s) the relay waits for more
# after the first: a sync web worker answers one request at a time, so without the wait
# every batch would hold one mail, and each publish costs about as much CPU as the rest
# of the objection's database work.
BATCH = 100
LINGER = 0.5


def outbox_add(
    *,
    kind: str,
    to: str,
    language: str,
    template: str,
    context: dict,
) -> OutboxMessage:
    """Render `templates/<template>_{subject,text,html}` in `language` and queue the mail.

    Call inside the transaction that writes what the mail confirms; the send is enqueued
    only once that transaction commits."""
    subject, body_text, body_html = _render(template, language, context)
    message = OutboxMessage.objects.create(
        kind=kind, to=to, language=language, subject=subject, body_text=body_text, body_html=body_html
    )
    message_id = message.id
    transaction.on_commit(lambda: outbox_enqueue(message_id=message_id))
    return message


def _render(template: str, language: str, context: dict) -> tuple[str, str, str]:
    with translation.override(language):
        context = {**context, "language": language}
        subject = " ".join(render_to_string(f"{template}_subject.txt", context).split())
        body_text = render_to_string(f"{template}.txt", context)
        body_html = render_to_string(f"{template}.html", context)
    return subject[:300], body_text, body_html


def _render_for_event(message: OutboxMessage) -> tuple[str, str, str]:
    """The receipt or withdrawal mail of the message's ledger event, with a status link
    unless the subject is an account the address was not proven to hold."""
    event = ObjectionEvent.objects.select_related("purpose").get(id=message.event_id)
    claims = LinkClaims(
        subject_id=event.subject_id, purpose=event.purpose.slug, language=message.language, email=message.to
    )
    link = "" if account_unproven(subject_id=event.subject_id, email=event.email) else status_url(claims)
    context = {"receipt": event, "purpose": event.purpose, "status_url": link, "when": when}
    return _render(EVENT_TEMPLATES[message.kind], message.language, context)


def outbox_enqueue(*, message_id: int) -> None:
    """Hand the send to Celery, on this process's relay thread (without a broker: send
    it now), with the id of the request that caused it (core.request_id). A publish that
    fails is not an error: the row stays pending and the sweep sends it once the broker
    is back."""
    item = (message_id, request_id_var.get())
    if current_app.conf.task_always_eager:
        _publish([item])
    else:
        _relay.put(item)


def outbox_flush(*, timeout: float = 30) -> bool:
    """Wait until this process has tried to publish every mail handed to it (tests).
    True if it has."""
    return _relay.flush(timeout)


def _publish(items: list[tuple[int, str]]) -> None:
    """Publish (message id, request id) pairs, up to BATCH per task. The task's own
    request id is theirs when they share one. Without a broker each batch is sent now,
    in this process, as Celery would run the task eagerly: a failure is logged and
    counted as a failed task, and leaves the rows to the sweep."""
    eager = current_app.conf.task_always_eager
    for start in range(0, len(items), BATCH):
        batch = items[start : start + BATCH]
        request_ids = {request_id for _id, request_id in batch}
        token = request_id_var.set(request_ids.pop() if len(request_ids) == 1 else "-")
        try:
            if eager:
                _send_now(batch)
            else:
                current_app.send_task(SEND_MANY_TASK, args=(batch,), retry=False, ignore_result=True)
        except Exception:  # kombu raises several types for an unreachable broker
            logger.warning(
                "outbox: could not enqueue mail %s; the sweep will send it",
                [message_id for message_id, _rid in batch],
                exc_info=True,
            )
        finally:
            request_id_var.reset(token)


def _send_now(batch: list[tuple[int, str]]) -> None:
    try:
        outbox_send_many(items=batch)
    except Exception:  # as Celery's eager run: logged and counted, never raised to the caller
        ERRORS.labels("task", SEND_MANY_TASK).inc()
        logger.exception("outbox: sending mail %s failed; the sweep will send it", [m for m, _rid in batch])


def outbox_send_many(*, items: list[tuple[int, str]]) -> int:
    """Send the mails of one published batch, each under the id of the request that
    caused it. Returns how many this call sent."""
    sent = 0
    for message_id, request_id in items:
        token = request_id_var.set(request_id)
        try:
            sent += outbox_send(message_id=message_id)
        finally:
            request_id_var.reset(token)
    return sent


class _Relay:
    """One daemon thread per process that publishes what outbox_enqueue queued: the
    mails that arrive within LINGER of the first go out as one task.

    Started on first use and again after a fork (gunicorn forks its workers). Mails
    still queued when the process exits are sent by the sweep: their rows are pending."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._queue: queue.Queue[tuple[int, str]] = queue.Queue()
        self._thread = threading.Thread()  # not started: the first put starts the real one

    def put(self, item: tuple[int, str]) -> None:
        if self._pid != os.getpid() or not self._thread.is_alive():
            with self._lock:
                if self._pid != os.getpid() or not self._thread.is_alive():
                    self._queue = queue.Queue()
                    self._thread = threading.Thread(
                        target=self._run, args=(self._queue,), name="outbox-relay", daemon=True
                    )
                    self._thread.start()
                    self._pid = os.getpid()
        self._queue.put(item)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    @staticmethod
    def _run(items: queue.Queue[tuple[int, str]]) -> None:
        full = False
        while True:
            batch = [items.get()]
            # Sleep rather than wait on the queue: a put then wakes nobody. After a full
            # batch more are waiting already, so go on at once.
            if not full:
                time.sleep(LINGER)
            while len(batch) < BATCH:
                try:
                    batch.append(items.get_nowait())
                except queue.Empty:
                    break
            full = len(batch) == BATCH
            try:
                _publish(batch)
            finally:
                for _ in batch:
                    items.task_done()


_relay = _Relay()


def outbox_send(*, message_id: int) -> bool:
    """Send one pending mail. Returns True if this call sent it; False if it was not
    pending (already sent, or in another worker's hands)."""
    claimed = OutboxMessage.objects.filter(id=message_id, status=OutboxMessage.Status.PENDING).update(
        status=OutboxMessage.Status.SENDING, claimed_at=timezone.now(), attempts=F("attempts") + 1
    )
    if claimed != 1:
        return False
    message = OutboxMessage.objects.get(id=message_id)
    try:
        if message.event_id is not None and not message.body_text:
            message.subject, message.body_text, message.body_html = _render_for_event(message)
        mail = EmailMultiAlternatives(
            subject=message.subject,
            body=message.body_text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[message.to],
            headers={"Auto-Submitted": "auto-generated"},
        )
        if message.body_html:
            mail.attach_alternative(message.body_html, "text/html")
        mail.send()
    except Exception as exc:  # the mail backend's errors are not ours to enumerate
        status = OutboxMessage.Status.FAILED if message.attempts >= MAX_ATTEMPTS else OutboxMessage.Status.PENDING
        OutboxMessage.objects.filter(id=message_id, status=OutboxMessage.Status.SENDING).update(
            status=status, last_error=str(exc)[:2000], claimed_at=None
        )
        logger.warning("outbox: mail %s failed (attempt %s)", message_id, message.attempts, exc_info=True)
        return False
    # What was sent stays on the row.
    OutboxMessage.objects.filter(id=message_id, status=OutboxMessage.Status.SENDING).update(
        status=OutboxMessage.Status.SENT,
        sent_at=timezone.now(),
        last_error="",
        subject=message.subject,
        body_text=message.body_text,
        body_html=message.body_html,
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
    request_id = request_id_var.get()
    _publish([(message_id, request_id) for message_id in ids])
    return ids
