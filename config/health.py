"""Liveness, readiness and the change feed's lag: cheap enough for a load balancer to ask
every second, and telling nothing secret (fixed words, never exception text or URLs)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

_READY_TTL = 1.0  # seconds a readiness answer is reused within one process
_ready_cache: tuple[float, int, dict] | None = None
_migrations_applied = False


@never_cache
def healthz(request):
    """The process is up and answering."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    """Database, migrations, cache and broker: 200 when all answer, 503 naming what does not."""
    global _ready_cache
    now = time.monotonic()
    if _ready_cache is None or now - _ready_cache[0] > _READY_TTL:
        checks = {
            "database": _check_database(),
            "migrations": _check_migrations(),
            "cache": _check_cache(),
            "broker": _check_broker(),
        }
        ready = all(value in ("ok", "in-process") for value in checks.values())
        _ready_cache = (now, 200 if ready else 503, {"status": "ok" if ready else "unavailable", "checks": checks})
    _, status, body = _ready_cache
    return JsonResponse(body, status=status)


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except DatabaseError:
        connection.close_if_unusable_or_obsolete()
        return "unreachable"


def _check_migrations() -> str:
    global _migrations_applied
    if _migrations_applied:
        return "ok"  # migrations are not unapplied under a running process
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        return "unknown"
    _migrations_applied = not pending
    return "ok" if not pending else "pending"


def _check_cache() -> str:
    try:
        cache.set("demur:readyz", "1", 5)
        return "ok" if cache.get("demur:readyz") == "1" else "unreachable"
    except Exception:  # noqa: BLE001 - every cache backend raises its own errors
        return "unreachable"


def _check_broker() -> str:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return "in-process"
    from celery import current_app as app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=1)
        return "ok"
    except Exception:  # noqa: BLE001 - kombu raises transport-specific errors
        return "unreachable"


@dataclass(frozen=True)
class FeedBlocker:
    pid: int
    state: str
    application: str
    seconds: float


def feed_blockers(*, older_than: float = 0.0) -> list[FeedBlocker]:
    """Sessions whose open transaction or snapshot holds the change feed's horizon back,
    oldest first. The feed shows only events below the oldest running transaction
    (optout.selectors.feed_page), so a session left idle in transaction stalls every
    poller until it ends: PostgreSQL's idle_in_transaction_session_timeout bounds that.
    The horizon is cluster-wide: sessions of every database count."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT pid, coalesce(state, ''), coalesce(application_name, ''),
                   extract(epoch FROM now() - xact_start)
            FROM pg_stat_activity
            WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
              AND pid <> pg_backend_pid()
              AND xact_start IS NOT NULL
              AND now() - xact_start >= make_interval(secs => %s)
            ORDER BY xact_start
            """,
            [older_than],
        )
        return [FeedBlocker(pid, state, app, float(seconds)) for pid, state, app, seconds in cursor.fetchall()]


def feed_lag_seconds() -> float:
    """Age of the oldest transaction holding the feed's horizon back (0 when none)."""
    blockers = feed_blockers()
    return blockers[0].seconds if blockers else 0.0
