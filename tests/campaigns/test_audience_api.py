"""POST /api/v1/audience: the platform syncs its audience, up to 10,000 recipients per
request, all or nothing, with the file import's rules (campaigns.audience)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from campaigns.audience import recipients_erase_expired
from campaigns.models import Recipient
from optout.models import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/audience"


@pytest.fixture(autouse=True)
def _fresh_throttle_budget():
    from django.core.cache import cache

    cache.clear()


def _key(*scopes: str) -> str:
    return ApiClient.objects.create_key(name="platform", scopes=list(scopes))[1]


@pytest.fixture
def key() -> str:
    return _key("audience:write")


def _post(client, body, key: str | None = None, **headers):
    if key:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", **headers)


def _recipient(n: int, **changes) -> dict:
    return {"subject_id": f"acct-{n}", "email": f"user{n}@example.org", "language": "de", "country": "DE", **changes}


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def test_it_adds_recipients_then_updates_them_and_a_repeat_changes_nothing(client, key):
    body = {"recipients": [_recipient(1), _recipient(2, language="pl", country="PL")]}
    response = _post(client, body, key)
    assert response.status_code == 200, response.content
    assert response.json() == {"received": 2, "created": 2, "updated": 0, "unchanged": 0}

    assert _post(client, body, key).json() == {"received": 2, "created": 0, "updated": 0, "unchanged": 2}

    body["recipients"][1]["email"] = "new@example.org"
    body["recipients"].append(_recipient(3, language=" EL ", country="gr"))
    assert _post(client, body, key).json() == {"received": 3, "created": 1, "updated": 1, "unchanged": 1}
    assert list(Recipient.objects.order_by("subject_id").values_list("subject_id", "email", "language", "country")) == [
        ("acct-1", "user1@example.org", "de", "DE"),
        ("acct-2", "new@example.org", "pl", "PL"),
        ("acct-3", "user3@example.org", "el", "GR"),
    ]


def test_it_needs_a_key_with_the_audience_scope(client):
    body = {"recipients": [_recipient(1)]}
    assert _error(_post(client, body), 401, "not_authenticated")
    assert _post(client, body)["WWW-Authenticate"] == "Bearer"
    _error(_post(client, body, "nope.not-a-key"), 401, "authentication_failed")
    for other in ("objections:read", "objections:write", "notices:read"):
        error = _error(_post(client, body, _key(other)), 403, "permission_denied")
        assert "audience:write" in error["message"]
    assert not Recipient.objects.exists()

    api_client, key = ApiClient.objects.create_key(name="revoked", scopes=["audience:write"])
    api_client.revoked = True
    api_client.save(update_fields=["revoked"])
    _error(_post(client, body, key), 401, "authentication_failed")
    assert not Recipient.objects.exists()


def test_it_takes_10000_recipients_and_answers_413_above(client, key):
    body = {"recipients": [_recipient(n) for n in range(10_000)]}
    assert _post(client, body, key).json()["created"] == 10_000

    body["recipients"].append(_recipient(10_000))
    error = _error(_post(client, body, key), 413, "too_large")
    assert "10000" in error["message"] and "10001" in error["message"]
    assert Recipient.objects.count() == 10_000


def test_a_body_over_the_byte_limit_is_refused_before_it_is_read(client, key, monkeypatch):
    monkeypatch.setattr("campaigns.api.AUDIENCE_MAX_BODY_BYTES", 100)
    _error(_post(client, {"recipients": [_recipient(1), _recipient(2)]}, key), 413, "too_large")
    assert not Recipient.objects.exists()


def test_it_names_every_bad_item_by_index_and_field_and_keeps_nothing(client, key):
    Recipient.objects.create(subject_id="acct-0", email="kept@example.org", language="en", country="IE")
    body = {
        "recipients": [
            _recipient(0, email="changed@example.org"),
            _recipient(1, email="not-an-address"),
            _recipient(2, language="xx", country="US"),
            {"subject_id": "acct-3", "email": "a@example.org", "language": "de"},
            _recipient(4, subject_id=""),
            _recipient(5, subject_id=7),
            "acct-6",
            _recipient(7, subject_id="acct-0"),
            _recipient(8, email="a@ex\ud800ample.org"),
            _recipient(9),
        ]
    }
    error = _error(_post(client, body, key), 400, "invalid")

    items = error["fields"]["recipients"]
    assert set(items) == {"1", "2", "3", "4", "5", "6", "7", "8"}
    assert items["1"] == {"email": ["email 'not-an-address' is not a valid address"]}
    assert items["2"] == {
        "language": ["unknown language 'xx'"],
        "country": ["country 'US' is not an EU or EEA country code"],
    }
    assert items["3"] == {"country": ["This field is required."]}
    assert items["4"] == {"subject_id": ["subject_id is empty"]}
    assert items["5"] == {"subject_id": ["Not a valid string."]}
    assert list(items["6"]) == ["non_field_errors"]
    assert items["7"] == {"subject_id": ["subject_id 'acct-0' is also item 0."]}
    assert items["8"] == {"email": ["email is not valid UTF-8 text"]}
    assert list(Recipient.objects.values_list("subject_id", "email")) == [("acct-0", "kept@example.org")]


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        {},
        {"recipients": "acct-1"},
        {"recipients": []},
        {"recipients": [None]},
        [_recipient(1)],
    ],
)
def test_a_malformed_body_is_a_400_in_the_error_shape(client, key, body):
    response = _post(client, body, key)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] in ("parse_error", "invalid")
    assert not Recipient.objects.exists()


def test_the_schema_documents_the_endpoint(client):
    schema = client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/audience"]["post"]
    assert {"200", "400", "401", "403", "413", "429"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[1]
    recipients = schema["components"]["schemas"][ref]["properties"]["recipients"]
    assert recipients["maxItems"] == 10_000
    assert recipients["items"]["required"] == ["subject_id", "email", "language", "country"]


def test_a_sync_keeps_the_retention_clock_and_an_erased_address_comes_back_only_when_sent(client, key, settings):
    settings.DEMUR_RECIPIENT_RETENTION_DAYS = 30
    ended = timezone.now() - dt.timedelta(days=31)
    Recipient.objects.create(last_campaign_ended_at=ended, **_recipient(1))

    assert _post(client, {"recipients": [_recipient(1)]}, key).json()["unchanged"] == 1
    assert recipients_erase_expired() == 1

    recipient = Recipient.objects.get()
    assert (recipient.email, recipient.last_campaign_ended_at) == ("", ended)
    assert _post(client, {"recipients": [_recipient(1)]}, key).json()["updated"] == 1
    recipient.refresh_from_db()
    assert (recipient.email, recipient.email_erased_at, recipient.last_campaign_ended_at) == (
        "user1@example.org",
        None,
        ended,
    )
