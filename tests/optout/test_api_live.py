"""The change feed never skips, proven through HTTP: eight writers commit out of order
while a poller follows cursors against a live server on PostgreSQL."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request

import pytest
from django.db import connections, transaction
from django.test import override_settings

from optout.models import ObjectionEvent
from optout.services import objection_record, objection_withdraw
from tests.optout.test_api import READ, make_key, settle_feed


def get_json(url: str, key: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@override_settings(DEMUR_API_THROTTLE_RATE="")
def test_a_poller_over_http_sees_every_event_once_in_cursor_order_under_8_writers(live_server, purpose):
    _, key = make_key(READ)
    writers, per_writer = 8, 40
    writers_done = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def write(n: int) -> None:
        rng = random.Random(n)
        try:
            for k in range(per_writer):
                with transaction.atomic():
                    objection_record(subject_id=f"w{n}-{k % 10}", source="api")
                    if k >= 10:
                        objection_withdraw(subject_id=f"w{n}-{k % 10}", source="api")
                    time.sleep(rng.random() * 0.004)  # commit a little after the insert took its id
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which fails on it
            errors.append(exc)
        finally:
            connections.close_all()

    def poll() -> None:
        cursor = ""
        try:
            while True:
                done = writers_done.is_set()
                page = get_json(f"{live_server.url}/api/v1/objections/changes?limit=50&cursor={cursor}", key)
                seen.extend(event["id"] for event in page["events"])
                cursor = page["next_cursor"]
                if done and not page["events"]:
                    return
                if not page["events"]:
                    time.sleep(0.002)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which fails on it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    poller = threading.Thread(target=poll)
    poller.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    settle_feed()  # every committed event is now below the horizon
    writers_done.set()
    poller.join(120)

    assert errors == []
    positions = {str(u): (x, i) for u, x, i in ObjectionEvent.objects.values_list("uuid", "xid", "id")}
    assert len(positions) > writers * per_writer  # objections and withdrawals from every writer
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert set(seen) == set(positions), f"{len(set(positions) - set(seen))} events were skipped"
    order = [positions[u] for u in seen]
    assert order == sorted(order), "events were not delivered in cursor order"
