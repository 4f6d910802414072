"""A campaign through real Celery workers, Redis and an SMTP server: a worker killed with
SIGKILL three times mid-campaign and restarted still mails everyone exactly once, except
the mails in flight at each kill (counted); two workers share one campaign with no
duplicates. This process plays celery beat by calling the tick, as beat would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

from campaigns.dispatch import campaigns_tick
from campaigns.models import Campaign, Delivery, Recipient
from campaigns.services import campaign_launch
from config.celery import app as celery_app
from tests.campaigns.factories import make_campaign
from tests.campaigns.smtpsink import SmtpSink

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("DEMUR_TEST_CAMPAIGN_BROKER_URL", "redis://127.0.0.1:6379/10")
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


@pytest.fixture
def broker(settings):
    if not _redis_up(BROKER):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Redis at {BROKER} for the campaign worker tests")
        pytest.skip(f"needs Redis at {BROKER}")
    saved = (celery_app.conf.task_always_eager, celery_app.conf.broker_url, celery_app.conf.task_default_queue)
    _point_celery_at(BROKER)
    # Other runs of this suite may share the broker: this run's tasks go to its own queue.
    celery_app.conf.task_default_queue = QUEUE
    # What the tick in this process reads (the workers get the same through env below).
    settings.DEMUR_DELIVERY_CLAIM_TIMEOUT = CLAIM_TIMEOUT
    settings.DEMUR_DISPATCH_PARALLELISM = 2
    settings.CELERY_BEAT_SCHEDULE = {
        **settings.CELERY_BEAT_SCHEDULE,
        "campaigns-tick": {"task": "campaigns.tick", "schedule": 1},
    }
    yield BROKER
    celery_app.conf.task_always_eager, celery_app.conf.broker_url, celery_app.conf.task_default_queue = saved
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def sink():
    with SmtpSink(keep=False) as server:
        yield server


class Worker:
    def __init__(self, name: str, sink: SmtpSink, log: Path) -> None:
        db_url = urlsplit(os.environ["DATABASE_URL"])
        self.name = name
        self.log = log
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings_test",
            "DATABASE_URL": urlunsplit(db_url._replace(path="/" + connection.settings_dict["NAME"])),
            "CELERY_BROKER_URL": BROKER,
            "CELERY_TASK_DEFAULT_QUEUE": QUEUE,
            "EMAIL_URL": f"smtp://127.0.0.1:{sink.port}",
            "DEMUR_DELIVERY_CLAIM_TIMEOUT": str(CLAIM_TIMEOUT),
            "DEMUR_DISPATCH_BATCH": "50",
            "DEMUR_DISPATCH_PARALLELISM": "2",
            "LOG_LEVEL": "INFO",
        }
        self.env.pop("EMAIL_BACKEND", None)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "-n", f"{self.name}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"],
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


def _status_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Delivery.objects.values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def _check_exactly_once(sink: SmtpSink, n: int) -> dict[str, int]:
    counts = sink.counts
    emails = dict(Recipient.objects.values_list("subject_id", "email"))
    statuses = dict(Delivery.objects.values_list("subject_id", "status"))
    assert len(statuses) == n
    duplicates = {email: c for email, c in counts.items() if c > 1}
    assert duplicates == {}
    unknown = [s for s, status in statuses.items() if status == Delivery.Status.UNKNOWN]
    sent = [s for s, status in statuses.items() if status == Delivery.Status.SENT]
    assert len(sent) + len(unknown) == n, _status_counts()
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
        _wait(
            lambda: Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.COMPLETED,
            timeout=90,
            workers=[worker],
            what="the campaign to complete",
        )
    finally:
        worker.stop()

    outcome = _check_exactly_once(sink, n)
    print(f"\nkill test: {outcome}")
    # A solo worker has at most one mail in flight when it dies.
    assert outcome["in_flight_at_kills"] <= 3


def test_it_shares_one_campaign_between_two_workers_without_duplicates(purpose, broker, sink, tmp_path):
    n = 1000
    _audience(n)
    workers = [Worker(f"w{i}", sink, tmp_path / f"worker{i}.log") for i in (1, 2)]
    for worker in workers:
        worker.start()
    try:
        campaign = make_campaign(purpose, send_rate=1000)
        campaign_launch(campaign_id=campaign.pk)
        _wait(
            lambda: Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.COMPLETED,
            timeout=90,
            workers=workers,
            what="the campaign to complete",
        )
    finally:
        for worker in workers:
            worker.stop()

    outcome = _check_exactly_once(sink, n)
    assert outcome["in_flight_at_kills"] == 0 and outcome["mails"] == n
    assert all(worker.tasks_done() > 0 for worker in workers), "both workers should have sent batches"
