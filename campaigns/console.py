"""Reads for the staff console: what a launch would create, and the live progress of a
campaign per channel with its recent send rate and an estimated end.

Everything is counted from the recipient and delivery rows (no counters to drift): the
progress in one pass, campaigns.selectors.campaign_progress's counts by channel and
status with what the tracking webhooks reported and the mails sent in the last few
minutes counted alongside.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Q
from django.utils import timezone

from campaigns.models import Campaign, Delivery, ObjectedPolicy, Recipient, Suppression
from campaigns.selectors import Progress
from optout.models import ObjectionState

# The send rate behind the estimated end is measured over this window.
RATE_WINDOW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class LaunchEstimate:
    """What launching the campaign now would create (campaigns.services.deliveries_create)."""

    audience: int
    mail: int
    inapp: int
    already_objected: int
    skip_objected: bool


def launch_estimate(*, campaign: Campaign) -> LaunchEstimate:
    recipients = Recipient.objects.all()
    if campaign.countries:
        recipients = recipients.filter(country__in=campaign.countries)
    if campaign.languages:
        recipients = recipients.filter(language__in=campaign.languages)
    # IN (subquery) rather than a correlated EXISTS: PostgreSQL hashes each subquery once
    # and counts the audience in one scan.
    suppressed = Q(subject_id__in=Suppression.objects.exclude(subject_id="").values("subject_id")) | Q(
        email__in=Suppression.objects.exclude(email="").values("email")
    )
    objected = ObjectionState.objects.filter(purpose_id=campaign.purpose_id, objected=True).values("subject_id")
    counts = recipients.aggregate(
        audience=Count("id"),
        mail=Count("id", filter=~Q(email="") & ~suppressed),
        already_objected=Count("id", filter=Q(subject_id__in=objected)),
    )
    return LaunchEstimate(
        audience=counts["audience"],
        mail=counts["mail"] if campaign.send_mail else 0,
        inapp=counts["audience"] if campaign.send_inapp else 0,
        already_objected=counts["already_objected"],
        skip_objected=campaign.objected_policy == ObjectedPolicy.SKIP,
    )


@dataclass(frozen=True)
class ChannelProgress:
    channel: str
    label: str
    total: int
    pending: int  # pending or claimed by a worker, not yet handed to the mail backend
    sending: int
    sent: int
    delivered: int  # reported by the provider's webhook (mail) or shown in the app (in-app)
    failed: int  # refused by the server, or bounced afterwards
    unknown: int
    stopped: int  # skipped, cancelled or expired: will never be sent
    bounced: int = 0  # sent, then bounced (counted in `failed` too)

    @property
    def done(self) -> int:
        return self.total - self.pending - self.sending

    def percent(self, count: int) -> float:
        return round(100 * count / self.total, 1) if self.total else 0.0

    @property
    def percent_done(self) -> float:
        return self.percent(self.done)

    @property
    def bar(self) -> list[tuple[str, str, str]]:
        """(css class, x, width) of the stacked bar's segments, in percent of the total,
        formatted for SVG attributes (never localized)."""
        segments = []
        x = 0.0
        for css, count in (
            ("ok", self.sent - self.bounced),
            ("failed", self.failed),
            ("unknown", self.unknown),
            ("stopped", self.stopped),
        ):
            width = 100 * count / self.total if self.total else 0.0
            if width:
                segments.append((css, f"{x:.3f}", f"{width:.3f}"))
            x += width
        return segments


@dataclass(frozen=True)
class CampaignProgress:
    channels: list[ChannelProgress]
    mails_per_second: float
    estimated_end: dt.datetime | None
    ends_after_expiry: bool
    measured_at: dt.datetime

    @property
    def active(self) -> bool:
        return any(channel.pending or channel.sending for channel in self.channels)


def progress_panel(*, campaign: Campaign, now: dt.datetime | None = None) -> CampaignProgress:
    now = now or timezone.now()
    # One pass over the campaign's deliveries: campaign_progress's GROUP BY, with what the
    # webhooks reported and the mails sent within the rate window counted alongside.
    rows = (
        Delivery.objects.filter(campaign_id=campaign.pk)
        .values_list("channel", "status")
        .annotate(
            n=Count("id"),
            delivered=Count("id", filter=Q(delivered_at__isnull=False) | Q(shown_at__isnull=False)),
            bounced=Count("id", filter=Q(status=Delivery.Status.SENT, bounced_at__isnull=False)),
            recent=Count("id", filter=Q(channel=Delivery.Channel.MAIL, sent_at__gte=now - RATE_WINDOW)),
        )
        .order_by()
    )
    by_status: dict[str, dict[str, int]] = {}
    extra = {channel: {"delivered": 0, "bounced": 0, "recent": 0} for channel in Delivery.Channel.values}
    for channel, status, n, delivered, bounced, recent in rows:
        by_status.setdefault(channel, {})[status] = n
        for key, value in (("delivered", delivered), ("bounced", bounced), ("recent", recent)):
            extra[channel][key] += value
    counts = Progress(by_status)
    channels = []
    for channel, label in Delivery.Channel.choices:
        total = counts.count(channel)
        if not total:
            continue
        channels.append(
            ChannelProgress(
                channel=channel,
                label=str(label),
                total=total,
                pending=counts.count(channel, "pending", "claimed"),
                sending=counts.count(channel, "sending"),
                sent=counts.count(channel, "sent"),
                delivered=extra[channel]["delivered"],
                failed=counts.count(channel, "failed") + extra[channel]["bounced"],
                unknown=counts.count(channel, "unknown"),
                stopped=counts.count(channel, "skipped", "cancelled", "expired"),
                bounced=extra[channel]["bounced"],
            )
        )
    # The rate over the window, or since launch when the campaign is younger than that.
    window = RATE_WINDOW.total_seconds()
    if campaign.launched_at:
        window = min(window, max((now - campaign.launched_at).total_seconds(), 1.0))
    rate = extra[Delivery.Channel.MAIL]["recent"] / window
    remaining = counts.count(Delivery.Channel.MAIL, "pending", "claimed", "sending")
    estimated_end = None
    if remaining and rate > 0 and campaign.status == Campaign.Status.RUNNING:
        estimated_end = now + dt.timedelta(seconds=remaining / rate)
    return CampaignProgress(
        channels=channels,
        mails_per_second=round(rate, 1),
        estimated_end=estimated_end,
        ends_after_expiry=bool(estimated_end and campaign.expires_at and estimated_end > campaign.expires_at),
        measured_at=now,
    )
