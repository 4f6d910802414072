from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from optout.models import ObjectionEvent, ObjectionState
from optout.selectors import ledger_verify
from optout.services import (
    IdempotencyKeyReused,
    LedgerError,
    UnknownPurpose,
    objection_record,
    objection_withdraw,
)

pytestmark = pytest.mark.django_db


def test_it_records_an_objection_with_a_receipt_and_a_state(purpose):
    receipt = objection_record(subject_id="user-1", source="email-link", reason="no thanks")

    assert receipt.created and receipt.objected
    assert len(receipt.receipt) == 14
    event = ObjectionEvent.objects.get()
    assert (event.subject_id, event.action, event.source, event.reason) == ("user-1", "objected", "email-link", "no thanks")
    assert event.receipt == receipt.receipt
    state = ObjectionState.objects.get(subject_id="user-1")
    assert state.objected and state.last_event == event and state.head_hash == event.hash


def test_objecting_twice_gives_one_event_and_the_same_receipt(purpose):
    first = objection_record(subject_id="user-1", source="email-link")
    second = objection_record(subject_id="user-1", source="in-app")

    assert second.receipt == first.receipt
    assert not second.created and second.objected
    assert ObjectionEvent.objects.count() == 1


def test_withdrawal_then_new_objection_appends_chained_events(purpose):
    objection_record(subject_id="user-1", source="web-form")
    withdrawn = objection_withdraw(subject_id="user-1", source="web-form")
    again = objection_record(subject_id="user-1", source="web-form")

    assert not withdrawn.objected and again.objected and again.receipt != withdrawn.receipt
    events = list(ObjectionEvent.objects.order_by("id"))
    assert [e.action for e in events] == ["objected", "withdrawn", "objected"]
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    assert ledger_verify().problems == []


def test_withdrawing_without_an_objection_writes_nothing(purpose):
    receipt = objection_withdraw(subject_id="nobody", source="web-form")

    assert not receipt.created and not receipt.objected
    assert not ObjectionEvent.objects.exists()


def test_imported_dates_are_kept(purpose):
    received = timezone.now() - timedelta(days=400)
    receipt = objection_record(subject_id="user-1", source="import", received_at=received)

    assert receipt.received_at == received == receipt.effective_at


def test_an_idempotency_key_answers_a_retry_and_refuses_reuse(purpose):
    first = objection_record(subject_id="user-1", source="api", idempotency_key="k-1")
    objection_withdraw(subject_id="user-1", source="api")
    retry = objection_record(subject_id="user-1", source="api", idempotency_key="k-1")

    assert not retry.created
    assert ObjectionEvent.objects.filter(action="objected").count() == 1
    assert first.created
    with pytest.raises(IdempotencyKeyReused):
        objection_record(subject_id="user-2", source="api", idempotency_key="k-1")


def test_bad_requests_are_refused_and_change_nothing(purpose):
    with pytest.raises(UnknownPurpose):
        objection_record(subject_id="user-1", source="api", purpose="advertising")
    with pytest.raises(LedgerError):
        objection_record(subject_id="user-1", source="carrier-pigeon")
    with pytest.raises(LedgerError):
        objection_record(subject_id="", source="api")

    assert not ObjectionEvent.objects.exists() and not ObjectionState.objects.exists()


def test_a_failed_caller_transaction_leaves_no_trace(purpose):
    with pytest.raises(RuntimeError), transaction.atomic():
        objection_record(subject_id="user-1", source="api")
        raise RuntimeError("the caller failed after recording")

    assert not ObjectionEvent.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_for_one_subject_write_one_event(purpose):
    barrier = threading.Barrier(8)
    receipts, errors = [], []

    def object_once():
        try:
            barrier.wait()
            receipts.append(objection_record(subject_id="same-person", source="in-app").receipt)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=object_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(receipts)) == 1
    assert ObjectionEvent.objects.filter(subject_id="same-person").count() == 1
    assert connection.vendor == "postgresql"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_objections_and_withdrawals_keep_the_chain_whole(purpose):
    barrier = threading.Barrier(6)
    errors = []

    def flip(n):
        try:
            barrier.wait()
            for _ in range(15):
                if n % 2:
                    objection_record(subject_id="flipper", source="api")
                else:
                    objection_withdraw(subject_id="flipper", source="api")
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=flip, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    actions = list(ObjectionEvent.objects.filter(subject_id="flipper").order_by("id").values_list("action", flat=True))
    # Every event changes the state: the actions strictly alternate.
    assert all(a != b for a, b in zip(actions, actions[1:]))
    report = ledger_verify()
    assert report.problems == [] and report.events == len(actions)
