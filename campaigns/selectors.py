"""Reads for campaigns: translation coverage of the notice catalogs; campaign progress."""

from __future__ import annotations

from dataclasses import dataclass

from babel.messages.pofile import read_po
from django.conf import settings
from django.db.models import Count
from django.utils.translation import get_language_info

from campaigns.notices import catalog_path


@dataclass(frozen=True)
class Coverage:
    language: str
    name: str
    translated: int
    total: int

    @property
    def missing(self) -> int:
        return self.total - self.translated

    @property
    def percent(self) -> int:
        return int(100 * self.translated / self.total) if self.total else 0


def catalog_coverage() -> list[Coverage]:
    """Per language: how many messages of locale/<lang>/django.po are translated (and not fuzzy)."""
    rows = []
    for language, _name in settings.LANGUAGES:
        path = catalog_path(language)
        translated = total = 0
        if path.exists():
            with path.open("rb") as handle:
                catalog = read_po(handle)
            for message in catalog:
                if not message.id:
                    continue
                total += 1
                strings = message.string if isinstance(message.string, (list, tuple)) else [message.string]
                if all(strings) and not message.fuzzy:
                    translated += 1
        rows.append(Coverage(language, get_language_info(language)["name_local"], translated, total))
    return rows


@dataclass(frozen=True)
class Progress:
    """A campaign's deliveries counted by channel and status, read from the rows
    themselves (no counter to drift or to contend on)."""

    counts: dict[str, dict[str, int]]

    def count(self, channel: str, *statuses: str) -> int:
        by_status = self.counts.get(channel, {})
        return sum(by_status.get(status, 0) for status in statuses) if statuses else sum(by_status.values())

    @property
    def mail_total(self) -> int:
        return self.count("mail")

    @property
    def mail_done(self) -> int:
        return self.mail_total - self.count("mail", "pending", "claimed", "sending")


def campaign_progress(*, campaign_id: int) -> Progress:
    from campaigns.models import Delivery

    counts: dict[str, dict[str, int]] = {}
    rows = (
        Delivery.objects.filter(campaign_id=campaign_id)
        .values_list("channel", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for channel, status, n in rows:
        counts.setdefault(channel, {})[status] = n
    return Progress(counts)


@dataclass(frozen=True)
class InappNotice:
    delivery: object  # campaigns.models.Delivery
    notice: object  # campaigns.notices.RenderedNotice
    object_url: str


def inapp_notices(*, subject_id: str) -> list[InappNotice]:
    """The in-app notices the subject should see now: of running campaigns, not past
    their end of sending, not dismissed; each rendered from its frozen version in the
    subject's language with their signed objection link."""
    from django.db.models import Q
    from django.utils import timezone

    from campaigns.models import Campaign, Delivery
    from campaigns.notices import notice_links, notice_personalise

    now = timezone.now()
    deliveries = (
        Delivery.objects.filter(
            subject_id=subject_id,
            channel=Delivery.Channel.INAPP,
            status__in=[Delivery.Status.PENDING, Delivery.Status.SENT],
            dismissed_at__isnull=True,
            campaign__status=Campaign.Status.RUNNING,
        )
        .filter(Q(campaign__expires_at__isnull=True) | Q(campaign__expires_at__gt=now))
        .select_related("notice_version__campaign__purpose")
        .order_by("id")
    )
    notices = []
    for delivery in deliveries:
        version = delivery.notice_version
        object_url, unsubscribe_url = notice_links(version, subject_id=subject_id)
        notice = notice_personalise(
            version,
            name="",
            object_url=object_url,
            unsubscribe_url=unsubscribe_url,
            objected_on=delivery.objected_at.date() if delivery.objected_at else None,
        )
        notices.append(InappNotice(delivery, notice, object_url))
    return notices
