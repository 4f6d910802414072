"""Sending a campaign's mail: claim a batch, render each mail from the frozen version,
send it through one connection, record each outcome as soon as its group is done.

A delivery moves pending -> claimed -> sending -> sent | failed | pending (retry) |
skipped, each step a conditional UPDATE naming the batch's claim. A batch goes out in
groups of DEMUR_DISPATCH_GROUP mails: one statement records the outcomes of the group
just sent and marks the next group "sending" before any of it is handed to the mail
backend, so at any moment a batch has at most one group in "sending". When a worker dies,
the periodic tick (`campaigns_tick`) finds its claim past DEMUR_DELIVERY_CLAIM_TIMEOUT
and settles it:

- rows still "claimed" were never handed to the backend: back to pending;
- rows in "sending" may or may not have gone out. They become "unknown" and are never
  retried: nobody gets the notice twice, and staff see how many outcomes are unknown
  (at most one group per dead batch). The alternative, sending them again, would mail
  people twice whenever the crash came after the provider accepted their mail.

The group size (`mails_per_write`) trades database round trips (one per group) against
what a crash leaves unknown (one group, of which the mails not yet handed over are never
sent): a group of 1 is one mail in flight at one round trip per mail.

A live worker gives back what is left of its claim after half the timeout, so the tick
never settles a batch that is still being worked on (EMAIL_TIMEOUT bounds one send).

One send rate per campaign across all workers comes from a token bucket in Redis
(campaigns.ratelimit). Workers read the campaign's status before each batch, so pause,
resume and cancel take effect within one batch (at most about a second of sending).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import smtplib
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from email.utils import parseaddr

from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Min, Q
from django.utils import timezone
from django.utils.translation import gettext

from campaigns import notice_mime
from campaigns.enqueue import dispatch_enqueue
from campaigns.models import Campaign, Delivery, NoticeVersion, Recipient, Suppression
from campaigns.notices import notice_email, notice_links
from campaigns.ratelimit import tokens_take
from campaigns.services import recipients_mark_campaign_ended
from core.metrics import deliveries_counted

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
        return SendError(
            f"{exc.smtp_code} {exc.smtp_error!r}", permanent=500 <= exc.smtp_code < 600, reconnect=exc.smtp_code == 421
        )
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


# --- one batch ----------------------------------------------------------------------------

_CLAIM_SQL = """
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

# One statement per group: the outcomes of the mails just sent (expected "sending"), the
# rows never handed over (skipped, unrenderable: expected "claimed") and the next group
# marked "sending" (expected "claimed"). Columns other than status are kept on rows
# being marked "sending" (a retry keeps its last error until its new outcome).
_RECORD_SQL = """
UPDATE campaigns_delivery d SET
    status = o.status,
    sent_at = CASE WHEN o.status = 'sending' THEN d.sent_at ELSE o.sent_at END,
    message_id = CASE WHEN o.status = 'sending' THEN d.message_id ELSE o.message_id END,
    error = CASE WHEN o.status = 'sending' THEN d.error ELSE o.error END,
    next_attempt_at = CASE WHEN o.status = 'sending' THEN d.next_attempt_at ELSE o.next_at END
FROM jsonb_to_recordset(%(rows)s::jsonb) AS o(
    id bigint, status text, expect text, sent_at timestamptz, message_id text, error text, next_at timestamptz
)
WHERE d.id = o.id AND d.claim = %(claim)s AND d.status = o.expect
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
    params = {"claim": claim, "now": now, "campaign": campaign_id, "limit": limit}
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, params)
        rows = [_Row(*row) for row in cursor.fetchall()]
    rows.sort(key=lambda row: row.id)  # RETURNING follows no order
    return rows


_RECORD_KEYS = ("id", "status", "expect", "sent_at", "message_id", "error", "next_at")


class _Recorder:
    """Collects outcomes and writes them, with the next group's "sending" mark, in one
    statement (one round trip per group rather than per mail)."""

    def __init__(self, claim: uuid.UUID) -> None:
        self.claim = claim
        self.entries: list[tuple] = []

    def outcome(
        self,
        delivery_id: int,
        *,
        status: str,
        sent: bool = True,
        sent_at: dt.datetime | None = None,
        message_id: str = "",
        error: str = "",
        next_at: dt.datetime | None = None,
    ) -> None:
        """`sent`: the row was handed to the backend (it is "sending"), else still "claimed"."""
        expect = S.SENDING if sent else S.CLAIMED
        self.entries.append((delivery_id, status, expect, sent_at, message_id, error, next_at))

    def write(self, sending: list[int]) -> bool:
        """Write the outcomes collected so far and mark `sending` as in flight. False
        when the claim was taken away (the tick settled it): stop the batch."""
        entries = self.entries + [(row_id, S.SENDING, S.CLAIMED, None, "", "", None) for row_id in sending]
        self.entries = []
        if not entries:
            return True
        # One JSON parameter: quoting seven arrays into the statement costs more.
        rows = [dict(zip(_RECORD_KEYS, entry, strict=True)) for entry in entries]
        with connection.cursor() as cursor:
            cursor.execute(_RECORD_SQL, {"claim": self.claim, "rows": json.dumps(rows, default=dt.datetime.isoformat)})
            if cursor.rowcount != len(entries):
                return False
        outcomes = Counter(entry[1] for entry in entries if entry[1] != S.SENDING)
        for status, count in outcomes.items():
            deliveries_counted(channel=Delivery.Channel.MAIL, status=status, count=count)
        return True


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
    return _send(campaign_id, rows, claim, time.monotonic(), group_size=mails_per_write(rate))


def _nothing_claimed(campaign_id: int, now: dt.datetime) -> BatchResult:
    waiting = Delivery.objects.filter(campaign_id=campaign_id, channel=Delivery.Channel.MAIL, status=S.PENDING)
    if waiting.exists():
        # Only retries that are not due yet (or rows another worker is locking): come back.
        first = waiting.aggregate(first=Min("next_attempt_at"))["first"]
        delay = (first - now).total_seconds() if first else 1.0
        return BatchResult(more=True, delay=min(max(delay, 0.5), 30.0))
    campaign_complete(campaign_id=campaign_id)
    return STOP


def mails_per_write(rate: int) -> int:
    """Mails handed to the backend between two writes: their outcomes and the next group's
    "sending" mark go in one statement, one round trip per group rather than per mail.
    The price: a worker killed mid-group leaves the whole group "unknown" (never sent
    again; the part not yet handed over never goes out), and an outcome reaches the
    database up to a group's sending time after it is known. So a group holds about 10 ms
    of the campaign's rate (a campaign at 50 mails/s keeps one mail in flight, where a
    round trip per mail costs nothing), up to DEMUR_DISPATCH_GROUP."""
    return max(1, min(settings.DEMUR_DISPATCH_GROUP, -(-rate // 100)))


def _send(campaign_id: int, rows: list[_Row], claim: uuid.UUID, started: float, *, group_size: int) -> BatchResult:
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
    mail_connection = notice_mime.mail_connection()
    prebuilt = notice_mime.fits(mail_connection)
    sent = failed = 0
    try:
        mail_connection.open()  # opened here, send_messages() keeps it for the whole batch
        for first in range(0, len(rows), group_size):
            if time.monotonic() - started > give_back_after:
                break
            # Rendered before the rows are marked "sending": a crash while rendering
            # leaves them claimed, and they go back to pending rather than to unknown.
            group = []
            for row in rows[first : first + group_size]:
                email = emails.get(row.subject_id, "")
                if not email or row.subject_id in suppressed_subjects or email in suppressed_emails:
                    recorder.outcome(
                        row.id, status=S.SKIPPED, sent=False, error="suppressed" if email else "no email address"
                    )
                    continue
                message_id = f"<d{row.id}.c{campaign_id}@{domain}>"
                try:
                    message = _message(
                        _version(row.version_id), row, email, message_id, campaign_id, mail_connection, prebuilt
                    )
                except Exception as exc:  # noqa: BLE001 - recorded on the row, never retried
                    failed += 1
                    recorder.outcome(row.id, status=S.FAILED, sent=False, error=f"{type(exc).__name__}: {exc}"[:2000])
                    continue
                group.append((row, message, message_id))
            if not recorder.write([row.id for row, _message, _id in group]):
                logger.warning("campaign %s: claim %s was settled under this worker; stopping", campaign_id, claim)
                return BatchResult(more=True, sent=sent, failed=failed)
            for row, message, message_id in group:
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
                        recorder.outcome(
                            row.id, status=S.PENDING, error=str(error)[:2000], next_at=timezone.now() + delay
                        )
                    logger.info("campaign %s: delivery %s failed: %s", campaign_id, row.id, error)
                    continue
                sent += 1
                recorder.outcome(row.id, status=S.SENT, sent_at=timezone.now(), message_id=message_id)
        recorder.write([])
    finally:
        mail_connection.close()
        # Whatever this batch did not reach goes back to pending at once.
        Delivery.objects.filter(claim=claim, status=S.CLAIMED).update(
            status=S.PENDING, claim=None, claimed_at=None, attempts=F("attempts") - 1
        )
    _pause_on_errors(campaign_id, sent=sent, failed=failed)
    return BatchResult(more=True, sent=sent, failed=failed)


def _message(
    version: NoticeVersion, row: _Row, email: str, message_id: str, campaign_id: int, mail_connection, prebuilt: bool
):
    objected_on = row.objected_at.date() if row.objected_at else None
    if prebuilt:
        object_url, unsubscribe_url = notice_links(version, subject_id=row.subject_id, email=email)
        message = notice_mime.prebuilt_email(
            version,
            to=email,
            objected_on=objected_on,
            object_url=object_url,
            unsubscribe_url=unsubscribe_url,
            message_id=message_id,
            delivery_id=row.id,
            connection=mail_connection,
        )
        if message is not None:
            return message
    message = notice_email(
        version,
        to=email,
        name="",
        subject_id=row.subject_id,
        objected_on=objected_on,
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
    stale = Delivery.objects.filter(
        status__in=[S.CLAIMED, S.SENDING], claimed_at__lt=now - dt.timedelta(seconds=timeout)
    )
    claims = list(stale.values_list("claim", flat=True).distinct())
    returned = unknown = 0
    for claim in claims:
        with transaction.atomic():
            unknown += Delivery.objects.filter(claim=claim, status=S.SENDING).update(
                status=S.UNKNOWN,
                error=gettext("The worker stopped while this mail was being sent; it may have gone out."),
            )
            returned += Delivery.objects.filter(claim=claim, status=S.CLAIMED).update(
                status=S.PENDING, claim=None, claimed_at=None, attempts=F("attempts") - 1
            )
    deliveries_counted(channel=Delivery.Channel.MAIL, status=S.UNKNOWN, count=unknown)
    if unknown:
        logger.warning(
            "settled %s dead claims: %s deliveries back to pending, %s unknown", len(claims), returned, unknown
        )
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
        if Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SCHEDULED).update(
            status=Campaign.Status.RUNNING
        ):
            dispatch_enqueue(campaign_id=campaign_id)
    deliveries_settle(now=now)
    # Mail a worker held while its campaign was cancelled came back as pending: cancel it too.
    Delivery.objects.filter(
        campaign__status=Campaign.Status.CANCELLED, channel=Delivery.Channel.MAIL, status=S.PENDING
    ).update(status=S.CANCELLED)
    stalled_before = now - dt.timedelta(seconds=3 * settings.CELERY_BEAT_SCHEDULE["campaigns-tick"]["schedule"])
    for campaign_id in (
        Campaign.objects.filter(status=Campaign.Status.RUNNING).exclude(pk__in=started).values_list("pk", flat=True)
    ):
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
