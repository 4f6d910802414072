"""The operational metrics after real events: mails sent and refused through an SMTP
server, a signed webhook, an unhandled 500, a failed Celery task, and the broker's queue
depth read from Redis (left out, not an error, when the broker does not answer)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from celery import shared_task
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import path
from prometheus_client.parser import text_string_to_metric_families

from campaigns.dispatch import dispatch_batch
from campaigns.models import Campaign, Delivery
from campaigns.services import campaign_launch, inapp_event_record
from campaigns.tasks import dispatch_task
from config import urls as project_urls
from config.celery import app as celery_app
from tests.campaigns.factories import make_campaign
from tests.campaigns.smtpsink import SmtpSink
from tests.campaigns.test_dispatch import _launch
from tests.campaigns.test_dispatch_tracking import KEY, _payload, _post
from tests.campaigns.test_reliability import broker, sink  # noqa: F401 - fixtures
from tests.redis_dbs import own_database

pytestmark = pytest.mark.django_db
BROKER = own_database("DEMUR_TEST_METRICS_BROKER_URL", 9)
ROOT = Path(__file__).resolve().parent.parent
WORKER_PORT = int(os.environ.get("DEMUR_TEST_WORKER_METRICS_PORT", "8181"))


def scrape() -> dict[tuple[str, frozenset], float]:
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples, metric: str, **labels) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def test_it_counts_mail_sent_and_refused_and_in_app_notices_shown(purpose, settings):
    with SmtpSink() as server:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        server.refuse["de@example.com"] = "550 5.1.1 no such user"
        campaign = _launch(
            purpose,
            people=[("p-de", "de@example.com", "de", "DE"), ("p-fr", "fr@example.com", "fr", "FR")],
            send_inapp=True,
        )
        before = scrape()
        dispatch_batch(campaign_id=campaign.pk)
    inapp = Delivery.objects.get(campaign=campaign, subject_id="p-fr", channel=Delivery.Channel.INAPP)
    inapp_event_record(delivery_id=inapp.pk, event="shown")
    inapp_event_record(delivery_id=inapp.pk, event="clicked")  # the same notice: counted once
    after = scrape()

    def delta(channel, status):
        labels = {"channel": channel, "status": status}
        return value(after, "demur_deliveries_total", **labels) - value(before, "demur_deliveries_total", **labels)

    assert server.counts == {"fr@example.com": 1}
    assert (delta("mail", "sent"), delta("mail", "failed"), delta("inapp", "sent")) == (1, 1, 1)


def test_it_counts_webhook_events_by_provider_and_type(purpose, settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": KEY}
    campaign = _launch(purpose, people=[("u1", "ana@example.com", "de", "DE")])
    delivery = Delivery.objects.get(campaign=campaign)
    before = scrape()

    delivered = _payload("delivered", delivery)
    assert _post(delivered).status_code == 200
    assert _post(delivered).status_code == 200  # a replay is received too
    assert _post(_payload("opened", delivery)).status_code == 200
    assert _post(_payload("delivered", delivery, key="forged")).status_code == 400  # never reaches the handler

    after = scrape()
    for event, expected in (("delivered", 2), ("opened", 1)):
        labels = {"provider": "Mailgun", "event": event}
        got = value(after, "demur_webhook_events_total", **labels) - value(
            before, "demur_webhook_events_total", **labels
        )
        assert got == expected, event


def _boom(request):
    raise RuntimeError("a bug")


def _missing(request):
    return HttpResponse(status=404)


urlpatterns = [
    path("test-boom", _boom, name="test-boom"),
    path("test-missing", _missing, name="test-missing"),
    *project_urls.urlpatterns,
]


@override_settings(ROOT_URLCONF=__name__)
def test_it_counts_an_unhandled_500_by_view_and_not_a_404_or_a_503():
    before = scrape()
    client = Client(raise_request_exception=False)

    assert client.get("/test-boom").status_code == 500
    assert client.get("/test-missing").status_code == 404
    assert client.get("/no-such-page").status_code == 404

    after = scrape()
    errors = {key: v - before.get(key, 0.0) for key, v in after.items() if key[0] == "demur_errors_total"}
    assert {key: v for key, v in errors.items() if v} == {
        ("demur_errors_total", frozenset({"source": "http", "name": "test-boom"}.items())): 1.0
    }


@shared_task(name="tests.always_fails")
def always_fails() -> None:
    raise ValueError("this task fails")


def test_it_counts_a_failed_task_by_name():
    before = value(scrape(), "demur_errors_total", source="task", name="tests.always_fails")

    result = always_fails.apply()

    assert result.failed()
    assert value(scrape(), "demur_errors_total", source="task", name="tests.always_fails") == before + 1


@pytest.fixture
def queue():
    """A queue of this test's own on the broker db, emptied afterwards."""
    import redis

    try:
        redis.Redis.from_url(BROKER, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"needs Redis at {BROKER}")
    name = f"demur-metrics-{uuid.uuid4().hex[:10]}"
    conf = celery_app.conf
    saved = conf.broker_url, conf.task_default_queue, conf.task_always_eager
    conf.broker_url, conf.task_default_queue, conf.task_always_eager = BROKER, name, False
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    celery_app.amqp.__dict__.pop("queues", None)
    yield name
    redis.Redis.from_url(BROKER).delete(name)
    conf.broker_url, conf.task_default_queue, conf.task_always_eager = saved
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    celery_app.amqp.__dict__.pop("queues", None)


@override_settings(CELERY_TASK_ALWAYS_EAGER=False)
def test_it_reports_the_queue_depth_from_the_broker(queue):
    for _ in range(3):
        always_fails.apply_async(queue=queue)

    assert value(scrape(), "demur_queue_depth", queue=queue) == 3


@override_settings(CELERY_TASK_ALWAYS_EAGER=False)
def test_an_unreachable_broker_leaves_the_queue_depth_out_and_the_scrape_answers(queue):
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    celery_app._pool = None

    samples = scrape()

    assert not [key for key in samples if key[0] == "demur_queue_depth"]
    assert any(key[0] == "demur_http_request_duration_seconds_count" for key in samples)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_serves_the_counters_of_all_its_pool_processes(purpose, broker, sink, tmp_path):  # noqa: F811
    from tests.campaigns.test_reliability import Worker, _audience, _wait

    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    worker = Worker("metrics", sink, tmp_path / "worker.log")
    env = {**worker.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "DEMUR_WORKER_METRICS_PORT": str(WORKER_PORT)}
    with worker.log.open("ab") as out:
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=prefork", "--concurrency=2",
             "-n", "metrics@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _audience(40)
        campaign = make_campaign(purpose, send_rate=1000)
        campaign_launch(campaign_id=campaign.pk)
        dispatch_task.apply_async(("not-a-campaign-id",))  # fails in the worker
        _wait(
            lambda: Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.COMPLETED,
            timeout=90,
            workers=[worker],
            what="the campaign to complete",
        )

        def scrape() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{WORKER_PORT}/", timeout=10) as response:
                text = response.read().decode()
            return {
                (sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }

        # The failed task may still be queued or running beside the last batch.
        scraped: list[dict] = []
        _wait(
            lambda: (
                scraped.append(scrape())
                or value(scraped[-1], "demur_errors_total", source="task", name="campaigns.dispatch") >= 1
            ),
            timeout=30,
            workers=[worker],
            what="the failed task to be counted",
        )
        samples = scraped[-1]
    finally:
        worker.stop()

    # The endpoint runs in the worker's main process, which runs no task under prefork:
    # every count below was made in a pool process and read through the directory.
    assert value(samples, "demur_deliveries_total", channel="mail", status="sent") == 40
    assert value(samples, "demur_errors_total", source="task", name="campaigns.dispatch") == 1
