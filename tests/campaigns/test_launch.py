"""Launch: frozen versions, one delivery per (campaign, subject, channel) made in bulk
from the audience filter, suppressions and earlier objections; guarded transitions."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from campaigns.dispatch import campaign_expire, campaigns_tick
from campaigns.models import Campaign, Delivery, NoticeVersion, Recipient, Suppression
from campaigns.selectors import campaign_progress
from campaigns.services import (
    CampaignStateError,
    campaign_cancel,
    campaign_launch,
    campaign_pause,
    campaign_resume,
)
from optout.services import objection_record
from tests.campaigns.factories import make_campaign


def _audience() -> None:
    for subject_id, email, language, country in [
        ("de-1", "a@example.com", "de", "DE"),
        ("de-2", "b@example.com", "de", "AT"),
        ("pl-1", "c@example.com", "pl", "PL"),
        ("fr-1", "d@example.com", "fr", "FR"),
        ("en-1", "", "en", "IE"),  # email erased: in-app only
        ("en-2", "unsub@example.com", "en", "IE"),
        ("en-3", "bounced@example.com", "en", "MT"),
    ]:
        Recipient.objects.create(subject_id=subject_id, email=email, language=language, country=country)
    Suppression.objects.create(subject_id="en-2", reason=Suppression.Reason.UNSUBSCRIBED)
    Suppression.objects.create(email="bounced@example.com", reason=Suppression.Reason.BOUNCED)


@pytest.mark.django_db
def test_it_creates_one_delivery_per_recipient_and_channel_from_the_frozen_versions(purpose):
    _audience()
    campaign = make_campaign(purpose, send_inapp=True)

    created = campaign_launch(campaign_id=campaign.pk)

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.RUNNING and campaign.launched_at
    mail = set(Delivery.objects.filter(channel="mail").values_list("subject_id", flat=True))
    inapp = set(Delivery.objects.filter(channel="inapp").values_list("subject_id", flat=True))
    assert mail == {"de-1", "de-2", "pl-1", "fr-1"}  # no email, unsubscribed, bounced: no mail
    assert inapp == {"de-1", "de-2", "pl-1", "fr-1", "en-1", "en-2", "en-3"}
    assert created == 11
    for delivery in Delivery.objects.select_related("notice_version"):
        language = Recipient.objects.get(subject_id=delivery.subject_id).language
        assert delivery.notice_version.language == language
        assert delivery.notice_version.campaign_id == campaign.pk
        assert delivery.status == "pending"
    assert NoticeVersion.objects.filter(campaign=campaign).count() == 26
    assert campaign_progress(campaign_id=campaign.pk).mail_total == 4


@pytest.mark.django_db
def test_it_filters_the_audience_by_country_and_language(purpose):
    _audience()
    campaign = make_campaign(purpose, countries=["DE", "AT", "PL"], languages=["de"])
    campaign_launch(campaign_id=campaign.pk)
    assert set(Delivery.objects.values_list("subject_id", flat=True)) == {"de-1", "de-2"}


@pytest.mark.django_db
@pytest.mark.parametrize("policy, status", [("variant", "pending"), ("skip", "skipped")])
def test_it_records_who_had_already_objected(purpose, policy, status):
    _audience()
    objection_record(subject_id="pl-1", purpose=purpose.slug, source="api")
    campaign = make_campaign(purpose, objected_policy=policy)
    campaign_launch(campaign_id=campaign.pk)

    objector = Delivery.objects.get(subject_id="pl-1")
    assert objector.objected_at is not None and objector.status == status
    assert Delivery.objects.filter(objected_at__isnull=True).exclude(status="pending").count() == 0


@pytest.mark.django_db
def test_it_launches_a_campaign_once(purpose):
    _audience()
    campaign = make_campaign(purpose)
    assert campaign_launch(campaign_id=campaign.pk) == 4
    Recipient.objects.create(subject_id="late", email="late@example.com", language="en", country="IE")

    with pytest.raises(CampaignStateError, match="cannot be launched while its status is “running”"):
        campaign_launch(campaign_id=campaign.pk)
    assert Delivery.objects.count() == 4


@pytest.mark.django_db
def test_it_schedules_a_campaign_that_starts_later_and_the_tick_starts_it(purpose):
    _audience()
    start = timezone.now() + dt.timedelta(hours=1)
    campaign = make_campaign(purpose, scheduled_at=start)
    campaign_launch(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == "scheduled"

    campaigns_tick(now=start - dt.timedelta(seconds=1))
    campaign.refresh_from_db()
    assert campaign.status == "scheduled"
    campaigns_tick(now=start)  # starts it; with no broker, dispatch runs in-process
    campaign.refresh_from_db()
    assert campaign.status == "completed"
    assert sorted(message.to[0] for message in mail.outbox) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    ]


@pytest.mark.django_db
def test_it_moves_only_through_allowed_transitions(purpose):
    _audience()
    campaign = make_campaign(purpose)
    with pytest.raises(CampaignStateError, match="cannot be paused while its status is “draft”"):
        campaign_pause(campaign_id=campaign.pk)
    campaign_launch(campaign_id=campaign.pk)
    with pytest.raises(CampaignStateError, match="cannot be resumed while its status is “running”"):
        campaign_resume(campaign_id=campaign.pk)
    campaign_pause(campaign_id=campaign.pk)
    with pytest.raises(CampaignStateError, match="cannot be paused while its status is “paused”"):
        campaign_pause(campaign_id=campaign.pk)
    campaign_resume(campaign_id=campaign.pk)

    assert campaign_cancel(campaign_id=campaign.pk) == 4
    campaign.refresh_from_db()
    assert campaign.status == "cancelled" and campaign.ended_at
    assert set(Delivery.objects.values_list("status", flat=True)) == {"cancelled"}
    assert Recipient.objects.filter(last_campaign_ended_at=campaign.ended_at).count() == 4
    for action in (campaign_resume, campaign_pause, campaign_cancel):
        with pytest.raises(CampaignStateError, match="while its status is “cancelled”"):
            action(campaign_id=campaign.pk)


@pytest.mark.django_db
def test_it_sends_nothing_after_the_expiry(purpose):
    _audience()
    campaign = make_campaign(purpose, expires_at=timezone.now() - dt.timedelta(minutes=1))
    with pytest.raises(CampaignStateError, match="end of sending has already passed"):
        campaign_launch(campaign_id=campaign.pk)

    Campaign.objects.filter(pk=campaign.pk).update(expires_at=timezone.now() + dt.timedelta(minutes=1))
    campaign_launch(campaign_id=campaign.pk)
    assert campaign_expire(campaign_id=campaign.pk) == 0  # not yet
    assert campaign_expire(campaign_id=campaign.pk, now=timezone.now() + dt.timedelta(minutes=2)) == 4
    campaign.refresh_from_db()
    assert campaign.status == "completed"
    assert set(Delivery.objects.values_list("status", flat=True)) == {"expired"}


@pytest.mark.django_db(transaction=True)
def test_it_creates_deliveries_once_when_two_launches_race(purpose):
    _audience()
    campaign = make_campaign(purpose)
    campaign_launch_barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def launch() -> None:
        try:
            campaign_launch_barrier.wait()
            outcomes.append(campaign_launch(campaign_id=campaign.pk))
        except CampaignStateError as exc:
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(isinstance(outcome, CampaignStateError) for outcome in outcomes) == [False, True]
    assert Delivery.objects.count() == 4
