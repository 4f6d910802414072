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
