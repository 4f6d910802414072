"""The request id travels from a web request into a real Celery worker: an objection made
on the opt-out page enqueues its receipt mail through the outbox, and the worker's JSON
log line for that task carries the request's id (and no email address)."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest

from optout.links import LinkClaims, objection_url
from tests.campaigns.test_reliability import Worker, broker, sink  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REQUEST_ID = "req-h8-worker-7"


def _task_lines(log) -> list[dict]:
    lines = [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [line for line in lines if "optout.outbox_send" in line.get("message", "")]


def test_the_worker_logs_the_id_of_the_request_that_enqueued_its_task(client, purpose, broker, sink, tmp_path):  # noqa: F811
    worker = Worker("logs", sink, tmp_path / "worker.log")
    worker.start()
    try:
        url = objection_url(LinkClaims("rid-1", purpose.slug, "en", email="ana.lopez@example.org"))
        response = client.post(urlsplit(url).path, {"object": "yes"}, HTTP_X_REQUEST_ID=REQUEST_ID)
        assert response.status_code == 200 and response["X-Request-ID"] == REQUEST_ID

        deadline = time.monotonic() + 60
        while not any("succeeded" in line["message"] for line in _task_lines(worker.log)):
            assert worker.process.poll() is None, worker.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, worker.log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
    finally:
        worker.stop()

    assert sink.counts == {"ana.lopez@example.org": 1}
    done = [line for line in _task_lines(worker.log) if "succeeded" in line["message"]]
    assert [line["request_id"] for line in done] == [REQUEST_ID]
    assert "ana.lopez@example.org" not in worker.log.read_text(errors="replace")
