"""The in-app channel through the API: pending notices rendered in the subject's
language with their signed link; shown, clicked and dismissed recorded once."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client

from campaigns.models import Delivery, Recipient
from campaigns.services import campaign_launch, campaign_pause
from optout.links import OBJECT_SALT, read_token
from optout.models import ApiClient
from optout.services import objection_record
from tests.campaigns.factories import make_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttle_budget():
    cache.clear()


def _api(*scopes: str) -> Client:
    _client, key = ApiClient.objects.create_key(name="platform", scopes=list(scopes))
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def _launch(purpose):
    Recipient.objects.create(subject_id="u-el", email="", language="el", country="GR")
    Recipient.objects.create(subject_id="u-pl", email="pl@example.com", language="pl", country="PL")
    campaign = make_campaign(purpose, send_mail=False, send_inapp=True)
    campaign_launch(campaign_id=campaign.pk)
    return campaign


def test_it_lists_a_subjects_notices_in_their_language_with_the_signed_link(purpose):
    campaign = _launch(purpose)
    response = _api("notices:read").get("/api/v1/subjects/u-el/notices")

    assert response.status_code == 200
    (notice,) = response.json()["notices"]
    delivery = Delivery.objects.get(subject_id="u-el")
    assert notice["id"] == delivery.pk and notice["campaign_id"] == campaign.pk
    assert notice["language"] == "el" and notice["already_objected"] is False
    assert notice["notice_version"] == {
        "id": delivery.notice_version_id,
        "content_hash": delivery.notice_version.content_hash,
    }
    claims = read_token(notice["object_url"].rstrip("/").rsplit("/", 1)[1], salt=OBJECT_SALT)
    assert (claims.subject_id, claims.language, claims.notice_version_id) == ("u-el", "el", delivery.notice_version_id)
    assert notice["object_url"].replace("&", "&amp;") in notice["html"] or notice["object_url"] in notice["html"]
    assert _api("notices:read").get("/api/v1/subjects/nobody/notices").json() == {"notices": []}


def test_it_tells_someone_who_already_objected_so(purpose):
    objection_record(subject_id="u-pl", purpose=purpose.slug, source="api")
    _launch(purpose)
    (notice,) = _api("notices:read").get("/api/v1/subjects/u-pl/notices").json()["notices"]
    assert notice["already_objected"] is True and notice["object_url"] is None


def test_it_records_each_event_once_and_hides_dismissed_notices(purpose):
    _launch(purpose)
    api = _api("notices:read")
    delivery = Delivery.objects.get(subject_id="u-el")
    url = f"/api/v1/notices/{delivery.pk}/events"

    first = api.post(url, {"event": "shown"}, content_type="application/json").json()
    again = api.post(url, {"event": "shown"}, content_type="application/json").json()
    assert first["shown_at"] and again["shown_at"] == first["shown_at"]
    delivery.refresh_from_db()
    assert delivery.status == "sent" and delivery.sent_at

    clicked = api.post(url, {"event": "clicked"}, content_type="application/json").json()
    assert clicked["clicked_at"] and clicked["shown_at"] == first["shown_at"]
    assert len(api.get("/api/v1/subjects/u-el/notices").json()["notices"]) == 1
    api.post(url, {"event": "dismissed"}, content_type="application/json")
    assert api.get("/api/v1/subjects/u-el/notices").json()["notices"] == []


def test_it_refuses_bad_events_unknown_notices_and_missing_scopes(purpose):
    _launch(purpose)
    delivery = Delivery.objects.get(subject_id="u-el")
    api = _api("notices:read")

    bad = api.post(f"/api/v1/notices/{delivery.pk}/events", {"event": "liked"}, content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
    missing = api.post("/api/v1/notices/999999/events", {"event": "shown"}, content_type="application/json")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert _api("objections:read").get("/api/v1/subjects/u-el/notices").status_code == 403
    assert Client().get("/api/v1/subjects/u-el/notices").status_code == 401
    delivery.refresh_from_db()
    assert delivery.shown_at is None


def test_it_shows_nothing_while_the_campaign_is_paused(purpose):
    campaign = _launch(purpose)
    campaign_pause(campaign_id=campaign.pk)
    assert _api("notices:read").get("/api/v1/subjects/u-el/notices").json() == {"notices": []}


@pytest.mark.django_db
@pytest.mark.parametrize("subject_id", ["a%0Ab", "tab%09id", "a" * 129, "zero%E2%80%8Bwidth"])
def test_a_subject_id_no_one_can_have_is_a_400_naming_the_rule(subject_id):
    response = _api("notices:read").get(f"/api/v1/subjects/{subject_id}/notices")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_subject_id"
    assert "printable characters" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_a_subject_id_with_a_slash_reaches_the_notices_view():
    assert _api("notices:read").get("/api/v1/subjects/team/u-1/notices").json() == {"notices": []}
