"""Health, readiness, metrics, the feed-stall alarm, structured logs, backup and restore."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings

from config import health
from config.celery import app as celery_app
from optout.selectors import Cursor, feed_page
from optout.services import objection_record

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_readiness():
    health._ready_cache = None
    yield
    health._ready_cache = None


@pytest.mark.django_db
def test_healthz_answers_without_touching_anything(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ok_when_everything_answers(client):
    response = client.get("/readyz")

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["checks"]["database"] == body["checks"]["migrations"] == body["checks"]["cache"] == "ok"
    assert body["checks"]["broker"] in {"ok", "in-process"}


@pytest.mark.django_db
def test_readyz_fails_clearly_when_the_database_is_down(client):
    port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = "1"  # nothing listens there
    connection.close()
    try:
        response = client.get("/readyz")
    finally:
        connection.settings_dict["PORT"] = port
        connection.close()

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["checks"]["database"] == "unreachable"
    assert "127.0.0.1" not in response.content.decode() and "postgres" not in response.content.decode()


@pytest.mark.django_db
def test_readyz_fails_clearly_when_the_broker_is_down(client):
    previous = celery_app.conf.broker_url
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        with override_settings(CELERY_TASK_ALWAYS_EAGER=False):
            response = client.get("/readyz")
    finally:
        celery_app.conf.broker_url = previous

    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "unreachable"
    assert "redis://" not in response.content.decode()


@pytest.mark.django_db
def test_metrics_need_a_token_or_an_allowed_address(client, purpose, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        objection_record(subject_id="m-1", source="gpc")
    client.get("/healthz")

    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    with override_settings(METRICS_TOKEN="s3cret-token"):
        assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
        response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret-token")

    assert response.status_code == 200
    text = response.content.decode()
    assert 'demur_objections_recorded_total{action="objected",source="gpc"}' in text
    assert 'demur_http_request_duration_seconds_count{method="GET",status="200",view="healthz"}' in text
    assert "demur_feed_lag_seconds" in text


@pytest.mark.django_db(transaction=True)
def test_an_idle_transaction_stalls_the_feed_is_reported_and_the_feed_catches_up(client, purpose):
    dsn = connection.get_connection_params()
    blocker = psycopg.connect(
        dbname=dsn["dbname"],
        user=dsn.get("user"),
        host=dsn.get("host"),
        port=dsn.get("port"),
        password=dsn.get("password"),
        application_name="left-open-by-a-test",
    )
    try:
        blocker.execute("SELECT pg_current_xact_id()")  # takes an xid and keeps its transaction open
        objection_record(subject_id="waiting", source="api")

        assert feed_page(cursor=Cursor(), limit=10).rows == []  # held back, not lost
        stalls = health.feed_blockers()
        assert any(stall.application == "left-open-by-a-test" for stall in stalls)
        assert health.feed_lag_seconds() > 0

        admin_user = User.objects.create_superuser("ops", "ops@example.org", "pw")
        client.force_login(admin_user)
        with override_settings(DEMUR_FEED_STALL_WARNING=0):
            page = client.get("/admin/").content.decode()
        assert "The change feed is held back" in page
    finally:
        blocker.rollback()
        blocker.close()

    rows = feed_page(cursor=Cursor(), limit=10).rows
    assert [row.subject_id for row in rows] == ["waiting"]


@pytest.mark.django_db
def test_log_lines_are_json_with_the_request_id_and_no_personal_data(client):
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "name", "") == "console" or h.filters)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        response = client.get("/nowhere/jane.doe@example.org", HTTP_X_REQUEST_ID="req-42")
        logging.getLogger("demur.test").warning("mailing %s with key AbCdEfGh.%s", "jane.doe@example.org", "x" * 32)
    finally:
        handler.setStream(previous)

    assert response.status_code == 404 and response["X-Request-ID"] == "req-42"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines, "nothing was logged"
    assert {line["request_id"] for line in lines[:-1]} == {"req-42"}
    written = stream.getvalue()
    assert "jane.doe@example.org" not in written and "j***@example.org" in written
    assert "x" * 32 not in written


@pytest.mark.django_db(transaction=True)
def test_a_backup_restores_into_a_fresh_database_with_an_intact_ledger(purpose, tmp_path):
    for n in range(5):
        objection_record(subject_id=f"b-{n}", source="web-form")
    params = connection.get_connection_params()
    url = psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if k in {"dbname", "user", "host", "port"}})
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}

    result = subprocess.run(
        [str(ROOT / "scripts" / "backup-restore-check"), url, str(tmp_path / "ledger.dump")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "into a fresh PostgreSQL" in result.stdout
    assert "Ledger intact: 5 events in 5 chains." in result.stdout
    assert (tmp_path / "ledger.dump").stat().st_size > 0


@pytest.mark.django_db
def test_the_access_log_masks_the_token_in_a_link_path(client):
    from optout.links import LinkClaims, objection_url

    url = objection_url(LinkClaims(subject_id="s-1", purpose="ai-training", language="de"))
    token = url.rstrip("/").rsplit("/", 1)[1]
    handler = next(h for h in logging.getLogger().handlers if h.filters)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        client.get(urlsplit(url).path)
    finally:
        handler.setStream(previous)

    access = [json.loads(line) for line in stream.getvalue().splitlines() if '"demur.access"' in line]
    assert access and access[-1]["message"].startswith("GET /de/optout/t/[redacted]")
    assert token not in stream.getvalue()
