"""The reference client checks its SQLite copy when it opens it and after every sync: a
corrupt, truncated or incomplete copy fails closed with a message saying what to do (exit
status 2 on the command line), never with a traceback and never with "allowed"."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

from client.demur_client import CopyDamaged, ObjectionMirror
from optout.services import objection_record
from tests.optout.test_api import READ, make_key, settle_feed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLIENT = Path(__file__).resolve().parent.parent / "client" / "demur_client.py"
PAGE = 4096  # SQLite's default page size, which the client keeps


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def overwrite_pages(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek(2 * PAGE)
        file.write(os.urandom(size - 3 * PAGE))


def overwrite_header(path: Path) -> None:
    with path.open("r+b") as file:
        file.write(b"\xde\xad" * 50)


def drop_objectors(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TABLE objectors")
    db.commit()
    db.close()


def spoil_sync_time(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 'soon' WHERE key = 'synced_at'")
    db.commit()
    db.close()


DAMAGE = [truncate, overwrite_pages, overwrite_header, drop_objectors, spoil_sync_time]


@pytest.fixture
def synced(live_server, purpose, tmp_path) -> tuple[str, str, Path]:
    """(server, key, a copy synced from it) with 600 objectors: a file of many pages."""
    for n in range(600):
        objection_record(subject_id=f"objector-{n}", source="api")
    _, key = make_key(READ)
    settle_feed()
    path = tmp_path / "objections.sqlite3"
    mirror = ObjectionMirror(live_server.url, key, str(path))
    assert mirror.sync() == 600
    mirror.close()
    assert path.stat().st_size > 8 * PAGE
    return live_server.url, key, path


def run_client(url: str, key: str, path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLIENT), "--url", url, "--db", str(path), *args],
        env={**os.environ, "DEMUR_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@override_settings(DEMUR_API_THROTTLE_RATE="")
def test_a_sound_copy_answers_on_the_command_line(synced):
    url, key, path = synced

    result = run_client(url, key, path, "check", "objector-1", "nobody")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["objector-1 excluded", "nobody allowed"]


@override_settings(DEMUR_API_THROTTLE_RATE="")
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_copy_fails_closed_with_a_message_on_the_command_line(synced, damage):
    url, key, path = synced
    damage(path)

    for command in (["check", "objector-1", "nobody"], ["sync"]):
        result = run_client(url, key, path, *command)

        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "allowed" not in result.stdout
        assert "Traceback" not in result.stderr
        assert "is damaged" in result.stderr and f"Delete {path}" in result.stderr and "sync again" in result.stderr


@override_settings(DEMUR_API_THROTTLE_RATE="")
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_copy_cannot_be_opened(synced, damage):
    url, key, path = synced
    damage(path)

    with pytest.raises(CopyDamaged, match="sync again"):
        ObjectionMirror(url, key, str(path))


@override_settings(DEMUR_API_THROTTLE_RATE="")
@pytest.mark.parametrize("new_events", [0, 1], ids=["idle poll", "events to apply"])
def test_a_copy_damaged_while_open_is_found_by_the_next_sync(synced, new_events):
    url, key, path = synced
    mirror = ObjectionMirror(url, key, str(path))
    assert mirror.allowed(["nobody"]) == ["nobody"]
    for n in range(new_events):
        objection_record(subject_id=f"late-{n}", source="api")
    settle_feed()
    drop_objectors(path)  # by another process, say

    with pytest.raises(CopyDamaged, match="objectors is missing"):
        mirror.sync()

    assert mirror.is_objected("nobody") is True
    assert mirror.allowed(["nobody", "objector-1"]) == []
    with pytest.raises(CopyDamaged):
        mirror.sync()  # and it stays so until the file is rebuilt


@override_settings(DEMUR_API_THROTTLE_RATE="")
def test_a_rebuilt_copy_is_usable_again(synced):
    url, key, path = synced
    truncate(path)
    result = run_client(url, key, path, "check", "nobody")
    assert result.returncode == 2

    path.unlink()  # as the message says
    assert run_client(url, key, path, "sync").returncode == 0

    assert run_client(url, key, path, "check", "nobody").stdout == "nobody allowed\n"
