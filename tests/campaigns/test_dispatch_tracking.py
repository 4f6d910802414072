"""Tracking webhooks through anymail's real Mailgun endpoint: signed events update the
delivery and the suppression list once; a replayed or forged webhook changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import time
import uuid

import pytest
from django.test import Client
from django.urls import clear_url_caches

from campaigns.models import Delivery, Recipient, Suppression, TrackingEvent
from campaigns.services import campaign_launch
from tests.campaigns.factories import make_campaign

pytestmark = pytest.mark.django_db

KEY = "test-signing-key"
URL = "/anymail/mailgun/tracking/"


@pytest.fixture(autouse=True)
def mailgun(settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": KEY}


def _payload(event: str, delivery: Delivery, *, token: str | None = None, key: str = KEY, **extra) -> dict:
    timestamp, token = str(int(time.time())), token or uuid.uuid4().hex
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    recipient = Recipient.objects.get(subject_id=delivery.subject_id).email
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": {
            "event": event,
            "timestamp": time.time(),
            "id": uuid.uuid4().hex,
            "recipient": recipient,
            "user-variables": {"delivery_id": str(delivery.pk)},
            "message": {"headers": {"message-id": f"d{delivery.pk}@example.org"}},
            **extra,
        },
    }


BASIC_AUTH = "Basic " + base64.b64encode(b"tracking:test-only-secret").decode()  # config/settings_test.py


def _post(payload: dict, authorization: str = BASIC_AUTH):
    return Client().post(URL, json.dumps(payload), content_type="application/json", HTTP_AUTHORIZATION=authorization)


@pytest.fixture
def delivery(purpose) -> Delivery:
    Recipient.objects.create(subject_id="u1", email="ana@example.com", language="de", country="DE")
    campaign_launch(campaign_id=make_campaign(purpose).pk)
    return Delivery.objects.get(subject_id="u1")


def test_it_records_delivered_opened_and_clicked_once(delivery):
    delivered = _payload("delivered", delivery)
    assert _post(delivered).status_code == 200
    delivery.refresh_from_db()
    first = delivery.delivered_at
    assert first is not None

    delivered["event-data"]["timestamp"] = time.time() + 60  # the same event, replayed later
    assert _post(delivered).status_code == 200
    assert _post(_payload("opened", delivery)).status_code == 200
    assert _post(_payload("clicked", delivery)).status_code == 200

    delivery.refresh_from_db()
    assert delivery.delivered_at == first and delivery.opened_at and delivery.clicked_at
    assert TrackingEvent.objects.count() == 3
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    "event, extra, reason",
    [("failed", {"severity": "permanent", "reason": "bounce"}, "bounced"), ("complained", {}, "complained")],
)
def test_it_suppresses_hard_bounces_and_complaints(purpose, delivery, event, extra, reason):
    assert _post(_payload(event, delivery, **extra)).status_code == 200

    delivery.refresh_from_db()
    assert getattr(delivery, f"{reason}_at") is not None
    suppression = Suppression.objects.get()
    assert (suppression.email, suppression.reason, suppression.subject_id) == ("ana@example.com", reason, "u1")
    # The next campaign mails nobody suppressed.
    assert campaign_launch(campaign_id=make_campaign(purpose).pk) == 0


def test_it_ignores_a_temporary_failure(delivery):
    assert _post(_payload("failed", delivery, severity="temporary")).status_code == 200
    delivery.refresh_from_db()
    assert delivery.bounced_at is None and not Suppression.objects.exists()


def test_it_changes_nothing_for_a_forged_webhook(delivery):
    forged = _payload("complained", delivery, key="not-the-key")
    assert _post(forged).status_code == 400
    tampered = _payload("delivered", delivery)
    tampered["signature"]["token"] = uuid.uuid4().hex
    assert _post(tampered).status_code == 400

    delivery.refresh_from_db()
    assert delivery.complained_at is None and delivery.delivered_at is None
    assert not Suppression.objects.exists() and not TrackingEvent.objects.exists()


def test_a_complaint_for_an_address_already_suppressed_twice_is_still_recorded(delivery):
    # Two webhooks for one address at once may both have inserted (nothing makes
    # (email, reason) unique); later events for it must still go through.
    for _ in range(2):
        Suppression.objects.create(email="ana@example.com", reason="complained")

    assert _post(_payload("complained", delivery)).status_code == 200

    delivery.refresh_from_db()
    assert delivery.complained_at is not None
    assert Suppression.objects.filter(email="ana@example.com", reason="complained").count() == 2


def test_a_webhook_without_the_shared_secret_changes_nothing(delivery):
    bounce = _payload("failed", delivery, severity="permanent", reason="bounce")

    wrong = "Basic " + base64.b64encode(b"tracking:guessed").decode()
    assert _post(bounce, authorization="").status_code in (400, 401, 403)
    assert _post(bounce, authorization=wrong).status_code in (400, 401, 403)

    delivery.refresh_from_db()
    assert delivery.bounced_at is None and not Suppression.objects.exists()


def test_without_a_shared_secret_the_webhooks_are_not_served(delivery, settings):
    import config.urls

    secret = settings.ANYMAIL["WEBHOOK_SECRET"]
    settings.ANYMAIL = {key: value for key, value in settings.ANYMAIL.items() if key != "WEBHOOK_SECRET"}
    try:
        importlib.reload(config.urls)
        clear_url_caches()
        response = _post(_payload("failed", delivery, severity="permanent", reason="bounce"))
        assert response.status_code == 404
        assert not Suppression.objects.exists()
    finally:
        settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": secret}
        importlib.reload(config.urls)
        clear_url_caches()
