"""Structured logs: one JSON object per line, each with the request id that caused it,
carried from the web request into the Celery tasks it enqueues. Email addresses, signed
tokens and API keys are masked before a line is written."""

from __future__ import annotations

import logging
import re
import uuid

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from core.request_id import request_id_var

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# user@example.org -> u***@example.org
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# Django signing tokens (payload:timestamp:signature), API keys (prefix.secret), bearer values
# (the opt-out pages' paths: /<lang>/optout/t|status|verify|unsubscribe/<token>/)
_TOKEN = re.compile(
    r"(/t/|/status/|/verify/|/unsubscribe/|token=|Bearer\s+)[^\s/\"'&]+"
    r"|\b[A-Za-z0-9]{8}\.[A-Za-z0-9]{32}\b"
    r"|[.\w-]{20,}:[\w-]{4,}:[\w-]{20,}"
)


def redact(text: str) -> str:
    text = _EMAIL.sub(r"\1***@\2", text)
    return _TOKEN.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


class RequestIdMiddleware:
    """Take the proxy's X-Request-ID when it looks sane, else make one; echo it back."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # django.request logs after the middleware returns
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response


class ContextFilter(logging.Filter):
    """Adds the request id and masks personal data and secrets in every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        record.request_id = getattr(request, "request_id", None) or request_id_var.get()
        message = redact(record.getMessage())
        record.msg, record.args = message, None
        return True


def connect_celery(app) -> None:
    """Carry the request id in task headers and restore it in the worker, whose log
    lines are the same JSON as the web's."""
    from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun

    @setup_logging.connect(weak=False)
    def _django_logging(**kwargs):
        # With a receiver here Celery leaves the root logger alone instead of putting its
        # own plain-text handler there; LOG_LEVEL, not the worker's -l, sets the level.
        from logging.config import dictConfig

        from django.conf import settings

        dictConfig(settings.LOGGING)

    @before_task_publish.connect(weak=False)
    def _stamp(headers=None, **kwargs):
        if headers is not None:
            headers.setdefault("request_id", request_id_var.get())

    @task_prerun.connect(weak=False)
    def _restore(task=None, **kwargs):
        incoming = getattr(task.request, "request_id", None) or "-"
        task.request.demur_token = request_id_var.set(incoming)

    @task_postrun.connect(weak=False)
    def _clear(task=None, **kwargs):
        token = getattr(task.request, "demur_token", None)
        if token is not None:
            request_id_var.reset(token)


class JsonFormatter(_JsonFormatter):
    """python-json-logger's formatter, minus the request object Django attaches to its
    records (its repr carries the path, and paths carry tokens), with every string
    value masked as above."""

    def process_log_record(self, log_data):
        log_data.pop("request", None)
        return {key: redact(value) if isinstance(value, str) else value for key, value in log_data.items()}
