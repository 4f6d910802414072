"""A campaign through real Celery workers, Redis and an SMTP server: a worker killed with
SIGKILL three times mid-campaign and restarted still mails everyone exactly once, except
the mails in flight at each kill (counted); two workers share one campaign with no
duplicates; a restart of the broker (a private redis-server, emptied by the restart) and
one of PostgreSQL (a private cluster, fast shutdown) mid-campaign are followed by dispatch
resuming by itself, with the same guarantee. This process plays celery beat by calling the
tick, as beat would, except in the PostgreSQL test, where a real beat process does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

from campaigns.dispatch import campaigns_tick, mails_per_write
from campaigns.models import Campaign, Delivery, Recipient
from campaigns.services import campaign_launch
from config.celery import app as celery_app
from tests.campaigns.factories import make_campaign
from tests.campaigns.private_servers import PrivatePostgres, PrivateRedis, postgres_missing, redis_missing
from tests.campaigns.smtpsink import SmtpSink
from tests.redis_dbs import own_database

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
BROKER = own_database("DEMUR_TEST_CAMPAIGN_BROKER_URL", 10)
LANGUAGES = ["de", "fr", "it", "es", "pl", "nl", "el", "sv", "cs", "pt"]
COUNTRIES = ["DE", "FR", "IT", "ES", "PL", "NL", "GR", "SE", "CZ", "PT"]
QUEUE = f"demur-test-{uuid.uuid4().hex[:12]}"
CLAIM_TIMEOUT = 4  # seconds; the worker gives a claim back after half of it


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _point_celery_at(url: str | None) -> None:
    celery_app.conf.task_always_eager = url is None
    celery_app.conf.broker_url = url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@contextlib.contextmanager
def _celery_at(url: str, settings):
    saved = (celery_app.conf.task_always_eager, celery_app.conf.broker_url, celery_app.conf.task_default_queue)
    _point_celery_at(url)
    # Other runs of this suite may share the broker: this run's tasks go to its own queue.
    celery_app.conf.task_default_queue = QUEUE
    # What the tick in this process reads (the workers get the same through env below).
    settings.DEMUR_DELIVERY_CLAIM_TIMEOUT = CLAIM_TIMEOUT
    settings.DEMUR_DISPATCH_PARALLELISM = 2
    settings.CELERY_BEAT_SCHEDULE = {
        **settings.CELERY_BEAT_SCHEDULE,
        "campaigns-tick": {"task": "campaigns.tick", "schedule": 1},
    }
    try:
        yield url
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.broker_url, celery_app.conf.task_default_queue = saved
        celery_app._pool = None
        celery_app.amqp._producer_pool = None


@pytest.fixture
def broker(settings):
    if not _redis_up(BROKER):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Redis at {BROKER} for the campaign worker tests")
        pytest.skip(f"needs Redis at {BROKER}")
    with _celery_at(BROKER, settings) as url:
        yield url


@pytest.fixture
def private_broker(settings):
    """A Redis of this test's own, which it may stop and start (never the shared one)."""
    if reason := redis_missing():
        pytest.skip(reason)
    server = PrivateRedis()
    server.start()
    try:
        with _celery_at(server.url, settings):
            yield server
    finally:
        server.stop()


@pytest.fixture
def sink():
    with SmtpSink(keep=False) as server:
        yield server


def _test_database_url() -> str:
    db_url = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(db_url._replace(path="/" + connection.settings_dict["NAME"]))


class Worker:
    def __init__(
        self, name: str, sink: SmtpSink, log: Path, *, broker: str = BROKER, database_url: str | None = None
    ) -> None:
        self.name = name
        self.log = log
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings_test",
            "DATABASE_URL": database_url or _test_database_url(),
            "CELERY_BROKER_URL": broker,
            "CELERY_TASK_DEFAULT_QUEUE": QUEUE,
            "EMAIL_URL": f"smtp://127.0.0.1:{sink.port}",
            "DEMUR_DELIVERY_CLAIM_TIMEOUT": str(CLAIM_TIMEOUT),
            "DEMUR_DISPATCH_BATCH": "50",
            "DEMUR_DISPATCH_PARALLELISM": "2",
            "LOG_LEVEL": "INFO",
        }
        self.env.pop("EMAIL_BACKEND", None)
        self.process: subprocess.Popen | None = None

    def start(self, *command: str) -> None:
        command = command or ("worker", "--pool=solo", "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
                              "--without-heartbeat")  # fmt: skip
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", *command, "-l", "INFO"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tasks_done(self) -> int:
        text = self.log.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if "campaigns.dispatch" in line and "succeeded" in line)


def _audience(n: int) -> None:
    Recipient.objects.bulk_create(
        [
            Recipient(
                subject_id=f"s{i:06d}",
                email=f"r{i:06d}@example.com",
                language=LANGUAGES[i % len(LANGUAGES)],
                country=COUNTRIES[i % len(COUNTRIES)],
            )
            for i in range(n)
        ],
        batch_size=2000,
    )


def _sent() -> int:
    return Delivery.objects.filter(status=Delivery.Status.SENT).count()


def _wait(condition, *, timeout: float, workers: list[Worker], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for worker in workers:
            if worker.process and worker.process.poll() is not None:
                raise AssertionError(f"{worker.name} exited:\n{worker.log.read_text(errors='replace')[-3000:]}")
        campaigns_tick()  # what beat does every second here
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {_status_counts()}")


def _wait_completed(campaign: Campaign, *, timeout: float, workers: list[Worker], what: str) -> None:
    def completed() -> bool:
        return Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.COMPLETED

    _wait(completed, timeout=timeout, workers=workers, what=what)


def _status_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Delivery.objects.values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def _check_exactly_once(sink: SmtpSink, n: int, rows: list[tuple[str, str, str]] | None = None) -> dict[str, int]:
    """rows: (subject id, email, delivery status) of every delivery; read here if not given."""
    if rows is None:
        emails = dict(Recipient.objects.values_list("subject_id", "email"))
        rows = [(s, emails[s], status) for s, status in Delivery.objects.values_list("subject_id", "status")]
    counts = sink.counts
    emails = {s: email for s, email, _status in rows}
    statuses = {s: status for s, _email, status in rows}
    assert len(statuses) == n
    duplicates = {email: c for email, c in counts.items() if c > 1}
    assert duplicates == {}
    unknown = [s for s, status in statuses.items() if status == Delivery.Status.UNKNOWN]
    sent = [s for s, status in statuses.items() if status == Delivery.Status.SENT]
    assert len(sent) + len(unknown) == n, Counter(statuses.values())
    assert all(counts[emails[s]] == 1 for s in sent)
    unknown_delivered = sum(counts[emails[s]] for s in unknown)
    return {
        "recipients": n,
        "mails": sum(counts.values()),
        "duplicates": len(duplicates),
        "in_flight_at_kills": len(unknown),
        "of_which_delivered": unknown_delivered,
        "lost": len(unknown) - unknown_delivered,
    }


def test_it_mails_everyone_once_when_the_worker_is_killed_three_times(purpose, broker, sink, tmp_path):
    n = 2000
    _audience(n)
    worker = Worker("w1", sink, tmp_path / "worker.log")
    worker.start()
    try:
        campaign = make_campaign(purpose, send_rate=400)
        campaign_launch(campaign_id=campaign.pk)  # dispatch enqueued on commit
        for kill in (1, 2, 3):
            _wait(lambda k=kill: _sent() >= n * k // 4, timeout=60, workers=[worker], what=f"kill {kill}")
            worker.kill()
            worker.start()
        _wait_completed(campaign, timeout=90, workers=[worker], what="the campaign to complete")
    finally:
        worker.stop()

    outcome = _check_exactly_once(sink, n)
    print(f"\nkill test: {outcome}")
    # A solo worker has at most one group of mails in flight when it dies.
    assert outcome["in_flight_at_kills"] <= 3 * mails_per_write(campaign.send_rate)


def test_it_shares_one_campaign_between_two_workers_without_duplicates(purpose, broker, sink, tmp_path):
    n = 1000
    _audience(n)
    workers = [Worker(f"w{i}", sink, tmp_path / f"worker{i}.log") for i in (1, 2)]
    for worker in workers:
        worker.start()
    try:
        campaign = make_campaign(purpose, send_rate=1000)
        campaign_launch(campaign_id=campaign.pk)
        _wait_completed(campaign, timeout=90, workers=workers, what="the campaign to complete")
    finally:
        for worker in workers:
            worker.stop()

    outcome = _check_exactly_once(sink, n)
    assert outcome["in_flight_at_kills"] == 0 and outcome["mails"] == n
    assert all(worker.tasks_done() > 0 for worker in workers), "both workers should have sent batches"


def test_it_resumes_by_itself_after_the_broker_restarts(purpose, private_broker, sink, tmp_path):
    n = 2000
    _audience(n)
    worker = Worker("w1", sink, tmp_path / "worker.log", broker=private_broker.url)
    worker.env["DEMUR_DISPATCH_TASK_SECONDS"] = "1"  # hand-overs need the broker often
    worker.start()
    try:
        campaign = make_campaign(purpose, send_rate=200)
        campaign_launch(campaign_id=campaign.pk)
        _wait(lambda: _sent() >= n // 4, timeout=60, workers=[worker], what="a quarter sent")
        # Down for longer than a task runs: the running task cannot hand over, every queued
        # task is lost with the broker's data, and enqueueing from the tick fails meanwhile.
        private_broker.stop()
        campaigns_tick()  # beat's tick while the broker is down: logs, raises nothing
        # The task that was running finishes its batch; then nothing more goes out. Wait
        # for two quiet seconds (a slow machine may take a while to finish the batch).
        stalled, quiet_since, deadline = _sent(), time.monotonic(), time.monotonic() + 30
        while time.monotonic() - quiet_since < 2 and time.monotonic() < deadline:
            time.sleep(0.25)
            if (now := _sent()) != stalled:
                stalled, quiet_since = now, time.monotonic()
        assert time.monotonic() - quiet_since >= 2 and stalled < n, "dispatch should stall while the broker is down"
        private_broker.start()
        _wait_completed(
            campaign, timeout=120, workers=[worker], what="the campaign to complete after the broker came back"
        )
    finally:
        worker.stop()

    outcome = _check_exactly_once(sink, n)
    print(f"\nbroker restart: {outcome}, {stalled} sent when it stalled")
    assert outcome["in_flight_at_kills"] == 0 and outcome["mails"] == n


def _private_query(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, connect_timeout=2) as conn:
        return conn.execute(sql).fetchall()


def _private_value(url: str, sql: str, default=None):
    """One value from the private cluster, or `default` while it is down."""
    import psycopg

    try:
        rows = _private_query(url, sql)
    except psycopg.OperationalError:
        return default
    return rows[0][0] if rows else default


_SETUP = """
from campaigns.models import Recipient
from campaigns.services import campaign_launch
from optout.models import Purpose
from tests.campaigns.factories import make_campaign

LANGUAGES, COUNTRIES = {languages!r}, {countries!r}
purpose, _ = Purpose.objects.get_or_create(slug="ai-training", defaults={{"name": "training and improving AI models"}})
Recipient.objects.bulk_create(
    Recipient(subject_id="s%06d" % i, email="r%06d@example.com" % i, language=LANGUAGES[i % 10], country=COUNTRIES[i % 10])
    for i in range({n})
)
campaign_launch(campaign_id=make_campaign(purpose, send_rate={rate}).pk)
"""


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of this test's own with the test database's schema, which it
    may stop and start (never the shared server)."""
    if reason := postgres_missing():
        pytest.skip(reason)
    cluster = PrivatePostgres()
    try:
        cluster.start()
        _private_query(f"{cluster.url}/postgres", "SELECT 1")
        import psycopg

        with psycopg.connect(f"{cluster.url}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE demur")
        # Migrated, not copied from the test database: that server may be another version.
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": f"{cluster.url}/demur"}, check=True, capture_output=True,
        )  # fmt: skip
        yield cluster
    finally:
        cluster.close()


def test_it_resumes_by_itself_after_postgresql_restarts(broker, private_postgres, sink, tmp_path):
    n, database = 2000, f"{private_postgres.url}/demur"
    worker = Worker("w1", sink, tmp_path / "worker.log", database_url=database)
    beat = Worker("beat", sink, tmp_path / "beat.log", database_url=database)
    for process in (worker, beat):
        process.env["DEMUR_CAMPAIGN_TICK_SECONDS"] = "1"
        process.env["DEMUR_DISPATCH_TASK_SECONDS"] = "2"
    worker.start()
    beat.start("beat", "-s", str(tmp_path / "beat-schedule"))
    sent = "SELECT count(*) FROM campaigns_delivery WHERE status = 'sent'"
    status = "SELECT status FROM campaigns_campaign"
    try:
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", _SETUP.format(n=n, rate=200, languages=LANGUAGES, countries=COUNTRIES)],
            cwd=ROOT, env=worker.env, check=True, capture_output=True,
        )  # fmt: skip
        _wait_private(lambda: _private_value(database, sent, 0) >= n // 4, 60, [worker, beat], "a quarter sent")
        # A fast shutdown ends the worker's session mid-batch; down for a few seconds.
        private_postgres.restart(down_for=3)
        restarted_at = _private_value(database, sent, 0)
        _wait_private(
            lambda: _private_value(database, status) == Campaign.Status.COMPLETED,
            150,
            [worker, beat],
            "the campaign to complete after PostgreSQL came back",
        )
        rows = _private_query(
            database,
            "SELECT d.subject_id, r.email, d.status FROM campaigns_delivery d"
            " JOIN campaigns_recipient r USING (subject_id)",
        )
    finally:
        beat.stop()
        worker.stop()

    outcome = _check_exactly_once(sink, n, rows)
    print(f"\nPostgreSQL restart: {outcome}, {restarted_at} sent when it came back")
    assert restarted_at < n, "the restart should come mid-campaign"
    assert "OperationalError" in worker.log.read_text(errors="replace"), "the worker should have lost its session"
    # The worker's session ended mid-batch: its last group may be "sending" with no outcome.
    assert outcome["in_flight_at_kills"] <= mails_per_write(200)


def _wait_private(condition, timeout: float, processes: list[Worker], what: str) -> None:
    """Wait with nothing but the private cluster and beat doing the ticking."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.process.poll() is not None:
                raise AssertionError(f"{process.name} exited:\n{process.log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            tails = "\n".join(p.log.read_text(errors="replace")[-2000:] for p in processes)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.5)
