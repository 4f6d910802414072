"""Writes for campaigns: freezing notice versions, sending a test notice to staff,
launching, and the guarded state transitions of the campaign engine."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy

from campaigns.enqueue import dispatch_enqueue
from campaigns.models import Campaign, Delivery, NoticeVersion, ObjectedPolicy, Recipient
from campaigns.notices import notice_build, notice_email
from core.metrics import deliveries_counted


def notice_versions_freeze(*, campaign_id: int) -> list[NoticeVersion]:
    """Freeze the campaign's notice in every language, once. A language already frozen
    keeps its version untouched, so calling this again (or concurrently) changes nothing;
    what a person was shown stays provable (DESIGN invariant 5)."""
    campaign = Campaign.objects.select_related("purpose").get(pk=campaign_id)
    # Rendering is slow-ish and needs no lock; only the inserts run in transactions.
    existing = set(NoticeVersion.objects.filter(campaign=campaign).values_list("language", flat=True))
    for language, _name in settings.LANGUAGES:
        if language in existing:
            continue
        version = notice_build(campaign=campaign, language=language)
        try:
            with transaction.atomic():
                version.save()
        except IntegrityError:
            pass  # frozen by a concurrent call: theirs stands
    return list(NoticeVersion.objects.filter(campaign=campaign).order_by("language"))


def notice_test_send(
    *,
    campaign_id: int,
    language: str,
    to: str,
    name: str,
    already_objected: bool = False,
) -> NoticeVersion:
    """Send the notice to a staff member: the frozen version when the campaign has one
    for the language, else a fresh rendering of the current templates (not stored).
    Its links lead to a page that says it is a test and records nothing."""
    from campaigns.sample_links import sample_links

    campaign = Campaign.objects.select_related("purpose").get(pk=campaign_id)
    version = NoticeVersion.objects.filter(campaign=campaign, language=language).first()
    if version is None:
        version = notice_build(campaign=campaign, language=language)
    objected_on = dt.date.today() if already_objected else None
    notice_email(version, to=to, name=name, subject_id="", objected_on=objected_on, links=sample_links(version)).send()
    return version


# --- The campaign engine: launch and guarded state transitions ----------------------------
#
# Every transition is one conditional UPDATE (`WHERE status IN (...)`) that must change
# exactly one row, so two staff members (or staff and a worker) racing on one campaign
# can never both win, and nothing reads a status before writing it.


class CampaignStateError(Exception):
    """The campaign is not in a state that allows what was asked."""


# What a refused transition says, one whole sentence per action (a verb slotted into a
# shared sentence reads wrongly in most languages).
REFUSED = {
    "launch": gettext_lazy("A campaign cannot be launched while its status is “{status}”."),
    "pause": gettext_lazy("A campaign cannot be paused while its status is “{status}”."),
    "resume": gettext_lazy("A campaign cannot be resumed while its status is “{status}”."),
    "cancel": gettext_lazy("A campaign cannot be cancelled while its status is “{status}”."),
}


def _refused(action: str, status: str) -> CampaignStateError:
    return CampaignStateError(str(REFUSED[action]).format(status=Campaign.Status(status).label))


def _transition(
    campaign_id: int,
    *,
    allowed: tuple[str, ...],
    to: str,
    action: str,
    **values,
) -> None:
    """`action`: a key of REFUSED, for the message when the campaign's status forbids it."""
    changed = Campaign.objects.filter(pk=campaign_id, status__in=allowed).update(status=to, **values)
    if changed != 1:
        status = Campaign.objects.filter(pk=campaign_id).values_list("status", flat=True).first()
        if status is None:
            raise CampaignStateError(gettext("There is no campaign {id}.").format(id=campaign_id))
        raise _refused(action, status)


def campaign_launch(*, campaign_id: int, now: dt.datetime | None = None) -> int:
    """Freeze the notice in every language and create one delivery per (recipient,
    channel) of the audience in one statement; then the campaign is scheduled (it has a
    start in the future) or running. Returns the number of deliveries created.

    Only a draft can be launched: launching again creates nothing and says why."""
    now = now or timezone.now()
    campaign = Campaign.objects.get(pk=campaign_id)
    if campaign.status != Campaign.Status.DRAFT:
        raise _refused("launch", campaign.status)
    if not (campaign.send_mail or campaign.send_inapp):
        raise CampaignStateError(gettext("Choose at least one channel: mail or in-app."))
    if campaign.expires_at and campaign.expires_at <= now:
        raise CampaignStateError(gettext("The campaign's end of sending has already passed."))
    notice_versions_freeze(campaign_id=campaign_id)  # idempotent; slow rendering outside the lock
    starts_later = bool(campaign.scheduled_at and campaign.scheduled_at > now)
    with transaction.atomic():
        # Locks out a concurrent launch until this one has committed or rolled back.
        locked = Campaign.objects.select_for_update().get(pk=campaign_id)
        if locked.status != Campaign.Status.DRAFT:
            raise _refused("launch", locked.status)
        created = deliveries_create(campaign=locked)
        _transition(
            campaign_id,
            allowed=(Campaign.Status.DRAFT,),
            to=Campaign.Status.SCHEDULED if starts_later else Campaign.Status.RUNNING,
            action="launch",
            launched_at=now,
        )
        if not starts_later:
            transaction.on_commit(lambda: dispatch_enqueue(campaign_id=campaign_id))
    return created


_DELIVERIES_SQL = """
INSERT INTO campaigns_delivery (
    campaign_id, subject_id, channel, notice_version_id, objected_at, status, attempts, message_id, error
)
SELECT %(campaign)s, r.subject_id, ch.channel, v.id, s.received_at,
       CASE WHEN s.id IS NOT NULL AND %(skip_objected)s THEN 'skipped' ELSE 'pending' END, 0, '', ''
FROM campaigns_recipient r
JOIN campaigns_noticeversion v ON v.campaign_id = %(campaign)s AND v.language = r.language
CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)
LEFT JOIN optout_objectionstate s
    ON s.subject_id = r.subject_id AND s.purpose_id = %(purpose)s AND s.objected
WHERE (cardinality(%(countries)s::text[]) = 0 OR r.country = ANY(%(countries)s::text[]))
  AND (cardinality(%(languages)s::text[]) = 0 OR r.language = ANY(%(languages)s::text[]))
  AND NOT (ch.channel = 'mail' AND (
      r.email = ''
      OR EXISTS (SELECT 1 FROM campaigns_suppression x WHERE x.subject_id = r.subject_id)
      OR EXISTS (SELECT 1 FROM campaigns_suppression x WHERE x.email = r.email)
  ))
ON CONFLICT (campaign_id, subject_id, channel) DO NOTHING
"""


def deliveries_create(*, campaign: Campaign) -> int:
    """One delivery per matching recipient and channel, pointing at the frozen version of
    the recipient's language (DESIGN invariant 5). Mail skips suppressed subjects and
    addresses (unsubscribed, bounced, complained); in-app notices are still shown to
    them. Existing deliveries are left alone, so this never creates one twice."""
    channels = [
        channel
        for channel, wanted in (
            (Delivery.Channel.MAIL, campaign.send_mail),
            (Delivery.Channel.INAPP, campaign.send_inapp),
        )
        if wanted
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            _DELIVERIES_SQL,
            {
                "campaign": campaign.pk,
                "purpose": campaign.purpose_id,
                "channels": channels,
                "countries": list(campaign.countries),
                "languages": list(campaign.languages),
                "skip_objected": campaign.objected_policy == ObjectedPolicy.SKIP,
            },
        )
        return cursor.rowcount


def campaign_pause(*, campaign_id: int, reason: str = "") -> None:
    """Stop sending within a batch: workers read the status before each batch."""
    _transition(
        campaign_id,
        allowed=(Campaign.Status.RUNNING,),
        to=Campaign.Status.PAUSED,
        action="pause",
        pause_reason=reason[:300],
    )


def campaign_resume(*, campaign_id: int) -> None:
    with transaction.atomic():
        _transition(
            campaign_id,
            allowed=(Campaign.Status.PAUSED,),
            to=Campaign.Status.RUNNING,
            action="resume",
            pause_reason="",
        )
        transaction.on_commit(lambda: dispatch_enqueue(campaign_id=campaign_id))


def campaign_cancel(*, campaign_id: int, now: dt.datetime | None = None) -> int:
    """Stop the campaign for good; deliveries not yet sent are cancelled (a mail in
    flight finishes). Returns how many deliveries were cancelled."""
    now = now or timezone.now()
    with transaction.atomic():
        _transition(
            campaign_id,
            allowed=(Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.RUNNING, Campaign.Status.PAUSED),
            to=Campaign.Status.CANCELLED,
            action="cancel",
            ended_at=now,
        )
        cancelled = Delivery.objects.filter(
            campaign_id=campaign_id, channel=Delivery.Channel.MAIL, status=Delivery.Status.PENDING
        ).update(status=Delivery.Status.CANCELLED)
        recipients_mark_campaign_ended(campaign_id=campaign_id, now=now)
    return cancelled


def recipients_mark_campaign_ended(*, campaign_id: int, now: dt.datetime) -> int:
    """Start the retention clock of everyone the campaign reached (campaigns.audience)."""
    return Recipient.objects.filter(
        subject_id__in=Delivery.objects.filter(campaign_id=campaign_id).values("subject_id")
    ).update(last_campaign_ended_at=now)


# --- The in-app channel -------------------------------------------------------------------

INAPP_EVENTS = ("shown", "clicked", "dismissed")


def inapp_event_record(*, delivery_id: int, event: str, now: dt.datetime | None = None) -> Delivery | None:
    """Record that the platform showed, clicked or dismissed an in-app notice. Each time
    is set once (a repeat changes nothing); a click or dismissal implies it was shown.
    Returns the delivery, or None when no in-app delivery has this id."""
    if event not in INAPP_EVENTS:
        raise ValueError(event)
    now = now or timezone.now()
    deliveries = Delivery.objects.filter(pk=delivery_id, channel=Delivery.Channel.INAPP)
    with transaction.atomic():
        deliveries.filter(**{f"{event}_at__isnull": True}).update(**{f"{event}_at": now})
        deliveries.filter(shown_at__isnull=True).update(shown_at=now)
        shown = deliveries.filter(status=Delivery.Status.PENDING).update(status=Delivery.Status.SENT, sent_at=now)
    deliveries_counted(channel=Delivery.Channel.INAPP, status=Delivery.Status.SENT, count=shown)
    return deliveries.first()
