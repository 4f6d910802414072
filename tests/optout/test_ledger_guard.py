"""The ledger is append-only inside PostgreSQL, and verify_ledger finds tampering."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

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
    if connection.vendor == "postgresql":
        # Settle the deferred foreign-key checks of the test's open transaction, which
        # would otherwise block the ALTER TABLE and TRUNCATE statements below.
        _sql("SET CONSTRAINTS ALL IMMEDIATE")
    return list(ObjectionEvent.objects.order_by("id"))


@pytest.mark.postgres
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


@pytest.mark.postgres
def test_without_the_trigger_the_same_update_goes_through(ledger):
    """The control: it is the trigger, not something else, that stops the update above."""
    _sql("ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_update_delete")
    _sql("UPDATE optout_objectionevent SET action = 'withdrawn' WHERE subject_id = 'bob'")

    assert ObjectionEvent.objects.get(subject_id="bob").action == "withdrawn"


@pytest.mark.postgres
def test_every_event_is_stamped_with_its_transaction_id(ledger):
    assert all(event.xid for event in ledger)
    assert ledger[0].xid < ledger[-1].xid or ledger[0].xid == ledger[-1].xid  # one test transaction


def test_verify_ledger_passes_an_intact_ledger(ledger, capsys):
    call_command("verify_ledger")

    assert "Ledger intact: 4 events in 3 chains." in capsys.readouterr().out


@pytest.mark.postgres
def test_verify_ledger_names_the_first_tampered_event(ledger):
    tampered = ObjectionEvent.objects.get(subject_id="bob")
    _sql("ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_update_delete")
    _sql("UPDATE optout_objectionevent SET subject_id = 'mallory' WHERE id = %s", [tampered.id])
    _sql("ALTER TABLE optout_objectionevent ENABLE TRIGGER demur_ledger_no_update_delete")

    with pytest.raises(CommandError) as failure:
        call_command("verify_ledger")

    assert f"the first is event #{tampered.id} (receipt {tampered.receipt})" in str(failure.value)


@pytest.mark.postgres
def test_verify_ledger_finds_a_removed_event(ledger):
    alice_first = ledger[0]
    alice_second = ObjectionEvent.objects.get(subject_id="alice", action="withdrawn")
    _sql("ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_update_delete")
    _sql("UPDATE optout_objectionstate SET last_event_id = NULL")
    _sql("DELETE FROM optout_objectionevent WHERE id = %s", [alice_first.id])

    with pytest.raises(CommandError) as failure:
        call_command("verify_ledger")

    assert f"event #{alice_second.id}" in str(failure.value)
    assert "link to the previous event is broken" in str(failure.value)


def test_verify_ledger_finds_a_state_that_lies(ledger):
    ObjectionState.objects.filter(subject_id="bob").update(objected=False)

    with pytest.raises(CommandError, match="the state of subject bob"):
        call_command("verify_ledger")
