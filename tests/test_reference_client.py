"""The reference client for training pipelines (client/demur_client.py) against a live
server while objections are being written, and its fail-closed behaviour."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import pytest
from django.db import connections
from django.test import override_settings

from client.demur_client import DemurUnavailable, ObjectionMirror
from optout.models import ApiClient, ObjectionState
from optout.services import objection_record, objection_withdraw
from tests.optout.test_api import READ, WRITE, make_key, settle_feed

pytestmark = pytest.mark.django_db(transaction=True)


def post_objection(base_url: str, key: str, subject_id: str) -> None:
    request = urllib.request.Request(
        f"{base_url}/api/v1/objections",
        data=json.dumps({"subject_id": subject_id, "source": "in-app"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 201)


@pytest.mark.slow
@override_settings(DEMUR_API_THROTTLE_RATE="")
def test_it_mirrors_every_objection_while_they_are_being_written(live_server, purpose, tmp_path):
    for n in range(300):  # already there: the snapshot carries these
        objection_record(subject_id=f"old-{n}", source="import")
    objection_withdraw(subject_id="old-0", source="api")
    _, read_key = make_key(READ)
    _, write_key = make_key(WRITE, name="platform")
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            k = 0
            while not stop.is_set() or k < 30:
                subject_id = f"new-{n}-{k % 15}"
                post_objection(live_server.url, write_key, subject_id)
                if k % 4 == 3:
                    objection_withdraw(subject_id=subject_id, source="api")
                k += 1
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which fails on it
            errors.append(exc)
        finally:
            connections.close_all()

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    mirror = ObjectionMirror(live_server.url, read_key, str(tmp_path / "objections.sqlite3"), page_limit=25)
    assert mirror.is_objected("anyone") and mirror.allowed(["anyone"]) == []  # never synced: fail closed
    for _ in range(5):  # first a snapshot, then the feed, all while writes go on
        mirror.sync()
        time.sleep(0.05)
    stop.set()
    for thread in writers:
        thread.join()
    settle_feed()
    mirror.sync()

    assert errors == []
    objecting = set(ObjectionState.objects.filter(objected=True).values_list("subject_id", flat=True))
    candidates = [f"old-{n}" for n in range(300)] + [f"new-{n}-{k}" for n in range(4) for k in range(15)]
    assert {s for s in candidates if mirror.is_objected(s)} == objecting
    assert mirror.allowed(candidates) == [s for s in candidates if s not in objecting]
    assert "old-0" in mirror.allowed(["old-0"]) and mirror.objector_count() == len(objecting)


@override_settings(DEMUR_API_THROTTLE_RATE="")
def test_it_snapshots_once_then_follows_the_feed(live_server, purpose, tmp_path):
    objection_record(subject_id="a", source="api")
    objection_record(subject_id="b", source="api")
    _, key = make_key(READ)
    settle_feed()
    mirror = ObjectionMirror(live_server.url, key, str(tmp_path / "o.sqlite3"), page_limit=2)

    assert mirror.sync() == 2  # the snapshot
    objection_withdraw(subject_id="a", source="api")
    objection_record(subject_id="c", source="gpc")
    settle_feed()
    mirror.sync()
    assert mirror.sync() == 0  # an idle poll

    assert mirror.allowed(["a", "b", "c", "d"]) == ["a", "d"]
    assert mirror.objector_count() == 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_api_means_nobody_may_be_used(purpose, tmp_path):
    mirror = ObjectionMirror(f"http://127.0.0.1:{_closed_port()}", "key", str(tmp_path / "o.sqlite3"), timeout=2)

    with pytest.raises(DemurUnavailable):
        mirror.sync()
    assert mirror.is_objected("someone") is True
    assert mirror.allowed(["someone", "someone-else"]) == []


@override_settings(DEMUR_API_THROTTLE_RATE="")
def test_a_copy_goes_closed_when_syncing_fails_for_longer_than_allowed(live_server, purpose, tmp_path):
    objection_record(subject_id="objector", source="api")
    api_client, key = make_key(READ)
    mirror = ObjectionMirror(live_server.url, key, str(tmp_path / "o.sqlite3"), max_staleness=1.0)
    mirror.sync()
    assert mirror.allowed(["objector", "other"]) == ["other"]

    ApiClient.objects.filter(pk=api_client.pk).update(revoked=True)
    with pytest.raises(DemurUnavailable):
        mirror.sync()
    time.sleep(1.1)
    assert mirror.allowed(["objector", "other"]) == []
    assert mirror.is_objected("other") is True


def _event(subject_id: str, action: str, seq: int) -> dict:
    return {"subject_id": subject_id, "action": action, "effective_at": "2026-01-01T00:00:00.000000Z", "seq": seq}


def test_an_event_older_than_what_the_copy_holds_changes_nothing(tmp_path):
    mirror = ObjectionMirror("http://127.0.0.1:9", "key", str(tmp_path / "o.sqlite3"))
    mirror._apply([_event("p", "objected", 1), _event("p", "withdrawn", 2), _event("p", "objected", 3)], "c1", None, "")
    assert mirror.objector_count() == 1

    # Delivered again, or out of order: an older withdrawal does not undo the objection.
    mirror._apply([_event("p", "withdrawn", 2), _event("q", "objected", 1)], "c2", None, "c1")
    assert sorted(row[0] for row in mirror.db.execute("SELECT subject_id FROM objectors")) == ["p", "q"]
    mirror._apply([_event("p", "withdrawn", 4)], "c3", None, "c2")
    assert [row[0] for row in mirror.db.execute("SELECT subject_id FROM objectors")] == ["q"]
    assert dict(mirror.db.execute("SELECT subject_id, seq FROM seen")) == {"p": 4, "q": 1}


def test_a_copy_made_before_seq_is_upgraded_when_opened(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE objectors (subject_id TEXT PRIMARY KEY, effective_at TEXT) WITHOUT ROWID;"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;"
        "INSERT INTO objectors VALUES ('p', '2026-01-01T00:00:00.000000Z');"
        "INSERT INTO meta VALUES ('cursor', 'c'), ('purpose', 'ai-training');"
    )
    old.commit()
    old.close()

    mirror = ObjectionMirror("http://127.0.0.1:9", "key", str(path))
    assert mirror.damage is None and mirror.objector_count() == 1
    mirror._apply([_event("p", "withdrawn", 2)], "c2", None, "c")
    assert mirror.objector_count() == 0
