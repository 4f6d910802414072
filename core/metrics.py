"""The counters the apps increment where an event happens: an objection recorded, a
delivery's outcome written, a webhook received, an error. config/metrics.py serves them
at /metrics with the figures read at scrape time; see its docstring for the
multi-process setup."""

from __future__ import annotations

from prometheus_client import Counter

OBJECTIONS_RECORDED = Counter(
    "demur_objections_recorded_total",
    "Ledger events written, by action and source.",
    ["action", "source"],
)
DELIVERIES = Counter(
    "demur_deliveries_total",
    'Delivery outcomes recorded, by channel and status; rate() of status="sent" is the send rate.',
    ["channel", "status"],
)
WEBHOOK_EVENTS = Counter(
    "demur_webhook_events_total",
    "Mail providers' tracking events received (replays included), by provider and event type.",
    ["provider", "event"],
)
ERRORS = Counter(
    "demur_errors_total",
    "Unhandled exceptions: requests answered with a 500 (source http, by view) and failed Celery tasks (source task, by task).",
    ["source", "name"],
)


def deliveries_counted(*, channel: str, status: str, count: int = 1) -> None:
    if count:
        DELIVERIES.labels(channel, status).inc(count)
