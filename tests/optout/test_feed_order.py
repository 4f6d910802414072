"""The change feed delivers each person's events in the order of their chain, whatever
order the writing transactions took their ids in: 14 writers (8 through HTTP, 6 through
the service) on the same 3 people at a time for 60 s, while a reader follows the feed
and the reference client syncs.

Before feed positions (optout/sql/demur_ledger_epoch.sql) the feed ordered by the
writers' transaction ids: a transaction could take its id, wait for the person's row
lock behind a later one, and land before it in the feed; a hostile test counted 918
such inversions in 90 s, and the client replaying the feed ended up wrong."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import defaultdict

import pytest
from django.db import connections
from django.test import override_settings

from client.demur_client import ObjectionMirror
from optout.models import ObjectionEvent
from optout.selectors import Cursor, feed_page, objection_check
from optout.services import objection_record, objection_withdraw
from tests.optout.test_api import READ, WRITE, make_key, settle_feed
from tests.test_reference_client import post_objection

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECONDS = float(os.environ.get("DEMUR_FEED_ORDER_SECONDS", "60"))
HTTP_WRITERS = 8
SERVICE_WRITERS = 6
SUBJECTS_AT_A_TIME = 3
WINDOW = 1.5  # seconds the same three people are written to


def _subjects(started: float) -> list[str]:
    window = int((time.monotonic() - started) / WINDOW)
    return [f"w{window}-{k}" for k in range(SUBJECTS_AT_A_TIME)]


@override_settings(DEMUR_API_THROTTLE_RATE="")
def test_each_persons_events_come_in_chain_order_under_14_writers(live_server, purpose, tmp_path):
    _, read_key = make_key(READ)
    _, write_key = make_key(WRITE, name="platform")
    started = time.monotonic()
    deadline = started + SECONDS
    errors: list[BaseException] = []

    def http_writer(n: int) -> None:
        rng = random.Random(n)
        try:
            while time.monotonic() < deadline:
                post_objection(live_server.url, write_key, rng.choice(_subjects(started)))
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which fails on it
            errors.append(exc)

    def service_writer(n: int) -> None:
        rng = random.Random(100 + n)
        try:
            while time.monotonic() < deadline:
                subject_id = rng.choice(_subjects(started))
                if rng.random() < 0.6:
                    objection_withdraw(subject_id=subject_id, source="api")
                else:
                    objection_record(subject_id=subject_id, source="api")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    writers = [threading.Thread(target=http_writer, args=(n,)) for n in range(HTTP_WRITERS)]
    writers += [threading.Thread(target=service_writer, args=(n,)) for n in range(SERVICE_WRITERS)]
    for thread in writers:
        thread.start()
    # The feed as a pipeline reads it, page by page while the writes go on, and the
    # reference client syncing its copy at the same time.
    delivered: list = []
    cursor = Cursor()
    mirror = ObjectionMirror(live_server.url, read_key, str(tmp_path / "copy.sqlite3"), page_limit=200)
    while any(thread.is_alive() for thread in writers):
        page = feed_page(cursor=cursor, limit=500)
        delivered += page.rows
        cursor = page.next_cursor
        mirror.sync()
        time.sleep(0.05)
    for thread in writers:
        thread.join()
    settle_feed()
    while (page := feed_page(cursor=cursor, limit=5000)).rows:
        delivered += page.rows
        cursor = page.next_cursor
    mirror.sync()

    assert errors == []
    events = ObjectionEvent.objects.count()
    assert len(delivered) == events > 14 * 20, "each event once, and plenty of them"
    assert len({row.uuid for row in delivered}) == events
    by_subject: dict[str, list[int]] = defaultdict(list)
    for row in delivered:
        by_subject[row.subject_id].append(row.seq)
    inversions = {s: seqs for s, seqs in by_subject.items() if seqs != list(range(1, len(seqs) + 1))}
    assert inversions == {}, f"{len(inversions)} of {len(by_subject)} people's events out of order"
    contended = [s for s, seqs in by_subject.items() if len(seqs) >= 10]
    assert len(contended) > SECONDS / WINDOW, "the writers did share people"
    # Replaying the feed in its order, as a client without seq would, and the reference
    # client's copy both end where the ledger's current state (the check) is.
    replayed = {row.subject_id: row.action == "objected" for row in delivered}
    answer = json.loads(objection_check(purpose="ai-training", subject_ids=sorted(by_subject)).results_json)
    truth = {item["subject_id"]: item["objected"] for item in answer}
    assert replayed == truth
    assert {s: mirror.is_objected(s) for s in by_subject} == truth
    assert 0 < sum(truth.values()) < len(truth)
    # The control: in the order of their transaction ids, as the feed was once paged,
    # the same events do come out of order.
    by_xid: dict[str, list[int]] = defaultdict(list)
    for subject_id, seq in ObjectionEvent.objects.order_by("xid", "id").values_list("subject_id", "seq"):
        by_xid[subject_id].append(seq)
    xid_inversions = sum(seqs != sorted(seqs) for seqs in by_xid.values())
    print(f"{events} events, {len(by_subject)} people; in xid order {xid_inversions} would be out of order")
    assert xid_inversions > 0
