"""Reads for the staff dashboards and the regulator's report: the funnel, reach, objections
and mail health of one campaign or of all of them.

Counting 1,000,000 deliveries per person takes seconds, so a page never counts: it shows
a snapshot kept in the cache with the time it was taken (`Stats.as_of`). A snapshot older
than DEMUR_DASHBOARD_MAX_AGE seconds is shown as it is while a Celery task
(campaigns.dashboard_refresh) takes a new one; a dashboard with no snapshot yet says that
its first count is under way. The report (campaigns/report.py) always counts afresh.

The counting runs in one read-only REPEATABLE READ transaction (unless called inside one
already), so the funnel and the objections come from the same moment; a read-only
transaction takes no transaction id and so never holds the change feed back.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from campaigns.enqueue import dashboard_refresh_enqueue

logger = logging.getLogger(__name__)

# The mail providers' limits the warnings lead up to: Gmail and Yahoo require a spam
# complaint rate below 0.3 %; Amazon SES puts an account under review at a 5 % bounce rate.
COMPLAINT_RATE_LIMIT = 0.3
BOUNCE_RATE_LIMIT = 5.0
# The over-time chart shows at most this many days (the latest).
MAX_DAYS = 120
_CACHE_VERSION = 1


class _Summable:
    def add(self, other) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Counts(_Summable):
    """People, not deliveries: someone mailed and shown the notice in the app counts once."""

    audience: int = 0
    reached: int = 0  # a delivered (or opened, or clicked) mail, or an in-app impression
    opened: int = 0  # an opened mail or an in-app impression
    clicked: int = 0
    objected: int = 0
    withdrawn: int = 0  # objected through the campaign and withdrew later

    @property
    def reach(self) -> float | None:
        return percent(self.reached, self.audience)

    @property
    def objection_rate(self) -> float | None:
        return percent(self.objected, self.audience)


@dataclass
class MailHealth(_Summable):
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    complained: int = 0
    failed: int = 0

    @property
    def bounce_rate(self) -> float | None:
        """Bounces per mail handed to the provider."""
        return percent(self.bounced, self.sent)

    @property
    def complaint_rate(self) -> float | None:
        """Spam complaints per delivered mail (a bounced mail reached no inbox)."""
        return percent(self.complained, self.delivered)

    @property
    def bounce_warning(self) -> bool:
        return self.bounce_rate is not None and self.bounce_rate >= settings.DEMUR_BOUNCE_RATE_WARNING

    @property
    def complaint_warning(self) -> bool:
        return self.complaint_rate is not None and self.complaint_rate >= settings.DEMUR_COMPLAINT_RATE_WARNING


@dataclass
class Day:
    day: dt.date
    objected: int = 0
    withdrawn: int = 0


@dataclass
class Effect:
    """From an objection's receipt to the moment it takes effect, in seconds."""

    count: int = 0
    median: float | None = None
    maximum: float | None = None


@dataclass
class Stats:
    as_of: dt.datetime
    seconds: float  # how long counting took
    total: Counts
    mail: MailHealth
    countries: dict[str, Counts]
    languages: dict[str, Counts]
    days: list[Day]
    effect: Effect
    # Per campaign (the overall dashboard): id -> (counts, mail health).
    campaigns: dict[int, tuple[Counts, MailHealth]] = field(default_factory=dict)

    @property
    def age(self) -> float:
        return (timezone.now() - self.as_of).total_seconds()

    @property
    def stale(self) -> bool:
        return self.age > settings.DEMUR_DASHBOARD_MAX_AGE


def percent(part: int, whole: int) -> float | None:
    return 100 * part / whole if whole else None


# --- Snapshots -------------------------------------------------------------------------


def stats_cache_key(campaign_id: int | None) -> str:
    # The database name keeps test runs (whose ids start again at 1) and deployments
    # sharing one Redis apart.
    database = settings.DATABASES["default"]["NAME"]
    scope = f"campaign:{campaign_id}" if campaign_id else "overall"
    return f"demur:dashboard:v{_CACHE_VERSION}:{database}:{scope}"


def dashboard_stats(*, campaign_id: int | None = None) -> Stats | None:
    """What the dashboard shows: the cached snapshot, counted again in the background
    when older than DEMUR_DASHBOARD_MAX_AGE. None while the first count runs: a web
    worker never counts (at 10,000,000 deliveries that would outlast its timeout)."""
    key = stats_cache_key(campaign_id)
    stats = cache.get(key)
    if stats is None or stats.stale:
        _recount_later(campaign_id)
        # With tasks run eagerly (the quick start) the count has just been made.
        stats = stats or cache.get(key)
    return stats


def _recount_later(campaign_id: int | None) -> None:
    """Enqueue one count per dashboard at a time. The mark expires, so a count lost with
    its worker or broker is asked for again by a later view."""
    if cache.add(_lock_key(campaign_id), 1, timeout=5 * settings.DEMUR_DASHBOARD_MAX_AGE):

        def publish() -> None:
            try:
                dashboard_refresh_enqueue(campaign_id=campaign_id)
            except Exception:  # kombu raises several types for an unreachable broker
                logger.warning("dashboard %s: could not enqueue a count", campaign_id, exc_info=True)
                cache.delete(_lock_key(campaign_id))  # so that the next view asks again

        transaction.on_commit(publish)


def stats_refresh(*, campaign_id: int | None = None) -> Stats:
    """Count now and keep the snapshot for a week (a view past its maximum age asks for a
    new count anyway; the week only bounds what an idle cache keeps)."""
    stats = campaign_stats(campaign_id=campaign_id)
    cache.set(stats_cache_key(campaign_id), stats, timeout=7 * 24 * 3600)
    cache.delete(_lock_key(campaign_id))
    return stats


def _lock_key(campaign_id: int | None) -> str:
    return stats_cache_key(campaign_id) + ":refreshing"


# --- Counting ----------------------------------------------------------------------------


def campaign_stats(*, campaign_id: int | None = None) -> Stats:
    """Count one campaign, or (None) every campaign, from the deliveries and the ledger."""
    started = time.perf_counter()
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        as_of = timezone.now()
        per_campaign = _people(campaign_id)
        _add_objections(campaign_id, per_campaign)
        days = _days(campaign_id)
        effect = _effect(campaign_id)

    total, mail = Counts(), MailHealth()
    countries: dict[str, Counts] = defaultdict(Counts)
    languages: dict[str, Counts] = defaultdict(Counts)
    campaigns: dict[int, tuple[Counts, MailHealth]] = {}
    for (campaign, country, language), (counts, health) in per_campaign.items():
        total.add(counts)
        mail.add(health)
        countries[country].add(counts)
        languages[language].add(counts)
        campaign_counts, campaign_mail = campaigns.setdefault(campaign, (Counts(), MailHealth()))
        campaign_counts.add(counts)
        campaign_mail.add(health)
    return Stats(
        as_of=as_of,
        seconds=time.perf_counter() - started,
        total=total,
        mail=mail,
        countries=dict(sorted(countries.items())),
        languages=dict(sorted(languages.items())),
        days=days,
        effect=effect,
        campaigns=campaigns if campaign_id is None else {},
    )


Groups = dict[tuple[int, str, str], tuple[Counts, MailHealth]]


def _where(campaign_id: int | None, column: str) -> tuple[str, list]:
    if campaign_id is None:
        return f"{column} IS NOT NULL", []
    return f"{column} = %s", [campaign_id]


_PEOPLE = """
SELECT p.campaign_id, COALESCE(r.country, ''), p.language, COUNT(*), SUM(p.reached), SUM(p.opened),
       SUM(p.clicked), SUM(p.sent), SUM(p.delivered), SUM(p.bounced), SUM(p.complained), SUM(p.failed)
FROM (
    SELECT d.campaign_id, d.subject_id, MIN(v.language) AS language,
        MAX(CASE WHEN d.delivered_at IS NOT NULL OR d.opened_at IS NOT NULL OR d.shown_at IS NOT NULL
                   OR d.clicked_at IS NOT NULL THEN 1 ELSE 0 END) AS reached,
        MAX(CASE WHEN d.opened_at IS NOT NULL OR d.shown_at IS NOT NULL OR d.clicked_at IS NOT NULL
                 THEN 1 ELSE 0 END) AS opened,
        MAX(CASE WHEN d.clicked_at IS NOT NULL THEN 1 ELSE 0 END) AS clicked,
        MAX(CASE WHEN d.channel = 'mail' AND d.status = 'sent' THEN 1 ELSE 0 END) AS sent,
        MAX(CASE WHEN d.channel = 'mail' AND d.delivered_at IS NOT NULL THEN 1 ELSE 0 END) AS delivered,
        MAX(CASE WHEN d.channel = 'mail' AND d.bounced_at IS NOT NULL THEN 1 ELSE 0 END) AS bounced,
        MAX(CASE WHEN d.channel = 'mail' AND d.complained_at IS NOT NULL THEN 1 ELSE 0 END) AS complained,
        MAX(CASE WHEN d.channel = 'mail' AND d.status = 'failed' THEN 1 ELSE 0 END) AS failed
    FROM campaigns_delivery d
    JOIN campaigns_noticeversion v ON v.id = d.notice_version_id
    WHERE {where}
    GROUP BY d.campaign_id, d.subject_id
) p
LEFT JOIN campaigns_recipient r ON r.subject_id = p.subject_id
GROUP BY p.campaign_id, COALESCE(r.country, ''), p.language
"""


def _people(campaign_id: int | None) -> Groups:
    """Per (campaign, country, language): the funnel per person and the mail health.
    Each person has at most one mail per campaign, so mails counted per person are mails."""
    where, params = _where(campaign_id, "d.campaign_id")
    groups: Groups = {}
    with connection.cursor() as cursor:
        cursor.execute(_PEOPLE.format(where=where), params)
        for campaign, country, language, audience, *numbers in cursor.fetchall():
            reached, opened, clicked, sent, delivered, bounced, complained, failed = (int(n or 0) for n in numbers)
            groups[(campaign, country, language)] = (
                Counts(audience=audience, reached=reached, opened=opened, clicked=clicked),
                MailHealth(sent=sent, delivered=delivered, bounced=bounced, complained=complained, failed=failed),
            )
    return groups


# The people who objected through a campaign (the link in its notice, its in-app notice),
# with the country and the language of the notice they were shown, and whether they
# withdrew afterwards (withdrawals name no campaign: they come from the status page).
_OBJECTORS = """
SELECT o.campaign_id, COALESCE(r.country, ''), COALESCE(v.language, r.language, ''), COUNT(*),
       SUM(CASE WHEN EXISTS (
           SELECT 1 FROM optout_objectionevent w
           WHERE w.subject_id = o.subject_id AND w.purpose_id = o.purpose_id
             AND w.action = 'withdrawn' AND w.id > o.first_id
       ) THEN 1 ELSE 0 END)
FROM (
    SELECT e.campaign_id, e.subject_id, e.purpose_id, MIN(e.id) AS first_id, MIN(e.notice_version_id) AS version_id
    FROM optout_objectionevent e
    WHERE {where} AND e.action = 'objected'
    GROUP BY e.campaign_id, e.subject_id, e.purpose_id
) o
LEFT JOIN campaigns_recipient r ON r.subject_id = o.subject_id
LEFT JOIN campaigns_noticeversion v ON v.id = o.version_id
GROUP BY o.campaign_id, COALESCE(r.country, ''), COALESCE(v.language, r.language, '')
"""


def _add_objections(campaign_id: int | None, groups: Groups) -> None:
    where, params = _where(campaign_id, "e.campaign_id")
    with connection.cursor() as cursor:
        cursor.execute(_OBJECTORS.format(where=where), params)
        for campaign, country, language, objected, withdrawn in cursor.fetchall():
            counts, _health = groups.setdefault((campaign, country, language), (Counts(), MailHealth()))
            counts.objected += objected
            counts.withdrawn += int(withdrawn or 0)


_DAYS = """
SELECT (e.received_at AT TIME ZONE 'UTC')::date, 'objected', COUNT(*) FROM optout_objectionevent e
WHERE {where} AND e.action = 'objected' GROUP BY 1
UNION ALL
SELECT (w.received_at AT TIME ZONE 'UTC')::date, 'withdrawn', COUNT(*) FROM optout_objectionevent w
JOIN (
    SELECT e.subject_id, e.purpose_id, MIN(e.id) AS first_id FROM optout_objectionevent e
    WHERE {where} AND e.action = 'objected' GROUP BY e.subject_id, e.purpose_id
) o ON w.subject_id = o.subject_id AND w.purpose_id = o.purpose_id AND w.id > o.first_id
WHERE w.action = 'withdrawn'
GROUP BY 1
"""


def _days(campaign_id: int | None) -> list[Day]:
    """Objections through the campaign, and their later withdrawals, per day (UTC)."""
    where, params = _where(campaign_id, "e.campaign_id")
    by_day: dict[dt.date, Day] = {}
    with connection.cursor() as cursor:
        cursor.execute(_DAYS.format(where=where), [*params, *params])
        for day, action, n in cursor.fetchall():
            entry = by_day.setdefault(day, Day(day))
            setattr(entry, action, entry.__dict__[action] + n)
    if not by_day:
        return []
    last = max(by_day)
    first = max(min(by_day), last - dt.timedelta(days=MAX_DAYS - 1))
    return [
        by_day.get(first + dt.timedelta(days=n), Day(first + dt.timedelta(days=n)))
        for n in range((last - first).days + 1)
    ]


_EFFECT = """
SELECT COUNT(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM e.effective_at - e.received_at)),
       MAX(EXTRACT(EPOCH FROM e.effective_at - e.received_at))
FROM optout_objectionevent e
WHERE {where} AND e.action = 'objected'
"""


def _effect(campaign_id: int | None) -> Effect:
    where, params = _where(campaign_id, "e.campaign_id")
    with connection.cursor() as cursor:
        cursor.execute(_EFFECT.format(where=where), params)
        count, median, maximum = cursor.fetchone()
    return Effect(count, float(median) if median is not None else None, float(maximum) if maximum is not None else None)
