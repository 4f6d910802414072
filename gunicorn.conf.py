"""gunicorn settings for Demur's web processes (`gunicorn -c gunicorn.conf.py config.wsgi`).

Sync workers with persistent database connections (CONN_MAX_AGE) measured fastest here;
every value can be overridden from the environment.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# SO_REUSEPORT: several gunicorn masters may listen on one port and the kernel spreads
# new connections over them; a new release starts beside the old one, which then stops
# (kill -TERM) with no refused connection. Web processes share nothing but PostgreSQL and
# the cache, so any of them can answer any request (tests/test_scale_out.py).
reuse_port = os.environ.get("GUNICORN_REUSE_PORT", "false").lower() in ("1", "true", "yes", "on")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
worker_class = "sync"
# Requests are short; the export streams, so allow it time without holding a slow client forever.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Recycle workers now and then so that a slow leak never becomes an outage, but rarely:
# a new worker imports the project (about 1.1 s of CPU) and warms up while its peers
# serve alone, which put a half-loaded server's p99 over 160 ms in every window with a
# replacement (bench/optout_pages.py). At 10,000 requests that was a window a minute at
# that bench's half load; at 100,000 one in 10 to 20 minutes, too rare to move the p99.
# The windows come with the request rate per worker: raise it for a busier server.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "100000"))
max_requests_jitter = max_requests // 10
# Trust X-Forwarded-* only from the proxy in front (comma-separated addresses).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# No gunicorn access log: paths carry signed tokens. Django writes one JSON access line
# per request instead, with tokens and addresses masked (config.metrics).
accesslog = None
errorlog = "-"


def child_exit(server, worker):
    # Multiprocess Prometheus metrics: forget a dead worker's live gauges.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
