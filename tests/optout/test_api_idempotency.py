"""An Idempotency-Key answers a retry of its first request with that request's receipt,
and refuses (422) the same key with a request that differs in anything."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connections, transaction
from django.utils import timezone

from optout.models import ObjectionEvent
from optout.services import IdempotencyKeyReused, objection_record, objection_withdraw
from tests.campaigns.factories import make_campaign
from tests.optout.test_api import WRITE, assert_error, call, make_key

pytestmark = pytest.mark.django_db

EARLIER = (timezone.now() - timedelta(days=2)).replace(microsecond=123456)
FIRST = {"subject_id": "app-user-1", "source": "in-app", "received_at": EARLIER.isoformat(), "reason": "no thanks"}


@pytest.fixture
def write_key(purpose) -> str:
    return make_key(WRITE, name="platform")[1]


def post(client, key: str, body: dict, idempotency_key: str = "tap-1"):
    return call(client, "post", "/api/v1/objections", key=key, body=body, HTTP_IDEMPOTENCY_KEY=idempotency_key)


def test_a_retry_with_the_same_body_gets_the_first_receipt_even_after_a_withdrawal(client, write_key):
    first = json.loads(post(client, write_key, FIRST).content)
    objection_withdraw(subject_id="app-user-1", source="api")

    retry = post(client, write_key, dict(reversed(list(FIRST.items()))))  # the same fields in another order

    assert retry.status_code == 200
    again = json.loads(retry.content)
    assert again["receipt"] == first["receipt"] and again["created"] is False
    assert (again["objected"], again["received_at"]) == (True, first["received_at"])
    assert ObjectionEvent.objects.filter(action="objected").count() == 1


def test_a_retry_that_left_the_time_out_both_times_is_a_retry(client, write_key):
    body = {"subject_id": "app-user-2", "source": "gpc"}
    first = json.loads(post(client, write_key, body, "tap-2").content)

    retry = post(client, write_key, {**body, "reason": ""}, "tap-2")  # an empty reason is no reason

    assert retry.status_code == 200 and json.loads(retry.content)["receipt"] == first["receipt"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject_id": "app-user-9"}, "subject_id"),
        ({"source": "gpc"}, "source"),
        ({"reason": "changed my mind"}, "reason"),
        ({"reason": None}, "reason"),  # left out this time
        ({"received_at": (EARLIER + timedelta(microseconds=1)).isoformat()}, "received_at"),
        ({"received_at": None}, "received_at"),  # left out: now, not the time first given
    ],
)
def test_the_key_with_a_different_body_is_a_422_naming_the_field(client, write_key, change, field):
    first = post(client, write_key, FIRST)
    body = {name: value for name, value in {**FIRST, **change}.items() if value is not None}

    response = post(client, write_key, body)

    error = assert_error(response, 422, "idempotency_key_reused")
    assert field in error["message"] and "new key" in error["message"]
    assert ObjectionEvent.objects.count() == 1
    assert json.loads(first.content)["receipt"] == ObjectionEvent.objects.get().receipt


def test_a_key_first_sent_without_a_time_is_refused_with_one(client, write_key):
    body = {"subject_id": "app-user-3", "source": "in-app"}
    post(client, write_key, body, "tap-3")

    with_time = post(client, write_key, {**body, "received_at": EARLIER.isoformat()}, "tap-3")

    assert "received_at" in assert_error(with_time, 422, "idempotency_key_reused")["message"]


def test_two_clients_may_use_the_same_key_text(client, write_key):
    other_key = make_key(WRITE, name="other platform")[1]
    post(client, write_key, FIRST)

    assert post(client, other_key, {**FIRST, "source": "gpc"}).status_code == 200  # already objecting: no new event
    assert post(client, other_key, {**FIRST, "subject_id": "app-user-5"}).status_code == 201


def test_the_service_compares_every_field_the_first_request_recorded(purpose):
    campaign = make_campaign(purpose)
    effective = EARLIER + timedelta(days=1)
    first = {
        "subject_id": "user-1",
        "source": "email-link",
        "received_at": EARLIER,
        "effective_at": effective,
        "email": "a@example.com",
        "reason": "r",
        "campaign_id": campaign.pk,
        "staff_user": "",
        "idempotency_key": "k-1",
    }
    receipt = objection_record(**first)
    assert objection_record(**first).receipt == receipt.receipt

    for change in [
        {"effective_at": effective + timedelta(seconds=1)},
        {"effective_at": None},
        {"email": "b@example.com"},
        {"campaign_id": None},
        {"staff_user": "someone"},
    ]:
        with pytest.raises(IdempotencyKeyReused, match=next(iter(change))):
            objection_record(**{**first, **change})
    with pytest.raises(IdempotencyKeyReused, match="action"):
        objection_withdraw(subject_id="user-1", source="email-link", received_at=EARLIER, idempotency_key="k-1")
    assert ObjectionEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_different_request_racing_the_first_with_its_key_is_refused_not_replayed(purpose):
    """The second request checks the key before the first has committed, then waits for
    the subject's row: once the first commits, it is compared all the same."""
    started, outcome = threading.Event(), {}

    def first() -> None:
        try:
            with transaction.atomic():
                objection_record(subject_id="user-1", source="in-app", idempotency_key="k-race")
                started.set()
                time.sleep(0.5)  # the second request arrives meanwhile
        finally:
            connections.close_all()

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(10)
    try:
        objection_record(subject_id="user-1", source="gpc", idempotency_key="k-race")
    except IdempotencyKeyReused as exc:
        outcome["refused"] = str(exc)
    thread.join()

    assert "source" in outcome.get("refused", "")
    assert ObjectionEvent.objects.count() == 1
