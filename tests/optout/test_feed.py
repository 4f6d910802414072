"""The change feed never skips (DESIGN invariant 3)."""

from __future__ import annotations

import base64
import random
import threading
import time

import pytest
from django.db import connections, transaction

from optout.models import ObjectionEvent
from optout.selectors import BadCursor, Cursor, feed_horizon, feed_page
from optout.services import objection_record, objection_withdraw

pytestmark = pytest.mark.django_db


def naive_feed_page(*, cursor: Cursor, limit: int):
    """What the feed must not be: `WHERE id > cursor`. Kept here to prove the tests can tell."""
    rows = list(ObjectionEvent.objects.filter(id__gt=cursor.id).order_by("id").values_list("uuid", "id")[:limit])
    next_cursor = Cursor(0, rows[-1][1]) if rows else cursor
    return [uuid for uuid, _ in rows], next_cursor


def real_feed_page(*, cursor: Cursor, limit: int):
    page = feed_page(cursor=cursor, limit=limit)
    return [row.uuid for row in page.rows], page.next_cursor


def wait_for_horizon() -> None:
    """Until every event now in the table is below the feed's horizon (see drain)."""
    last_key = max(ObjectionEvent.objects.values_list("feed_key", flat=True), default=0) or 0
    deadline = time.monotonic() + 30
    while feed_horizon().key <= last_key:
        assert time.monotonic() < deadline, "the feed's horizon did not pass the last event within 30 s"
        time.sleep(0.01)


def drain(read_page, cursor: Cursor, seen: list) -> Cursor:
    """Read until the feed's horizon has passed every event now in the table.

    The horizon is cluster-wide: an unrelated open transaction (another test database on
    the same server) may hold it back for a moment; the feed then waits, never skips."""
    last_key = max(ObjectionEvent.objects.values_list("feed_key", flat=True), default=0) or 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        passed = feed_horizon().key > last_key
        page, cursor = read_page(cursor=cursor, limit=100)
        seen.extend(page)
        if passed and not page:
            return cursor
        if not page:
            time.sleep(0.01)
    raise AssertionError("the feed's horizon did not pass the last event within 30 s")


def test_the_cursor_round_trips_and_rejects_garbage():
    assert Cursor.decode(Cursor(123, 456).encode()) == Cursor(123, 456)
    assert Cursor.decode(None) == Cursor() == Cursor.decode("")
    assert Cursor.decode(Cursor(123, 456, "ads").encode()) == Cursor(123, 456, "ads")
    issued = Cursor(123, 456, "", "a" * 32, "b" * 32)
    assert Cursor.decode(issued.encode()) == issued
    assert Cursor.decode(Cursor(123, 456, "ads", "a" * 32, "b" * 32).encode()).scope == "ads"
    noncanonical = [
        "1. 1.+2",
        "1.1_0.2",
        "1.1.9223372036854775808",
        "2..1.2",
        "2.a.b.1.2",
        "3.1.2",
        f"3.{'a' * 32}.{'b' * 31}..1.2",
    ]
    garbage = ["%%%", "bm9wZQ", Cursor(1, 2).encode()[:-2] + "!!", "MS4tMS4y"]
    for text in garbage + [base64.urlsafe_b64encode(raw.encode()).decode() for raw in noncanonical]:
        with pytest.raises(BadCursor):
            Cursor.decode(text)


# On PostgreSQL the feed shows only committed transactions: these tests commit.
@pytest.mark.django_db(transaction=True)
def test_it_pages_through_events_in_order(purpose):
    for n in range(5):
        objection_record(subject_id=f"s{n}", source="api")
    objection_withdraw(subject_id="s0", source="api")
    wait_for_horizon()

    first = feed_page(cursor=Cursor(), limit=4)
    second = feed_page(cursor=first.next_cursor, limit=4)
    idle = feed_page(cursor=second.next_cursor, limit=4)

    assert first.has_more and not second.has_more and idle.rows == []
    seen = [(r.subject_id, r.action) for r in first.rows + second.rows]
    assert seen == [
        ("s0", "objected"),
        ("s1", "objected"),
        ("s2", "objected"),
        ("s3", "objected"),
        ("s4", "objected"),
        ("s0", "withdrawn"),
    ]
    assert idle.next_cursor == second.next_cursor


@pytest.mark.django_db(transaction=True)
def test_the_purpose_filter_leaves_other_purposes_out(purpose):
    from optout.models import Purpose

    Purpose.objects.create(slug="ads", name="ads")
    objection_record(subject_id="a", source="api")
    objection_record(subject_id="b", source="api", purpose="ads")
    wait_for_horizon()

    rows = feed_page(cursor=Cursor(), limit=10, purpose="ads").rows
    assert [(r.subject_id, r.purpose) for r in rows] == [("b", "ads")]


@pytest.mark.django_db(transaction=True)
def test_a_cursor_from_one_purposes_feed_is_refused_by_the_others(purpose):
    """Its page ended at that purpose's last event: another feed would skip what lies before."""
    from optout.models import Purpose

    Purpose.objects.create(slug="ads", name="ads")
    objection_record(subject_id="ad", source="api", purpose="ads")
    objection_record(subject_id="ai", source="api")
    wait_for_horizon()

    ai_page = feed_page(cursor=Cursor(), limit=10, purpose="ai-training")
    assert ai_page.next_cursor.scope == "ai-training"
    for other in ("ads", None):
        with pytest.raises(BadCursor):
            feed_page(cursor=ai_page.next_cursor, limit=10, purpose=other)
    assert feed_page(cursor=ai_page.next_cursor, limit=10, purpose="ai-training").rows == []

    # The whole feed's cursor, and a horizon, are good for any purpose's feed.
    everything = feed_page(cursor=Cursor(), limit=1)
    assert everything.next_cursor.scope == ""
    assert [r.subject_id for r in feed_page(cursor=everything.next_cursor, limit=10, purpose="ads").rows] == []
    assert [r.subject_id for r in feed_page(cursor=everything.next_cursor, limit=10, purpose="ai-training").rows] == [
        "ai"
    ]


def _late_commit_scenario(read_page):
    """Transaction A takes an id first but commits after B. A reader polling between
    the two commits must still deliver A's event later."""
    a_inserted, release_a = threading.Event(), threading.Event()
    errors = []

    def slow_writer():
        try:
            with transaction.atomic():
                objection_record(subject_id="late", source="api")
                a_inserted.set()
                release_a.wait(10)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert a_inserted.wait(10)
    objection_record(subject_id="early", source="api")  # gets a higher id, commits first

    seen, cursor = [], Cursor()
    page, cursor = read_page(cursor=cursor, limit=100)
    seen += page
    release_a.set()
    writer.join()
    drain(read_page, cursor, seen)
    assert errors == []
    return seen


@pytest.mark.django_db(transaction=True)
def test_an_event_that_commits_late_is_not_skipped(purpose):
    seen = _late_commit_scenario(real_feed_page)

    assert sorted(map(str, seen)) == sorted(str(u) for u in ObjectionEvent.objects.values_list("uuid", flat=True))
    assert len(seen) == 2


@pytest.mark.django_db(transaction=True)
def test_a_naive_id_cursor_does_skip_it(purpose):
    """The control for the test above: the same scenario loses an event with `id > cursor`."""
    seen = _late_commit_scenario(naive_feed_page)

    assert len(seen) == 1
    assert ObjectionEvent.objects.count() == 2


def _run_writers_and_poller(read_page, *, writers=8, per_writer=40):
    stop = threading.Event()
    seen: list = []
    errors: list = []

    def write(n):
        rng = random.Random(n)
        try:
            for k in range(per_writer):
                with transaction.atomic():
                    objection_record(subject_id=f"w{n}-{k % 10}", source="api")
                    if k >= 10:
                        objection_withdraw(subject_id=f"w{n}-{k % 10}", source="api")
                    time.sleep(rng.random() * 0.004)  # commit a little later than the insert
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def poll():
        cursor = Cursor()
        try:
            while not stop.is_set():
                page, cursor = read_page(cursor=cursor, limit=50)
                seen.extend(page)
                if not page:
                    time.sleep(0.001)
            drain(read_page, cursor, seen)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    poller = threading.Thread(target=poll)
    poller.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    poller.join(60)
    assert errors == []
    return seen


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_poller_sees_every_event_once_in_cursor_order_under_8_writers(purpose):
    seen = _run_writers_and_poller(real_feed_page)

    committed = dict(ObjectionEvent.objects.values_list("uuid", "feed_key"))
    positions = dict(((u, (k, i)) for u, k, i in ObjectionEvent.objects.values_list("uuid", "feed_key", "id")))
    assert len(committed) > 8 * 40  # objections and withdrawals from every writer
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert set(seen) == set(committed), f"{len(set(committed) - set(seen))} events were skipped"
    order = [positions[u] for u in seen]
    assert order == sorted(order), "events were not delivered in cursor order"
