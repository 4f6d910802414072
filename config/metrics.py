"""Prometheus metrics at /metrics, for a key holder or an allowed address.

Request latency and objection counters are kept per process; under gunicorn set
PROMETHEUS_MULTIPROC_DIR (an empty directory) and prometheus_client aggregates the
workers. Figures that live in the database (feed lag, deliveries by status) are read
when scraped, so every process reports the same truth.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

access_log = logging.getLogger("demur.access")

REQUEST_LATENCY = Histogram(
    "demur_http_request_duration_seconds",
    "Time to answer an HTTP request, by view.",
    ["view", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
OBJECTIONS_RECORDED = Counter(
    "demur_objections_recorded_total",
    "Ledger events written, by action and source.",
    ["action", "source"],
)


class RequestMetricsMiddleware:
    """Times every request for Prometheus and writes the access log line (logger
    demur.access; config.logs masks the tokens that paths carry)."""

    def __init__(self, get_response):
        self.get_response = get_response

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
        from config.health import feed_lag_seconds

        lag = GaugeMetricFamily(
            "demur_feed_lag_seconds",
            "Age of the oldest open transaction holding the change feed's horizon back.",
        )
        try:
            lag.add_metric([], feed_lag_seconds())
        except DatabaseError:
            return
        yield lag


_DB_COLLECTOR = DatabaseCollector()
_registered = False


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_DB_COLLECTOR)
        return registry
    global _registered
    if not _registered:
        REGISTRY.register(_DB_COLLECTOR)
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
