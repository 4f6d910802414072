"""The Redis databases this test session uses, each one for one use: a worker test's
broker, the cache. A database is emptied when the session first names it and again when
the session ends (tests/conftest.py), so no run sees another's queued tasks or counters
and none leaves its own behind. Defaults sit on the local Redis, one database number per
use; the environment variables point a parallel run at numbers of its own."""

from __future__ import annotations

import os

import redis

_owned: list[str] = []


def own_database(variable: str, default_db: int) -> str:
    """The URL in `variable` (default: database `default_db` of the local Redis), emptied now."""
    url = os.environ.get(variable) or f"redis://127.0.0.1:6379/{default_db}"
    if url not in _owned:
        _owned.append(url)
        _empty(url)
    return url


def empty_owned() -> None:
    for url in _owned:
        _empty(url)


def _empty(url: str) -> None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).flushdb()
    except redis.RedisError:
        pass  # not reachable: the tests that need it skip, or fail in CI, with their reason
