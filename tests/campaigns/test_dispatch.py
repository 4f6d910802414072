"""Dispatch in-process through a real SMTP server: one mail per delivery, rendered from
the frozen version with the person's signed links and the unsubscribe headers; outcomes
recorded per mail; retries, self-pause, pause and dead claims."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pytest
from django.core.cache import caches
from django.utils import timezone

from campaigns.dispatch import (
    _claim,
    _Recorder,
    campaigns_tick,
    deliveries_settle,
    dispatch_batch,
    mails_per_write,
)
from campaigns.models import Campaign, Delivery, Recipient
from campaigns.ratelimit import tokens_take
from campaigns.selectors import campaign_progress
from campaigns.services import campaign_cancel, campaign_launch, campaign_pause
from optout.links import OBJECT_SALT, UNSUBSCRIBE_SALT, read_token
from optout.services import objection_record
from tests.campaigns.factories import make_campaign
from tests.campaigns.smtpsink import SmtpSink

pytestmark = pytest.mark.django_db

PEOPLE = [
    ("p-de", "de@example.com", "de", "DE"),
    ("p-pl", "pl@example.com", "pl", "PL"),
    ("p-el", "el@example.com", "el", "GR"),
    ("p-fr", "fr@example.com", "fr", "FR"),
    ("p-mt", "mt@example.com", "mt", "MT"),
]


@pytest.fixture
def sink(settings):
    with SmtpSink() as server:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_TIMEOUT = 10
        yield server


def _launch(purpose, people=PEOPLE, **fields) -> Campaign:
    for subject_id, email, language, country in people:
        Recipient.objects.create(subject_id=subject_id, email=email, language=language, country=country)
    campaign = make_campaign(purpose, send_rate=1000, **fields)
    campaign_launch(campaign_id=campaign.pk)
    return campaign


def _run(campaign: Campaign, *, limit: int = 50) -> None:
    for _n in range(limit):
        result = dispatch_batch(campaign_id=campaign.pk)
        if not result.more or result.delay:  # done, or only retries that are not due yet
            return
    raise AssertionError("dispatch did not finish")


def test_it_sends_one_mail_per_delivery_with_links_headers_and_tags(purpose, sink):
    objection_record(subject_id="p-pl", purpose=purpose.slug, source="api")
    campaign = _launch(purpose)

    _run(campaign)

    assert sink.counts == {email: 1 for _s, email, _l, _c in PEOPLE}
    campaign.refresh_from_db()
    assert campaign.status == "completed" and campaign.ended_at
    deliveries = {d.subject_id: d for d in Delivery.objects.select_related("notice_version")}
    assert {d.status for d in deliveries.values()} == {"sent"}
    for message in sink.messages():
        delivery = deliveries[next(s for s, e, _l, _c in PEOPLE if e == message["To"])]
        version = delivery.notice_version
        assert message["Message-ID"] == delivery.message_id
        assert message["X-Demur-Delivery"] == str(delivery.pk)
        assert message["X-Demur-Campaign"] == str(campaign.pk)
        assert message["Content-Language"] == version.language
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsubscribe = message["List-Unsubscribe"].strip("<>")
        claims = read_token(unsubscribe.rstrip("/").rsplit("/", 1)[1], salt=UNSUBSCRIBE_SALT)
        assert (claims.subject_id, claims.campaign_id, claims.notice_version_id) == (
            delivery.subject_id,
            campaign.pk,
            version.pk,
        )
        if delivery.subject_id == "p-pl":  # objected before: told so, no button to object again
            assert delivery.objected_at and message["Subject"].strip() == version.objected_subject
            continue
        assert message["Subject"].strip() == version.subject
        text = message.get_body(("plain",)).get_content()
        object_url = next(word for word in text.split() if "/t/" in word and word.startswith("http"))
        claims = read_token(object_url.rstrip("/").rsplit("/", 1)[1], salt=OBJECT_SALT)
        assert claims.subject_id == delivery.subject_id and claims.language == version.language
    progress = campaign_progress(campaign_id=campaign.pk)
    assert (progress.mail_total, progress.mail_done, progress.count("mail", "sent")) == (5, 5, 5)


def test_it_records_refusals_and_retries_transient_errors_later(purpose, sink):
    sink.refuse["de@example.com"] = "550 5.1.1 no such user"
    sink.refuse["pl@example.com"] = "451 4.3.0 try again later"
    campaign = _launch(purpose)

    _run(campaign)

    status = dict(Delivery.objects.values_list("subject_id", "status"))
    assert status == {"p-de": "failed", "p-pl": "pending", "p-el": "sent", "p-fr": "sent", "p-mt": "sent"}
    refused = Delivery.objects.get(subject_id="p-de")
    assert "550" in refused.error
    retry = Delivery.objects.get(subject_id="p-pl")
    assert retry.attempts == 1 and "451" in retry.error and retry.next_attempt_at > timezone.now()
    assert Campaign.objects.get(pk=campaign.pk).status == "running"

    del sink.refuse["pl@example.com"]
    Delivery.objects.filter(pk=retry.pk).update(next_attempt_at=timezone.now())
    _run(campaign)

    retry.refresh_from_db()
    assert retry.status == "sent" and retry.attempts == 2
    assert sink.counts["pl@example.com"] == 1 and "de@example.com" not in sink.counts
    assert Campaign.objects.get(pk=campaign.pk).status == "completed"


def test_it_pauses_itself_when_a_batch_mostly_fails(purpose, sink, settings):
    settings.DEMUR_CAMPAIGN_PAUSE_MIN_MAILS = 4
    settings.DEMUR_CAMPAIGN_PAUSE_ERROR_PERCENT = 50
    for _s, email, _l, _c in PEOPLE[:3]:
        sink.refuse[email] = "550 5.7.1 blocked"
    campaign = _launch(purpose)

    _run(campaign)

    campaign.refresh_from_db()
    assert campaign.status == "paused" and "3 of 5" in campaign.pause_reason


def test_it_sends_nothing_once_paused(purpose, sink):
    campaign = _launch(purpose)
    campaign_pause(campaign_id=campaign.pk)

    assert dispatch_batch(campaign_id=campaign.pk).more is False
    assert sink.counts == {}
    assert set(Delivery.objects.values_list("status", flat=True)) == {"pending"}


def test_it_settles_a_dead_workers_claim_without_sending_anyone_twice(purpose, sink):
    campaign = _launch(purpose)
    # A worker claims three mails, starts the first and dies.
    claim = uuid.uuid4()
    rows = _claim(campaign.pk, 3, claim, timezone.now())
    assert _Recorder(claim).write([rows[0].id])

    assert deliveries_settle(timeout=60) == (0, 0)  # not stale yet
    assert deliveries_settle(now=timezone.now() + dt.timedelta(seconds=61), timeout=60) == (2, 1)

    in_flight = Delivery.objects.get(pk=rows[0].id)
    assert in_flight.status == "unknown" and in_flight.error
    assert list(Delivery.objects.filter(pk__in=[r.id for r in rows[1:]]).values_list("status", "attempts")) == [
        ("pending", 0),
        ("pending", 0),
    ]
    _run(campaign)
    assert sum(sink.counts.values()) == 4
    assert in_flight.subject_id not in {s for s, e, _l, _c in PEOPLE if e in sink.counts}
    assert Campaign.objects.get(pk=campaign.pk).status == "completed"


def test_it_shares_one_send_rate_between_concurrent_senders():
    if "redis" not in type(caches["default"]).__module__:
        pytest.skip("needs CACHE_URL=redis://...")
    key = f"test:{uuid.uuid4()}"
    rate, duration = 200, 1.5
    taken: list[int] = []

    def sender() -> None:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            taken.append(tokens_take(key, rate=rate, want=20, max_wait=0.2))

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # At most the full bucket at the start plus what refills: one rate, not four.
    assert rate * duration * 0.8 <= sum(taken) <= rate * (duration + 1) + 20


def test_it_cancels_the_mail_a_worker_held_when_the_campaign_was_cancelled(purpose, sink):
    campaign = _launch(purpose)
    rows = _claim(campaign.pk, 2, uuid.uuid4(), timezone.now())  # a worker holds two mails
    assert campaign_cancel(campaign_id=campaign.pk) == 3
    deliveries_settle(now=timezone.now() + dt.timedelta(seconds=61), timeout=60)  # the worker died
    assert Delivery.objects.filter(pk__in=[r.id for r in rows], status="pending").count() == 2

    campaigns_tick()

    assert set(Delivery.objects.values_list("status", flat=True)) == {"cancelled"}
    assert dispatch_batch(campaign_id=campaign.pk).more is False and sink.counts == {}


def test_it_writes_outcomes_in_groups_of_about_ten_milliseconds_of_the_rate(settings):
    settings.DEMUR_DISPATCH_GROUP = 10
    # A slow campaign keeps one mail in flight; a fast one writes once per ten mails.
    assert [mails_per_write(rate) for rate in (1, 50, 100, 101, 400, 1000, 1_000_000)] == [1, 1, 1, 2, 4, 10, 10]
