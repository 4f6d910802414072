"""The id of the request being served, set by config.logs.RequestIdMiddleware and carried
into the Celery tasks it enqueues; every log line and outbox row names it."""

from __future__ import annotations

import contextvars

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
