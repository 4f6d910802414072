"""Prometheus metrics at /metrics, for a key holder or an allowed address.

Counters are incremented where the event happens (a request answered, an objection
recorded, a delivery's outcome written, a webhook received, an error) and kept per
process; under gunicorn or a prefork Celery worker set PROMETHEUS_MULTIPROC_DIR (an
empty directory, one per service) and prometheus_client adds the processes up. Counting
at the event keeps a scrape O(1): deliveries by status read from the rows would be a
scan of the whole deliveries table (0.3-0.5 s per million rows, bench/metrics_scrape.py), every scrape.
Celery workers serve their own counters (DEMUR_WORKER_METRICS_PORT, `worker_metrics_serve`),
one scrape target per worker host. Figures only the servers know are read at scrape
time with short timeouts and left out when unreachable: the change feed's lag
(PostgreSQL) and the broker queues' depth.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import got_request_exception
from django.db import DatabaseError
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from config.health import feed_lag_seconds
from core.metrics import ERRORS

access_log = logging.getLogger("demur.access")
logger = logging.getLogger(__name__)

REQUEST_LATENCY = Histogram(
    "demur_http_request_duration_seconds",
    "Time to answer an HTTP request, by view.",
    ["view", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _count_unhandled(sender, request=None, **kwargs) -> None:
    match = getattr(request, "resolver_match", None)
    ERRORS.labels("http", match.view_name if match and match.view_name else "unmatched").inc()


class RequestMetricsMiddleware:
    """Times every request for Prometheus and writes the access log line (logger
    demur.access; config.logs masks the tokens that paths carry)."""

    def __init__(self, get_response):
        self.get_response = get_response
        # Django sends this for exceptions that become a 500, not for 404s or 403s.
        got_request_exception.connect(_count_unhandled, dispatch_uid="demur-metrics-errors")

    def __call__(self, request):
        start = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - start
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match and match.view_name else "unmatched"
        REQUEST_LATENCY.labels(view, request.method, str(response.status_code)).observe(elapsed)
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={"view": view, "status": response.status_code, "duration_ms": round(elapsed * 1000, 1)},
        )
        return response


class DatabaseCollector(Collector):
    """Gauges read from PostgreSQL when Prometheus scrapes."""

    def collect(self):
        from optout.models import LedgerCheck  # this module loads with the settings, before the apps

        lag = GaugeMetricFamily(
            "demur_feed_lag_seconds",
            "Age of the oldest open transaction holding the change feed's horizon back.",
        )
        try:
            lag.add_metric([], feed_lag_seconds())
            check = LedgerCheck.objects.order_by("-checked_at").first()
        except DatabaseError:
            return
        yield lag
        if check is not None:
            problems = GaugeMetricFamily(
                "demur_ledger_problems", "Problems the last verification of the objection ledger found (0: intact)."
            )
            problems.add_metric([], check.problems)
            yield problems
            checked = GaugeMetricFamily(
                "demur_ledger_checked_timestamp_seconds", "When the objection ledger was last verified (Unix time)."
            )
            checked.add_metric([], check.checked_at.timestamp())
            yield checked


class QueueCollector(Collector):
    """Messages waiting in each Celery queue, asked of the broker at scrape time (a
    passive declare: LLEN on Redis, the queue's message count on RabbitMQ), with a
    one-second timeout. Left out when the broker does not answer; a queue the broker
    does not know yet reads 0."""

    def collect(self):
        if settings.CELERY_TASK_ALWAYS_EAGER:
            return
        from celery import current_app as app

        depth = GaugeMetricFamily("demur_queue_depth", "Tasks waiting in the broker's queue.", labels=["queue"])
        broker = app.conf.broker_url or ""
        options = (
            {"socket_timeout": 1, "socket_connect_timeout": 1} if urlsplit(broker).scheme.startswith("redis") else {}
        )
        try:
            with app.connection_for_read(connect_timeout=1, transport_options=options) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=1)
                for name in sorted(app.amqp.queues):
                    with conn.channel() as channel:  # RabbitMQ closes a channel that asks for a missing queue
                        try:
                            _, count, _ = channel.queue_declare(name, passive=True)
                        except conn.channel_errors:
                            count = 0  # no such queue yet: nothing waits in it
                    depth.add_metric([name], count)
        except Exception:  # noqa: BLE001 - kombu raises transport-specific errors; a scrape must not fail
            logger.warning("metrics: the broker did not answer the queue-depth query")
            return
        yield depth


_SERVER_COLLECTORS = (DatabaseCollector(), QueueCollector())
_registered = False


def _multiprocess_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = _multiprocess_registry()
        for collector in _SERVER_COLLECTORS:
            registry.register(collector)
        return registry
    global _registered
    if not _registered:
        for collector in _SERVER_COLLECTORS:
            REGISTRY.register(collector)
        _registered = True
    return REGISTRY


def _allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    return request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOWED_IPS


def metrics_view(request):
    if not _allowed(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


def connect_celery(app) -> None:
    """Failed tasks counted in the worker; the worker's counters served on
    DEMUR_WORKER_METRICS_PORT (all pool processes together under PROMETHEUS_MULTIPROC_DIR)."""
    from celery.signals import task_failure, worker_init, worker_process_shutdown

    @task_failure.connect(weak=False)
    def _failed(sender=None, **kwargs):
        ERRORS.labels("task", getattr(sender, "name", "unknown")).inc()

    @worker_init.connect(weak=False)
    def _serve(**kwargs):
        port = os.environ.get("DEMUR_WORKER_METRICS_PORT")
        if port:
            worker_metrics_serve(port=int(port), addr=os.environ.get("DEMUR_WORKER_METRICS_ADDR", "127.0.0.1"))

    @worker_process_shutdown.connect(weak=False)
    def _forget(pid=None, **kwargs):
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid:
            multiprocess.mark_process_dead(pid)


def worker_metrics_serve(*, port: int, addr: str) -> None:
    """The worker host's scrape target (no key: bind it to an address only Prometheus reaches)."""
    registry = _multiprocess_registry() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else REGISTRY
    start_http_server(port, addr=addr, registry=registry)
