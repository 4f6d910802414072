"""Migration optout/0012 on a ledger written by the release before it: existing events
get their place in the chain and a feed position that keeps each chain in order, even
where a later event's transaction id is the lower one; the states follow; the ledger
verifies; a cursor of that release still reads."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from optout.models import ObjectionEvent, ObjectionState
from optout.selectors import Cursor, feed_page, ledger_verify
from optout.services import objection_record

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BEFORE = [("optout", "0011_sql_files")]


def _migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def _latest() -> list[tuple[str, str]]:
    executor = MigrationExecutor(connection)
    return [key for key in executor.loader.graph.leaf_nodes() if key[0] == "optout"]


def _old_event(cursor, subject_id: str, action: str, xid: int, prev_hash: str, hash_: str) -> int:
    """An event as the release before wrote it: no seq, no feed_key, its own xid."""
    cursor.execute(
        "INSERT INTO optout_objectionevent (uuid, xid, subject_id, email, purpose_id, action, source, reason,"
        " staff_user, received_at, effective_at, recorded_at, receipt_code, prev_hash, hash)"
        " SELECT gen_random_uuid(), %s, %s, '', id, %s, 'api', '', '', now(), now(), now(), 1, %s, %s"
        " FROM optout_purpose WHERE slug = 'ai-training' RETURNING id",
        [xid, subject_id, action, prev_hash, hash_],
    )
    return cursor.fetchone()[0]


def test_existing_events_get_chain_places_and_positions_in_chain_order(purpose):
    _migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            # Forged xids through a trigger-free path, as the old feed's inversion left them:
            # "late" has its second event at a lower xid than its first.
            cursor.execute("ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_stamp_xid")
            first = _old_event(cursor, "late", "objected", 500, "0" * 64, "a" * 64)
            second = _old_event(cursor, "late", "withdrawn", 400, "a" * 64, "b" * 64)
            other = _old_event(cursor, "other", "objected", 450, "0" * 64, "c" * 64)
            cursor.execute("ALTER TABLE optout_objectionevent ENABLE TRIGGER demur_ledger_stamp_xid")
            cursor.execute(
                "INSERT INTO optout_objectionstate (subject_id, purpose_id, objected, source, received_at,"
                " effective_at, receipt, last_event_id, head_hash, updated_at)"
                " SELECT e.subject_id, e.purpose_id, e.action = 'objected', e.source, e.received_at, e.effective_at,"
                " demur_receipt(e.id, e.receipt_code), e.id, e.hash, now()"
                " FROM optout_objectionevent e WHERE e.id IN (%s, %s)",
                [second, other],
            )
    finally:
        _migrate(_latest())

    places = dict(ObjectionEvent.objects.values_list("id", "seq"))
    keys = dict(ObjectionEvent.objects.values_list("id", "feed_key"))
    assert places == {first: 1, second: 2, other: 1}
    assert keys == {first: 500, second: 500, other: 450}  # raised to its predecessor's, never below
    state = ObjectionState.objects.get(subject_id="late")
    assert (state.seq, state.feed_key) == (2, 500)

    # The feed delivers the chain in its order; a cursor of the old release (an xid) reads.
    rows = feed_page(cursor=Cursor(), limit=10).rows
    assert [(row.subject_id, row.seq) for row in rows] == [("other", 1), ("late", 1), ("late", 2)]
    assert [row.subject_id for row in feed_page(cursor=Cursor(450, other), limit=10).rows] == ["late", "late"]
    # New writes continue the chain above everything held.
    objection_record(subject_id="late", source="api")
    newest = ObjectionEvent.objects.latest("id")
    assert newest.seq == 3 and newest.feed_key > 500
    # Only the hand-written stand-in hashes are wrong; places, positions and states agree.
    reasons = {problem.reason for problem in ledger_verify().problems}
    assert reasons == {"content does not match its hash"}
