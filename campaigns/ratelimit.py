"""One send rate per campaign shared by every worker: a token bucket in Redis.

The bucket is a Lua script run atomically by Redis and timed by Redis's own clock, so
workers on many machines (with drifting clocks) draw from one bucket. It holds at most one
second's worth of tokens. django-ratelimit counts requests in fixed windows and cannot
hand out a number of tokens at once, hence these few lines.

Without Redis (the quick start runs tasks in-process) the bucket lives in the process.
"""

from __future__ import annotations

import threading
import time

from django.core.cache import caches

_TAKE = """
local rate = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or rate
local at = tonumber(state[2]) or now
tokens = math.min(rate, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 60)
return {granted, tostring((1 - tokens) / rate)}
"""


def _redis_client():
    cache = caches["default"]
    backend = f"{type(cache).__module__}.{type(cache).__name__}"
    if backend.startswith("django_redis."):
        from django_redis import get_redis_connection

        return get_redis_connection("default")
    if backend == "django.core.cache.backends.redis.RedisCache":
        return cache._cache.get_client(None, write=True)
    return None


class _LocalBucket:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate: int, want: int) -> tuple[int, float]:
        with self.lock:
            now = time.monotonic()
            tokens, at = self.state.get(key, (rate, now))
            tokens = min(rate, tokens + (now - at) * rate)
            granted = min(want, int(tokens))
            tokens -= granted
            self.state[key] = (tokens, now)
            return granted, (1 - tokens) / rate


_local = _LocalBucket()
_script = None


def tokens_take(key: str, *, rate: int, want: int, max_wait: float = 5.0) -> int:
    """Wait until at least one of `want` tokens is free (at most `max_wait` seconds) and
    return how many were taken (0 after waiting in vain)."""
    global _script
    client = _redis_client()
    deadline = time.monotonic() + max_wait
    while True:
        if client is None:
            granted, wait = _local.take(key, rate, want)
        else:
            if _script is None:
                _script = client.register_script(_TAKE)
            granted, wait = _script(keys=[f"demur:bucket:{key}"], args=[rate, want], client=client)
            granted, wait = int(granted), float(wait)
        if granted:
            return granted
        if time.monotonic() + wait > deadline:
            return 0
        time.sleep(max(wait, 0.001))
