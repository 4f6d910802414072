"""Sending a campaign's mail: claim a batch, render each mail from the frozen version,
send it through one connection, record each outcome as soon as it is known.

A delivery moves pending -> claimed -> sending -> sent | failed | pending (retry) |
skipped, each step a conditional UPDATE naming the batch's claim. A row is marked
"sending" in the same statement that records the outcome of the row before it, so at any
moment a batch has at most one row in "sending": the one handed to the mail backend.
When a worker dies, the periodic tick (`campaigns_tick`) finds its claim past
DEMUR_DELIVERY_CLAIM_TIMEOUT and settles it:

- rows still "claimed" were never handed to the backend: back to pending;
- the row in "sending" may or may not have gone out. It becomes "unknown" and is never
  retried: nobody gets the notice twice, and staff see how many outcomes are unknown
  (at most one per dead batch). The alternative, sending it again, would mail those
  people twice whenever the crash came after the provider accepted the mail.

A live worker gives back what is left of its claim after half the timeout, so the tick
never settles a batch that is still being worked on (EMAIL_TIMEOUT bounds one send).

One send rate per campaign across all workers comes from a token bucket in Redis
(campaigns.ratelimit). Workers read the campaign's status before each batch, so pause,
resume and cancel take effect within one batch (at most about a second of sending).
"""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
import socket
import time
import uuid
from dataclasses import dataclass
from email.utils import parseaddr

from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused
from django.conf import settings
from django.core.mail import get_connection
from django.db import connection, transaction
from django.db.models import F, Min, Q
from django.utils import timezone
from django.utils.translation import gettext

from campaigns.models import Campaign, Delivery, NoticeVersion, Recipient, Suppression
from campaigns.notices import notice_email
from campaigns.ratelimit import tokens_take
from config.metrics import deliveries_counted

logger = logging.getLogger(__name__)

S = Delivery.Status

# Retry delays for transient errors: attempt 1 waits 30 s, then 2, 8, 32 minutes...
BACKOFF_BASE = dt.timedelta(seconds=30)
BACKOFF_MAX = dt.timedelta(hours=1)


class SendError(Exception):
    def __init__(self, message: str, *, permanent: bool, reconnect: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.reconnect = reconnect


def classify(exc: Exception) -> SendError:
    """Permanent (5xx, refused address) or transient (4xx, network, provider outage)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in exc.recipients.values()]
        return SendError(str(exc.recipients), permanent=bool(codes) and all(500 <= c < 600 for c in codes))
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return SendError(str(exc) or "server disconnected", permanent=False, reconnect=True)
    if isinstance(exc, smtplib.SMTPResponseException):
        return SendError(f"{exc.smtp_code} {exc.smtp_error!r}", permanent=500 <= exc.smtp_code < 600, reconnect=exc.smtp_code == 421)
    if isinstance(exc, (OSError, socket.timeout, smtplib.SMTPException)):
        return SendError(str(exc) or type(exc).__name__, permanent=False, reconnect=True)
    if isinstance(exc, AnymailRecipientsRefused):
        return SendError(str(exc), permanent=True)
    if isinstance(exc, AnymailAPIError):
        status = getattr(exc, "status_code", None)
        permanent = status is not None and 400 <= status < 500 and status not in (408, 429)
        return SendError(str(exc), permanent=permanent)
    return SendError(f"{type(exc).__name__}: {exc}", permanent=False, reconnect=True)


@dataclass(frozen=True)
class BatchResult:
    more: bool  # whether the campaign has more to send (re-enqueue)
    sent: int = 0
    failed: int = 0
    delay: float = 0.0  # seconds to wait before the next batch


STOP = BatchResult(more=False)


# --- enqueueing ---------------------------------------------------------------------------


def dispatch_enqueue(*, campaign_id: int, chains: int | None = None) -> None:
    """Start dispatch tasks for a running campaign (call on commit). Each task sends a
    batch and enqueues its successor, so `chains` tasks work in parallel. A publish that
    fails is logged and left to the tick, which restarts stalled campaigns."""
    from campaigns.tasks import dispatch_task

    eager = dispatch_task.app.conf.task_always_eager
    for _n in range(1 if eager else chains or settings.DEMUR_DISPATCH_PARALLELISM):
        try:
            dispatch_task.apply_async((campaign_id,), retry=False)
        except Exception:  # kombu raises several types for an unreachable broker
            logger.warning("campaign %s: could not enqueue dispatch; the tick will", campaign_id, exc_info=True)
            return


# --- one batch ----------------------------------------------------------------------------

_CLAIM_SQL_PG = """
UPDATE campaigns_delivery d
SET status = 'claimed', claim = %(claim)s, claimed_at = %(now)s, attempts = d.attempts + 1
FROM (
    SELECT id FROM campaigns_delivery
    WHERE campaign_id = %(campaign)s AND channel = 'mail' AND status = 'pending'
      AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s)
    ORDER BY id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) c
WHERE d.id = c.id
RETURNING d.id, d.subject_id, d.notice_version_id, d.objected_at, d.attempts
"""

# SQLite has one writer at a time: the conditional UPDATE alone is the claim.
_CLAIM_SQL_SQLITE = """
UPDATE campaigns_delivery
SET status = 'claimed', claim = %(claim)s, claimed_at = %(now)s, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM campaigns_delivery
    WHERE campaign_id = %(campaign)s AND channel = 'mail' AND status = 'pending'
      AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s)
    ORDER BY id LIMIT %(limit)s
)
RETURNING id, subject_id, notice_version_id, objected_at, attempts
"""

# Records the outcome of one row and marks the next one as in flight, in one statement.
_STEP_SQL = """
UPDATE campaigns_delivery SET
    status = CASE WHEN id = %(done)s THEN %(status)s ELSE 'sending' END,
    sent_at = CASE WHEN id = %(done)s THEN %(sent_at)s ELSE sent_at END,
    message_id = CASE WHEN id = %(done)s THEN %(message_id)s ELSE message_id END,
    error = CASE WHEN id = %(done)s THEN %(error)s ELSE error END,
    next_attempt_at = CASE WHEN id = %(done)s THEN %(next_at)s ELSE next_attempt_at END
WHERE claim = %(claim)s
  AND ((id = %(done)s AND status = 'sending') OR (id = %(next)s AND status = 'claimed'))
"""


@dataclass(frozen=True)
class _Row:
    id: int
    subject_id: str
    version_id: int
    objected_at: dt.datetime | None
    attempts: int


_versions: dict[int, NoticeVersion] = {}


def _version(version_id: int) -> NoticeVersion:
    """Frozen versions never change, so each process keeps the ones it has read."""
    version = _versions.get(version_id)
    if version is None:
        version = NoticeVersion.objects.select_related("campaign__purpose").get(pk=version_id)
        _versions[version_id] = version
    return version


def _claim(campaign_id: int, limit: int, claim: uuid.UUID, now: dt.datetime) -> list[_Row]:
    sql = _CLAIM_SQL_PG if connection.vendor == "postgresql" else _CLAIM_SQL_SQLITE
    params = {"claim": _db_uuid(claim), "now": _db_datetime(now), "campaign": campaign_id, "limit": limit}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = [_Row(*row) for row in cursor.fetchall()]
    rows.sort(key=lambda row: row.id)
    if connection.vendor != "postgresql":
        rows = [
            _Row(r.id, r.subject_id, r.version_id, _sqlite_datetime(r.objected_at), r.attempts) for r in rows
        ]
    return rows


def _db_uuid(value: uuid.UUID):
    """PostgreSQL has a uuid type; elsewhere Django keeps UUIDs as 32 hex digits."""
    return value if connection.vendor == "postgresql" else value.hex


def _db_datetime(value: dt.datetime | None):
    """Raw SQL parameters: SQLite keeps datetimes as naive UTC text, as Django writes them."""
    return None if value is None else connection.ops.adapt_datetimefield_value(value)


def _sqlite_datetime(value) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


class _Recorder:
    """Writes each row's outcome, and marks the next row in flight, as one statement."""

    def __init__(self, claim: uuid.UUID) -> None:
        self.claim = _db_uuid(claim)
        self.pending_outcome: dict | None = None

    def step(self, next_id: int | None) -> bool:
        """Record the outcome held since the last call and mark `next_id` as sending.
        False when the claim was taken away (the tick settled it): stop the batch."""
        outcome = self.pending_outcome or {}
        params = {
            "claim": self.claim,
            "done": outcome.get("id", -1),
            "status": outcome.get("status", S.SENT),
            "sent_at": _db_datetime(outcome.get("sent_at")),
            "message_id": outcome.get("message_id", ""),
            "error": outcome.get("error", ""),
            "next_at": _db_datetime(outcome.get("next_at")),
            "next": next_id if next_id is not None else -1,
        }
        with connection.cursor() as cursor:
            cursor.execute(_STEP_SQL, params)
            changed = cursor.rowcount
        expected = (1 if self.pending_outcome else 0) + (1 if next_id is not None else 0)
        if self.pending_outcome and changed == expected:
            deliveries_counted(channel=Delivery.Channel.MAIL, status=params["status"])
        self.pending_outcome = None
        return changed == expected

    def outcome(self, delivery_id: int, **values) -> None:
        self.pending_outcome = {"id": delivery_id, **values}


def _message_domain() -> str:
    address = parseaddr(settings.DEFAULT_FROM_EMAIL)[1]
    return address.rpartition("@")[2] or "localhost"


def dispatch_batch(*, campaign_id: int) -> BatchResult:
    """Send one batch of the campaign's pending mail, if it is running."""
    now = timezone.now()
    campaign = Campaign.objects.filter(pk=campaign_id).values("status", "expires_at", "send_rate").first()
    if campaign is None or campaign["status"] != Campaign.Status.RUNNING:
        return STOP
    if campaign["expires_at"] and campaign["expires_at"] <= now:
        campaign_expire(campaign_id=campaign_id, now=now)
        return STOP
    rate = max(1, campaign["send_rate"])
    want = min(settings.DEMUR_DISPATCH_BATCH, rate)
    bucket = f"{connection.settings_dict['NAME']}:campaign:{campaign_id}"
    granted = tokens_take(bucket, rate=rate, want=want, max_wait=2.0)
    if not granted:
        return BatchResult(more=True)
    claim = uuid.uuid4()
    claimed_at = timezone.now()
    rows = _claim(campaign_id, granted, claim, claimed_at)
    if not rows:
        return _nothing_claimed(campaign_id, now)
    # The tick's sign of life, written at most once a second per campaign.
    Campaign.objects.filter(pk=campaign_id).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=claimed_at - dt.timedelta(seconds=1))
    ).update(dispatched_at=claimed_at)
    return _send(campaign_id, rows, claim, time.monotonic())


def _nothing_claimed(campaign_id: int, now: dt.datetime) -> BatchResult:
    waiting = Delivery.objects.filter(campaign_id=campaign_id, channel=Delivery.Channel.MAIL, status=S.PENDING)
    if waiting.exists():
        # Only retries that are not due yet (or rows another worker is locking): come back.
        first = waiting.aggregate(first=Min("next_attempt_at"))["first"]
        delay = (first - now).total_seconds() if first else 1.0
        return BatchResult(more=True, delay=min(max(delay, 0.5), 30.0))
    campaign_complete(campaign_id=campaign_id)
    return STOP


def _send(campaign_id: int, rows: list[_Row], claim: uuid.UUID, started: float) -> BatchResult:
    subject_ids = [row.subject_id for row in rows]
    emails = dict(Recipient.objects.filter(subject_id__in=subject_ids).values_list("subject_id", "email"))
    suppressed_subjects = set(
        Suppression.objects.filter(subject_id__in=subject_ids).values_list("subject_id", flat=True)
    )
    suppressed_emails = set(
        Suppression.objects.filter(email__in=[e for e in emails.values() if e]).values_list("email", flat=True)
    )
    domain = _message_domain()
    give_back_after = settings.DEMUR_DELIVERY_CLAIM_TIMEOUT / 2
    max_attempts = settings.DEMUR_DELIVERY_MAX_ATTEMPTS
    recorder = _Recorder(claim)
    mail_connection = get_connection(fail_silently=False)
    sent = failed = 0
    try:
        mail_connection.open()  # opened here, send_messages() keeps it for the whole batch
        for row in rows:
            if time.monotonic() - started > give_back_after:
                break
            email = emails.get(row.subject_id, "")
            message_id = f"<d{row.id}.c{campaign_id}@{domain}>"
            message = render_error = None
            if email and row.subject_id not in suppressed_subjects and email not in suppressed_emails:
                # Rendered before the row is marked "sending": a crash while rendering
                # leaves it claimed, and it goes back to pending rather than to unknown.
                try:
                    message = _message(_version(row.version_id), row, email, message_id, campaign_id, mail_connection)
                except Exception as exc:  # noqa: BLE001 - recorded on the row, never retried
                    render_error = f"{type(exc).__name__}: {exc}"
            if not recorder.step(row.id):
                logger.warning("campaign %s: claim %s was settled under this worker; stopping", campaign_id, claim)
                return BatchResult(more=True, sent=sent, failed=failed)
            if render_error:
                failed += 1
                recorder.outcome(row.id, status=S.FAILED, error=render_error[:2000])
                continue
            if message is None:
                recorder.outcome(row.id, status=S.SKIPPED, error="suppressed" if email else "no email address")
                continue
            try:
                message.send()
            except Exception as exc:  # noqa: BLE001 - the backend's errors are classified, not enumerated
                error = classify(exc)
                failed += 1
                if error.reconnect:
                    mail_connection.close()
                    _reopen(mail_connection)
                if error.permanent or row.attempts >= max_attempts:
                    recorder.outcome(row.id, status=S.FAILED, error=str(error)[:2000])
                else:
                    delay = min(BACKOFF_BASE * 4 ** (row.attempts - 1), BACKOFF_MAX)
                    recorder.outcome(row.id, status=S.PENDING, error=str(error)[:2000], next_at=timezone.now() + delay)
                logger.info("campaign %s: delivery %s failed: %s", campaign_id, row.id, error)
                continue
            sent += 1
            recorder.outcome(row.id, status=S.SENT, sent_at=timezone.now(), message_id=message_id)
        recorder.step(None)
    finally:
        mail_connection.close()
        # Whatever this batch did not reach goes back to pending at once.
        Delivery.objects.filter(claim=claim, status=S.CLAIMED).update(
            status=S.PENDING, claim=None, claimed_at=None, attempts=F("attempts") - 1
        )
    _pause_on_errors(campaign_id, sent=sent, failed=failed)
    return BatchResult(more=True, sent=sent, failed=failed)


def _message(version: NoticeVersion, row: _Row, email: str, message_id: str, campaign_id: int, mail_connection):
    message = notice_email(
        version,
        to=email,
        name="",
        subject_id=row.subject_id,
        objected_on=row.objected_at.date() if row.objected_at else None,
        connection=mail_connection,
    )
    message.extra_headers["Message-ID"] = message_id
    message.extra_headers["X-Demur-Campaign"] = str(campaign_id)
    message.extra_headers["X-Demur-Delivery"] = str(row.id)
    # django-anymail hands these to the provider; its webhooks bring them back.
    message.tags = [f"campaign-{campaign_id}", f"lang-{version.language}"]
    message.metadata = {"delivery_id": str(row.id), "campaign_id": str(campaign_id)}
    return message


def _reopen(mail_connection) -> None:
    try:
        mail_connection.open()
    except Exception:
        logger.info("could not reconnect to the mail backend", exc_info=True)


def _pause_on_errors(campaign_id: int, *, sent: int, failed: int) -> None:
    attempted = sent + failed
    if attempted < settings.DEMUR_CAMPAIGN_PAUSE_MIN_MAILS:
        return
    if failed * 100 < settings.DEMUR_CAMPAIGN_PAUSE_ERROR_PERCENT * attempted:
        return
    reason = gettext("Paused by itself: {failed} of {attempted} mails in a batch failed.").format(
        failed=failed, attempted=attempted
    )
    Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.RUNNING).update(
        status=Campaign.Status.PAUSED, pause_reason=reason[:300]
    )
    logger.warning("campaign %s: %s", campaign_id, reason)


# --- ending and the periodic tick ---------------------------------------------------------


def campaign_complete(*, campaign_id: int, now: dt.datetime | None = None) -> bool:
    """running -> completed once no mail is pending or in a worker's hands. A campaign
    with in-app notices keeps showing them until its end of sending (or a cancel)."""
    from campaigns.services import recipients_mark_campaign_ended

    now = now or timezone.now()
    busy = Delivery.objects.filter(
        campaign_id=campaign_id, channel=Delivery.Channel.MAIL, status__in=[S.PENDING, S.CLAIMED, S.SENDING]
    )
    with transaction.atomic():
        done = (
            Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.RUNNING, send_inapp=False)
            .exclude(pk__in=busy.values("campaign_id"))
            .update(status=Campaign.Status.COMPLETED, ended_at=now)
        )
        if done:
            recipients_mark_campaign_ended(campaign_id=campaign_id, now=now)
    return bool(done)


def campaign_expire(*, campaign_id: int, now: dt.datetime | None = None) -> int:
    """Past its end of sending nothing more goes out: pending mail expires and the
    campaign completes. Returns the number of deliveries expired."""
    from campaigns.services import recipients_mark_campaign_ended

    now = now or timezone.now()
    with transaction.atomic():
        done = Campaign.objects.filter(
            pk=campaign_id,
            status__in=[Campaign.Status.SCHEDULED, Campaign.Status.RUNNING, Campaign.Status.PAUSED],
            expires_at__lte=now,
        ).update(status=Campaign.Status.COMPLETED, ended_at=now)
        if not done:
            return 0
        expired = Delivery.objects.filter(
            campaign_id=campaign_id, channel=Delivery.Channel.MAIL, status=S.PENDING
        ).update(status=S.EXPIRED)
        recipients_mark_campaign_ended(campaign_id=campaign_id, now=now)
    return expired


def deliveries_settle(*, now: dt.datetime | None = None, timeout: float | None = None) -> tuple[int, int]:
    """Settle the claims of dead workers (see the module docstring). Returns (rows back
    to pending, rows whose outcome is unknown)."""
    now = now or timezone.now()
    timeout = settings.DEMUR_DELIVERY_CLAIM_TIMEOUT if timeout is None else timeout
    stale = Delivery.objects.filter(status__in=[S.CLAIMED, S.SENDING], claimed_at__lt=now - dt.timedelta(seconds=timeout))
    claims = list(stale.values_list("claim", flat=True).distinct())
    returned = unknown = 0
    for claim in claims:
        with transaction.atomic():
            unknown += Delivery.objects.filter(claim=claim, status=S.SENDING).update(
                status=S.UNKNOWN, error=gettext("The worker stopped while this mail was being sent; it may have gone out.")
            )
            returned += Delivery.objects.filter(claim=claim, status=S.CLAIMED).update(
                status=S.PENDING, claim=None, claimed_at=None, attempts=F("attempts") - 1
            )
    deliveries_counted(channel=Delivery.Channel.MAIL, status=S.UNKNOWN, count=unknown)
    if unknown:
        logger.warning("settled %s dead claims: %s deliveries back to pending, %s unknown", len(claims), returned, unknown)
    return returned, unknown


def campaigns_tick(*, now: dt.datetime | None = None) -> None:
    """What beat runs every DEMUR_CAMPAIGN_TICK_SECONDS: start due campaigns, expire late
    ones, settle dead claims, restart stalled dispatch, complete finished campaigns."""
    now = now or timezone.now()
    for campaign_id in Campaign.objects.filter(
        status__in=[Campaign.Status.SCHEDULED, Campaign.Status.RUNNING, Campaign.Status.PAUSED], expires_at__lte=now
    ).values_list("pk", flat=True):
        campaign_expire(campaign_id=campaign_id, now=now)
    started = list(
        Campaign.objects.filter(status=Campaign.Status.SCHEDULED, scheduled_at__lte=now).values_list("pk", flat=True)
    )
    for campaign_id in started:
        if Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SCHEDULED).update(status=Campaign.Status.RUNNING):
            dispatch_enqueue(campaign_id=campaign_id)
    deliveries_settle(now=now)
    # Mail a worker held while its campaign was cancelled came back as pending: cancel it too.
    Delivery.objects.filter(
        campaign__status=Campaign.Status.CANCELLED, channel=Delivery.Channel.MAIL, status=S.PENDING
    ).update(status=S.CANCELLED)
    stalled_before = now - dt.timedelta(seconds=3 * settings.CELERY_BEAT_SCHEDULE["campaigns-tick"]["schedule"])
    for campaign_id in Campaign.objects.filter(status=Campaign.Status.RUNNING).exclude(pk__in=started).values_list("pk", flat=True):
        if campaign_complete(campaign_id=campaign_id, now=now):
            continue
        if not Delivery.objects.filter(
            campaign_id=campaign_id, channel=Delivery.Channel.MAIL, status=S.PENDING
        ).exists():
            continue  # nothing to send: in-app only, or only mail in workers' hands
        stalled = Campaign.objects.filter(pk=campaign_id).filter(
            Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stalled_before)
        )
        if stalled.update(dispatched_at=now):
            dispatch_enqueue(campaign_id=campaign_id)
