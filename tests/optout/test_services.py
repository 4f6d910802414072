from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns.models import Campaign, NoticeVersion
from optout.ledger import GENESIS_HASH, event_hash
from optout.models import ObjectionEvent, ObjectionState, OutboxMessage
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
    assert (event.subject_id, event.action, event.source, event.reason) == (
        "user-1",
        "objected",
        "email-link",
        "no thanks",
    )
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
    # The retry is answered as the first request was, though the person withdrew since.
    assert (retry.receipt, retry.objected, retry.received_at) == (first.receipt, True, first.received_at)
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
    assert all(a != b for a, b in zip(actions, actions[1:], strict=False))
    report = ledger_verify()
    assert report.problems == [] and report.events == len(actions)


def _python_hash(event: ObjectionEvent) -> str:
    return event_hash(
        prev_hash=event.prev_hash, uuid=event.uuid, subject_id=event.subject_id, purpose=event.purpose.slug,
        action=event.action, source=event.source, received_at=event.received_at, effective_at=event.effective_at,
        recorded_at=event.recorded_at, receipt_code=event.receipt_code, email=event.email, reason=event.reason,
        campaign_id=event.campaign_id, notice_version_id=event.notice_version_id, staff_user=event.staff_user,
        idempotency_key=event.idempotency_key,
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_an_objection_with_its_mail_is_one_statement(purpose):
    with CaptureQueriesContext(connection) as queries:
        receipt = objection_record(
            subject_id="one-trip", source="email-link", confirm_to="ana@example.org", confirm_language="de"
        )

    # Without a broker the mail is sent in-process once that statement has committed.
    statements = [q["sql"] for q in queries]
    recording = statements[: next((i for i, sql in enumerate(statements) if "optout_outboxmessage" in sql), None)]
    assert len(recording) == 1 and "demur_objection_append" in recording[0], statements
    event = ObjectionEvent.objects.get()
    assert receipt.created and receipt.receipt == event.receipt and receipt.event_uuid == event.uuid
    assert event.hash == _python_hash(event)
    state = ObjectionState.objects.get()
    assert (state.objected, state.last_event_id, state.head_hash, state.receipt) == (
        True, event.id, event.hash, event.receipt
    )  # fmt: skip
    message = OutboxMessage.objects.get()
    assert (message.kind, message.to, message.language, message.event_id) == (
        "receipt", "ana@example.org", "de", event.id
    )  # fmt: skip


def test_events_written_in_sql_hash_as_python_hashes_them(purpose):
    campaign = Campaign.objects.create(name="Spring notice", purpose=purpose)
    version = NoticeVersion.objects.create(
        campaign=campaign, language="el", content_hash="b" * 64, subject="s", body_html="h", body_text="t"
    )
    awkward = "Nein | 5:zehn\n~ «Ελληνικά» 😀 \\ 0:"
    objection_record(
        subject_id="sql-hash|1", source="email-link", reason=awkward, campaign_id=campaign.id,
        notice_version_id=version.id, email="zoë@example.org", idempotency_key="k:|1",
        received_at=timezone.now() - timedelta(days=3, microseconds=7),
    )  # fmt: skip
    objection_withdraw(subject_id="sql-hash|1", source="staff-entry", staff_user="Łukasz")
    objection_record(subject_id="sql-hash|1", source="in-app", campaign_id=10**9, notice_version_id=10**9)

    events = list(ObjectionEvent.objects.select_related("purpose").order_by("id"))
    assert [e.action for e in events] == ["objected", "withdrawn", "objected"]
    assert all(e.hash == _python_hash(e) for e in events)
    assert events[0].prev_hash == GENESIS_HASH and events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    assert (events[0].campaign_id, events[0].notice_version_id, events[0].reason) == (campaign.id, version.id, awkward)
    # a link to a campaign deleted since is kept without it
    assert (events[2].campaign_id, events[2].notice_version_id) == (None, None)
    assert ObjectionState.objects.get().head_hash == events[2].hash
    assert ledger_verify().problems == []


# A file whose lines PostgreSQL's COPY path clears as they are, and the same with one line
# that only the line-by-line path takes (see optout.imports).
_IMPORT_PLAIN = (
    "subject_id,purpose,received_at,source,email\n"
    "chained,ai-training,{day}T08:00:00Z,import,\n"
    "fresh:1,ai-training,2024-02-29T23:59:59Z,staff-entry,a.b+tag@example.org\n"
    "fresh:1,ai-training,2024-03-01,import,\n"
)
_IMPORT_CAREFUL_LINE = "Ünïcödé 5:x ~,ai-training, 2025-04-14T13:32:00+02:00 ,web-form,o'brien@example.co.uk\n"


@pytest.mark.parametrize("careful", [False, True], ids=["copy", "line-by-line"])
def test_imported_events_hash_as_python_hashes_them(purpose, tmp_path, careful):
    """The import hashes in its own statement with the same demur_event_hash: a first
    event and one chained after an earlier objection and withdrawal both hash as Python
    hashes them."""
    from django.core.management import call_command

    now = timezone.now()
    objection_record(subject_id="chained", source="api", received_at=now - timedelta(days=30))
    objection_withdraw(subject_id="chained", source="api", received_at=now - timedelta(days=20))
    day = (now - timedelta(days=1)).date().isoformat()
    path = tmp_path / "past.csv"
    path.write_text(_IMPORT_PLAIN.format(day=day) + (_IMPORT_CAREFUL_LINE if careful else ""))
    last_before = ObjectionEvent.objects.order_by("-id").values_list("id", flat=True).first()

    call_command("import_objections", str(path))

    imported = list(ObjectionEvent.objects.select_related("purpose").filter(id__gt=last_before).order_by("id"))
    assert len(imported) == (3 if careful else 2)
    assert all(e.hash == _python_hash(e) for e in imported)
    chained = list(ObjectionEvent.objects.filter(subject_id="chained").order_by("id"))
    assert [e.action for e in chained] == ["objected", "withdrawn", "objected"]
    assert chained[2].prev_hash == chained[1].hash
    assert all(e.prev_hash == GENESIS_HASH for e in imported if e.subject_id != "chained")
    assert ledger_verify().problems == []
