"""The ledger is append-only inside PostgreSQL, and verify_ledger finds tampering."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, IntegrityError, connection, transaction

from optout.models import ObjectionEvent, ObjectionState
from optout.services import objection_record, objection_withdraw

pytestmark = pytest.mark.django_db


def _sql(statement: str, params=()):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.fixture
def ledger(purpose):
    objection_record(subject_id="alice", source="email-link")
    objection_record(subject_id="bob", source="in-app")
    objection_withdraw(subject_id="alice", source="web-form")
    objection_record(subject_id="carol", source="gpc")
    # Settle the deferred foreign-key checks of the test's open transaction, which
    # would otherwise block the ALTER TABLE and TRUNCATE statements below.
    _sql("SET CONSTRAINTS ALL IMMEDIATE")
    return list(ObjectionEvent.objects.order_by("id"))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE optout_objectionevent SET action = 'withdrawn' WHERE subject_id = 'bob'",
        "DELETE FROM optout_objectionevent WHERE subject_id = 'bob'",
        "TRUNCATE optout_objectionevent CASCADE",
    ],
)
def test_postgres_rejects_rewriting_history(ledger, statement):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        _sql(statement)

    assert ObjectionEvent.objects.count() == 4
    assert ObjectionEvent.objects.get(subject_id="bob").action == "objected"


def test_without_the_trigger_the_same_update_goes_through(ledger):
    """The control: it is the trigger, not something else, that stops the update above."""
    _sql("ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_update_delete")
    _sql("UPDATE optout_objectionevent SET action = 'withdrawn' WHERE subject_id = 'bob'")

    assert ObjectionEvent.objects.get(subject_id="bob").action == "withdrawn"


def test_every_event_is_stamped_with_its_transaction_id(ledger):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()::text::bigint")
        (current,) = cursor.fetchone()
    # All written by this test's one transaction, and stamped with its id.
    assert {event.xid for event in ledger} == {current}


@pytest.mark.parametrize("given", ["omitted", "null", "forged"])
def test_a_missing_or_forged_transaction_id_is_replaced_by_the_writers(purpose, given):
    """The feed's horizon is only sound if every row carries its writer's xid, whatever
    the writer sends: the column default fills it in, the trigger corrects anything else."""
    columns = (
        "uuid, subject_id, email, purpose_id, action, source, reason, staff_user, received_at, "
        "effective_at, recorded_at, receipt_code, prev_hash, hash, seq, feed_key"
    )
    values = "gen_random_uuid(), 'raw', '', %s, 'objected', 'api', '', '', now(), now(), now(), 1, '', '', 1, 1"
    params: list = [purpose.id]
    if given != "omitted":
        columns += ", xid"
        values += ", %s"
        params.append(None if given == "null" else 1)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO optout_objectionevent ({columns}) VALUES ({values}) RETURNING xid", params)
        (stored,) = cursor.fetchone()
        cursor.execute("SELECT pg_current_xact_id()::text::bigint")
        (own,) = cursor.fetchone()

    assert stored == own


def test_verify_ledger_passes_an_intact_ledger(ledger, capsys):
    call_command("verify_ledger")

    assert "Ledger intact: 4 events in 3 chains." in capsys.readouterr().out


def test_verify_ledger_names_the_first_tampered_event(ledger):
    tampered = ObjectionEvent.objects.get(subject_id="bob")
    _sql("ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_update_delete")
    _sql("UPDATE optout_objectionevent SET subject_id = 'mallory' WHERE id = %s", [tampered.id])
    _sql("ALTER TABLE optout_objectionevent ENABLE TRIGGER demur_ledger_no_update_delete")

    with pytest.raises(CommandError) as failure:
        call_command("verify_ledger")

    assert f"the first is event #{tampered.id} (receipt {tampered.receipt})" in str(failure.value)


def test_verify_ledger_finds_a_removed_event(ledger):
    alice_first = ledger[0]
    alice_second = ObjectionEvent.objects.get(subject_id="alice", action="withdrawn")
    _sql("ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_update_delete")
    _sql("ALTER TABLE optout_objectionstate DISABLE TRIGGER demur_state_guard_update")
    _sql("UPDATE optout_objectionstate SET last_event_id = NULL")
    _sql("DELETE FROM optout_objectionevent WHERE id = %s", [alice_first.id])

    with pytest.raises(CommandError) as failure:
        call_command("verify_ledger")

    assert f"event #{alice_second.id}" in str(failure.value)
    assert "link to the previous event is broken" in str(failure.value)


def test_verify_ledger_finds_a_state_that_lies(ledger):
    # Past the database's own guard, as someone able to switch triggers off could.
    _sql("ALTER TABLE optout_objectionstate DISABLE TRIGGER demur_state_guard_update")
    ObjectionState.objects.filter(subject_id="bob").update(objected=False)

    with pytest.raises(CommandError, match="the state of subject bob"):
        call_command("verify_ledger")


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE optout_objectionstate SET objected = false WHERE subject_id = 'bob'",
        "UPDATE optout_objectionstate SET effective_at = now() WHERE subject_id = 'bob'",
        "UPDATE optout_objectionstate SET last_event_id = NULL WHERE subject_id = 'bob'",
        # pointed back at alice's objection, before her withdrawal
        "UPDATE optout_objectionstate s SET last_event_id = e.id, objected = true, head_hash = e.hash, seq = e.seq,"
        " feed_key = e.feed_key, receipt = demur_receipt(e.id, e.receipt_code)"
        " FROM optout_objectionevent e WHERE s.subject_id = 'alice' AND e.subject_id = 'alice' AND e.seq = 1",
        "DELETE FROM optout_objectionstate WHERE subject_id = 'bob'",
        "TRUNCATE optout_objectionstate",
    ],
)
def test_the_database_refuses_a_state_the_ledger_does_not_say(ledger, change):
    """The check and the export serve the state table: only the ledger's writers move it."""
    before = list(ObjectionState.objects.order_by("id").values())
    with pytest.raises(IntegrityError), transaction.atomic():
        _sql(change)

    assert list(ObjectionState.objects.order_by("id").values()) == before


@pytest.mark.parametrize(
    "subject_id, email, reason, campaign_id, key",
    [
        ("plain", "", "", None, None),
        ("ünïcödé-😀-𝔘", "ÿ+tag@example.org", "línea\nnueva\t«quoted» \\ back", 7, "k-1"),
        ("4:abc", "~", "~", 0, ""),
        ("x" * 128, "a@b.co", "r" * 2000, 2**40, "key:" + "9" * 150),
    ],
)
def test_the_sql_hash_equals_the_python_hash(subject_id, email, reason, campaign_id, key):
    """The bulk import hashes in SQL, verify_ledger in Python: they must agree exactly."""
    import uuid
    from datetime import UTC, datetime

    from optout.ledger import event_hash

    values = {
        "prev_hash": "ab" * 32,
        "uuid": uuid.uuid4(),
        "subject_id": subject_id,
        "purpose": "ai-training",
        "action": "objected",
        "source": "import",
        "received_at": datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        "effective_at": datetime(2025, 4, 14, 13, 32, tzinfo=UTC),
        "recorded_at": datetime(2026, 11, 29, 0, 0, 0, 1, tzinfo=UTC),
        "receipt_code": 16777215,
        "email": email,
        "reason": reason,
        "campaign_id": campaign_id,
        "notice_version_id": None,
        "staff_user": "",
        "idempotency_key": key,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT demur_event_hash(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            list(values.values()),
        )
        (sql_hash,) = cursor.fetchone()

    assert sql_hash == event_hash(**values)


@pytest.mark.parametrize("event_id, code", [(1, 0), (123456789, 0xABCDEF), (2**36 - 1, 2**24 - 1), (42, 7)])
def test_sql_receipts_equal_python_receipts(event_id, code):
    from optout.ledger import format_receipt, parse_receipt

    with connection.cursor() as cursor:
        cursor.execute("SELECT demur_receipt(%s, %s)", [event_id, code])
        (sql_receipt,) = cursor.fetchone()

    assert sql_receipt == format_receipt(event_id, code)
    assert parse_receipt(sql_receipt) == (event_id, code)


def test_a_receipt_number_is_read_back_as_people_type_it():
    from optout.ledger import format_receipt, parse_receipt

    receipt = format_receipt(98765, 0x123456)
    assert parse_receipt(receipt.lower().replace("-", " ")) == (98765, 0x123456)
    assert parse_receipt(receipt.replace("0", "O").replace("1", "I")) == (98765, 0x123456)
    assert parse_receipt("ABCD-EFGH") is None and parse_receipt("UUUU-UUUU-UUUU") is None


def test_event_ids_are_time_ordered_uuid7s(purpose):
    objection_record(subject_id="first", source="api")
    objection_record(subject_id="second", source="api")

    first, second = ObjectionEvent.objects.order_by("id").values_list("uuid", flat=True)
    assert first.version == 7 and second.version == 7
    assert first.int >> 80 <= second.int >> 80  # millisecond prefix never goes back


def test_imported_events_get_rising_uuid7s(purpose, tmp_path):
    """The bulk import makes its uuids in SQL: version 7, the import's millisecond first,
    and strictly rising in id order, also past the 4,096 a 12-bit counter holds."""
    import uuid

    from django.utils import timezone

    path = tmp_path / "past.csv"
    lines = [f"acct-{n:05d},ai-training,2025-04-14T13:32:00Z,import" for n in range(4200)]
    path.write_text("subject_id,purpose,received_at,source\n" + "\n".join(lines) + "\n")
    started_ms = int(timezone.now().timestamp() * 1000)

    call_command("import_objections", str(path))

    made = list(ObjectionEvent.objects.order_by("id").values_list("uuid", flat=True))
    assert len(made) == 4200
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in made)
    assert [u.int for u in made] == sorted({u.int for u in made})  # strictly rising
    assert started_ms <= made[0].int >> 80 <= int(timezone.now().timestamp() * 1000)


def test_the_periodic_check_raises_an_alarm_in_the_admin_and_in_metrics(ledger, client, django_user_model):
    from django.test import Client

    from optout.models import LedgerCheck
    from optout.tasks import ledger_verify_task

    staff = django_user_model.objects.create_superuser("ops", "ops@example.org", "pw")
    client.force_login(staff)
    assert ledger_verify_task() == 0
    assert 'id="ledger-alarm"' not in client.get("/admin/").content.decode()

    # Past the database's guard, as someone able to switch triggers off could.
    _sql("ALTER TABLE optout_objectionstate DISABLE TRIGGER demur_state_guard_update")
    _sql("UPDATE optout_objectionstate SET objected = false WHERE subject_id = 'bob'")
    _sql("ALTER TABLE optout_objectionstate ENABLE TRIGGER demur_state_guard_update")
    assert ledger_verify_task() == 1

    check = LedgerCheck.objects.latest()
    assert (check.events, check.chains, check.problems) == (4, 3, 1)
    bob = ObjectionState.objects.get(subject_id="bob")
    assert (
        check.first_problem
        == f"a current-state row (receipt {bob.receipt}): current state disagrees with its last event"
    )
    assert check.first_receipt == bob.receipt
    page = client.get("/admin/").content.decode()
    assert 'id="ledger-alarm"' in page and bob.receipt in page and "bob" not in page.split('id="ledger-alarm"')[1][:600]
    scrape = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert "demur_ledger_problems 1.0" in scrape and "demur_ledger_checked_timestamp_seconds" in scrape
