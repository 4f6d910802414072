"""After a restore into a fresh PostgreSQL cluster (initdb, pg_dump/pg_restore: its
transaction counter starts again near zero), the change feed goes on: a client whose
cursor the backup covers keeps receiving, new objections reach it; a client that read
past the backup is told to resynchronise and does so by itself; cursors Demur never
issued are refused with a reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from django.test import override_settings

from client.demur_client import ObjectionMirror
from optout.selectors import Cursor
from optout.services import ledger_checkpoint, objection_record, objection_withdraw
from scripts.backup_restore_check import restore_fresh
from tests import web_server
from tests.optout.test_api import READ, WRITE, make_key, settle_feed
from tests.test_reference_client import post_objection

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _source_url() -> str:
    params = connection.get_connection_params()
    return psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in {"dbname", "user", "host", "port"}}
    )


@pytest.fixture
def restored(tmp_path):
    """restore() dumps the test database and restores it into a new cluster made with
    initdb (scripts/backup_restore_check.py); yields that function, which returns the
    restored database's URL."""
    root = Path(tempfile.mkdtemp(prefix="demur-feed-restore-"))
    clusters = []

    def restore() -> str:
        cluster, target, _major = restore_fresh(_source_url(), tmp_path / "ledger.dump", root)
        clusters.append(cluster)
        return target

    yield restore
    for cluster in clusters:
        cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def _get(url: str, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _check(base: str, key: str, subject_ids: list[str]) -> dict[str, bool]:
    request = urllib.request.Request(
        f"{base}/api/v1/objections/check",
        data=json.dumps({"subject_ids": subject_ids}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return {item["subject_id"]: item["objected"] for item in json.loads(response.read())["results"]}


@override_settings(DEMUR_API_THROTTLE_RATE="")
def test_the_feed_goes_on_after_a_restore_into_a_fresh_cluster(live_server, purpose, tmp_path, restored):
    _, read_key = make_key(READ)
    _, write_key = make_key(WRITE, name="platform")
    for n in range(40):
        objection_record(subject_id=f"r-{n}", source="import")
    for n in range(0, 40, 5):
        objection_withdraw(subject_id=f"r-{n}", source="api")
    settle_feed()
    # Client A synced before the last checkpoint, which the backup holds.
    early = ObjectionMirror(live_server.url, read_key, str(tmp_path / "early.sqlite3"), page_limit=7)
    early.sync()
    objection_record(subject_id="r-late", source="api")
    settle_feed()
    early.sync()
    ledger_checkpoint()
    # Client B also read what came after the checkpoint: the backup may not hold that.
    objection_record(subject_id="r-after-checkpoint", source="api")
    objection_withdraw(subject_id="r-1", source="api")
    settle_feed()
    past = ObjectionMirror(live_server.url, read_key, str(tmp_path / "past.sqlite3"))
    past.sync()
    past_cursor = past._meta("cursor")
    source_epoch = Cursor.decode(past_cursor).epoch

    target = restored()
    with web_server.gunicorn(target, tmp_path / "restored.log") as port:
        base = f"http://127.0.0.1:{port}"
        with psycopg.connect(target) as conn:
            stored = conn.execute("SELECT max(xid) FROM optout_objectionevent").fetchone()[0]
            counter = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        assert counter < stored, "the fresh cluster's transaction ids start below the ledger's"

        # New objections in the restored ledger, through its API.
        for n in range(5):
            post_objection(base, write_key, f"after-restore-{n}")
        early.base_url = past.base_url = base

        applied = early.sync()
        assert applied >= 5 + 2  # what followed its cursor in the backup, and the new ones
        with psycopg.connect(target) as conn:
            epochs = conn.execute("SELECT epoch, base FROM optout_ledgerepoch ORDER BY id").fetchall()
        assert len(epochs) == 2 and epochs[0][0] == source_epoch and epochs[1][1] > 0

        # B is told to start again, and does: its copy is rebuilt from the export.
        status, body = _get(f"{base}/api/v1/objections/changes?cursor={past_cursor}", read_key)
        assert status == 410 and body["error"]["code"] == "resync_required"
        past.sync()
        assert Cursor.decode(past._meta("cursor")).epoch == epochs[1][0]

        subjects = [f"r-{n}" for n in range(40)] + ["r-late", "r-after-checkpoint"]
        subjects += [f"after-restore-{n}" for n in range(5)]
        truth = _check(base, read_key, subjects)
        assert all(truth[f"after-restore-{n}"] for n in range(5))
        assert {s: early.is_objected(s) for s in subjects} == truth
        assert {s: past.is_objected(s) for s in subjects} == truth

        # What Demur never issued is refused with a reason, never answered as an empty page.
        current = Cursor.decode(past._meta("cursor"))
        future = Cursor(current.key + 10**9, 0, "", current.ledger, current.epoch).encode()
        status, body = _get(f"{base}/api/v1/objections/changes?cursor={future}", read_key)
        assert status == 400 and body["error"]["code"] == "bad_cursor" and "ahead" in body["error"]["message"]
        foreign = Cursor(1, 1, "", "f" * 32, current.epoch).encode()
        status, body = _get(f"{base}/api/v1/objections/changes?cursor={foreign}", read_key)
        assert status == 400 and "another ledger" in body["error"]["message"]

    # The restored ledger verifies.
    result = subprocess.run(
        [sys.executable, "manage.py", "verify_ledger"],
        cwd=web_server.ROOT,
        env={**os.environ, "DATABASE_URL": target, "DJANGO_SETTINGS_MODULE": "config.settings_test"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
