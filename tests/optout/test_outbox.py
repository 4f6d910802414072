"""The confirmation mail goes through the outbox: written with the ledger event, sent by
a Celery task, swept up when the broker was down, and never sent twice."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.core import mail
from django.db import connection
from django.test import Client

from config.celery import app as celery_app
from core.request_id import request_id_var
from optout.links import LinkClaims, objection_url
from optout.models import ObjectionEvent, OutboxMessage
from optout.outbox import LINGER, outbox_enqueue, outbox_flush, outbox_send, outbox_sweep

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
WORKER_BROKER = os.environ.get("DEMUR_TEST_BROKER_URL", "redis://127.0.0.1:6379/8")


def _use_broker(url: str | None) -> None:
    """Point the Celery app at `url` (None: run tasks eagerly, as with no broker)."""
    celery_app.conf.task_always_eager = url is None
    celery_app.conf.broker_url = url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_publishing() -> None:
    assert outbox_flush(timeout=30)


@pytest.fixture
def broker_down():
    saved = (celery_app.conf.task_always_eager, celery_app.conf.broker_url)
    _use_broker(f"redis://127.0.0.1:{_closed_port()}/0")
    yield
    _wait_for_publishing()
    celery_app.conf.task_always_eager, celery_app.conf.broker_url = saved
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def _object(language: str = "en") -> object:
    claims = LinkClaims(subject_id="user-42", purpose="ai-training", language=language, email="ana@example.com")
    url = objection_url(claims).removeprefix(settings.SITE_URL)
    return Client().post(url, {"object": "yes", "reason": ""})


def test_it_sends_a_mail_once_when_it_is_sent_twice(purpose):
    _object()
    message = OutboxMessage.objects.get()
    assert message.status == "sent" and len(mail.outbox) == 1

    assert outbox_send(message_id=message.id) is False
    assert len(mail.outbox) == 1


def test_it_records_the_objection_and_shows_the_receipt_with_the_broker_down(purpose, broker_down):
    started = time.monotonic()
    response = _object()
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    event = ObjectionEvent.objects.get()
    assert event.receipt in response.content.decode()
    assert elapsed < 2, "the answer must not wait for an unreachable broker"
    _wait_for_publishing()
    message = OutboxMessage.objects.get()
    assert message.status == "pending" and len(mail.outbox) == 0

    _use_broker(None)  # the broker is back (here: tasks run in-process)
    assert outbox_sweep() == [message.id]

    message.refresh_from_db()
    assert message.status == "sent"
    assert len(mail.outbox) == 1 and event.receipt in mail.outbox[0].subject
    assert outbox_sweep() == []


def test_it_sends_a_mail_once_when_workers_race_for_it(purpose, broker_down):
    _object()
    _wait_for_publishing()
    message_id = OutboxMessage.objects.get().id

    def send(_n: int) -> bool:
        try:
            return outbox_send(message_id=message_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(send, range(8)))

    assert results.count(True) == 1
    assert len(mail.outbox) == 1


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.mark.slow
def test_it_sends_the_mail_through_a_real_worker_once_the_broker_is_back(purpose, broker_down, tmp_path):
    if not _redis_up(WORKER_BROKER):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Redis at {WORKER_BROKER} for the outbox worker test")
        pytest.skip(f"needs Redis at {WORKER_BROKER}")
    import redis

    redis.Redis.from_url(WORKER_BROKER).flushdb()

    response = _object(language="pl")
    assert response.status_code == 200
    _wait_for_publishing()
    message = OutboxMessage.objects.get()
    assert message.status == "pending"

    db_url = urlsplit(os.environ["DATABASE_URL"])
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": urlunsplit(db_url._replace(path="/" + connection.settings_dict["NAME"])),
        "CELERY_BROKER_URL": WORKER_BROKER,
        "DEMUR_VAR_DIR": str(tmp_path),
        "EMAIL_URL": "filemail://",
    }
    env.pop("EMAIL_BACKEND", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _use_broker(WORKER_BROKER)  # the broker is back
        assert outbox_sweep() == [message.id]
        _wait_for_publishing()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message.refresh_from_db()
            if message.status == "sent":
                break
            assert worker.poll() is None, worker.stdout.read().decode(errors="replace")
            time.sleep(0.2)
        assert message.status == "sent", f"still {message.status} after 60 s"
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    files = list((tmp_path / "mail").glob("*.log"))
    assert len(files) == 1, output
    sent = files[0].read_text()
    assert ObjectionEvent.objects.get().receipt in sent
    assert len(mail.outbox) == 0  # sent by the worker, not by this process


def test_it_hands_out_again_a_mail_whose_worker_died_mid_send(purpose, broker_down):
    _object()
    _wait_for_publishing()
    message = OutboxMessage.objects.get()
    stuck_since = message.created_at - timedelta(hours=1)
    OutboxMessage.objects.filter(id=message.id).update(status="sending", claimed_at=stuck_since)
    _use_broker(None)

    assert outbox_sweep() == [message.id]

    message.refresh_from_db()
    assert message.status == "sent" and len(mail.outbox) == 1


def test_the_receipt_mail_is_rendered_from_its_event_when_it_is_sent(purpose, broker_down):
    _object(language="de")
    _wait_for_publishing()
    event = ObjectionEvent.objects.get()
    message = OutboxMessage.objects.get()
    assert (message.status, message.event_id, message.kind, message.language) == ("pending", event.id, "receipt", "de")
    _use_broker(None)

    assert outbox_sweep() == [message.id]

    message.refresh_from_db()
    sent = mail.outbox[0]
    assert message.status == "sent" and event.receipt in sent.subject and event.receipt in sent.body
    assert "/de/optout/status/" in sent.body
    # what was sent stays on the row
    assert (message.subject, message.body_text) == (sent.subject, sent.body)


def test_mails_written_close_together_are_published_as_one_task(purpose, broker_down, monkeypatch):
    published = []

    def send_task(name, args, **options):
        assert name == "optout.outbox_send_many"
        published.append(args[0])

    monkeypatch.setattr(celery_app, "send_task", send_task)
    started = time.monotonic()
    for n in range(5):
        token = request_id_var.set(f"req-{n}")
        try:
            outbox_enqueue(message_id=100 + n)
        finally:
            request_id_var.reset(token)
    assert time.monotonic() - started < LINGER / 2, "enqueueing must not wait for the broker"

    _wait_for_publishing()

    assert published == [[(100 + n, f"req-{n}") for n in range(5)]]
