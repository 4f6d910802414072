"""Benchmark: objections through the signed-link page (POST), served by gunicorn with two
sync workers on PostgreSQL, beside a trivial view that inserts one row (same stack, same
middleware, same run).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_pages_bench \\
        .venv/bin/python bench/optout_pages.py --seconds 10

Phases (the objection and baseline phases alternate, --rounds times, so both see the
same machine load):
  1. max throughput: closed loop, --clients concurrent clients in --procs processes,
     each request a new connection (gunicorn's sync workers close it anyway);
  2. latency at half the measured max objection rate: open loop, requests sent on a
     fixed schedule; p50/p99 from the scheduled send time (no coordinated omission);
  3. during phase 2, a poller reads optout.selectors.feed_page every 5 ms and notes
     when each subject first appears: POST answer -> visible in the change feed.

Every objection POST carries a fresh signed link (a new person), passes the CSRF check
(token fetched once) and writes a ledger event, the state row and an outbox row for the
confirmation mail, whose send is published to Redis (db 8; no worker runs, the queue is
flushed afterwards). Targets (issue 3): throughput >= 50 % of the baseline; p99 < 50 ms
at half load; POST answer to visible in the feed < 1 s at p99.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BROKER = "redis://127.0.0.1:6379/8"
SECRET = "bench-only-secret-key-" + "x" * 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(port: int) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.optout_settings",
        "DEBUG": "false",
        "SECRET_KEY": SECRET,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SITE_URL": f"http://127.0.0.1:{port}",
        "SECURE_SSL_REDIRECT": "false",
        "CELERY_BROKER_URL": BROKER,
        "LOG_LEVEL": "WARNING",
        "EMAIL_URL": "consolemail://",
        "STATIC_ROOT": str(ROOT / "var" / "bench-static"),
    }


def _prepare(env: dict, fresh: bool) -> None:
    import psycopg

    url = urlsplit(env["DATABASE_URL"])
    name = url.path.lstrip("/")
    admin = url._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_optout_baseline"
            " (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())"
        )


# --- the load generator -------------------------------------------------------------------


def _request(port: int, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Target:
    """What one request is: an objection POST for a new person, or the baseline insert."""

    def __init__(self, kind: str, port: int, csrf: tuple[str, str], paths: list[str] | None = None):
        self.kind, self.port, self.paths = kind, port, paths or []
        cookie, token = csrf
        self.headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookie}",
            "Origin": f"http://127.0.0.1:{port}",
        }
        self.body = f"csrfmiddlewaretoken={token}&object=yes&reason=".encode()

    def send(self, n: int) -> int:
        path = self.paths[n] if self.kind == "objection" else "/bench/insert-one-row/"
        status, _ = _request(self.port, "POST", path, self.body, self.headers)
        return status


def _closed_loop_worker(args) -> tuple[int, int, list[float]]:
    kind, port, csrf, paths, start_index, stride, threads, seconds = args
    target = Target(kind, port, csrf, paths)
    deadline = time.monotonic() + seconds
    done = errors = 0
    latencies: list[float] = []
    lock = threading.Lock()

    def run(offset: int) -> None:
        nonlocal done, errors
        n = start_index + offset
        while time.monotonic() < deadline:
            started = time.monotonic()
            status = target.send(n % max(len(paths), 1))
            elapsed = time.monotonic() - started
            with lock:
                latencies.append(elapsed)
                if status == 200:
                    done += 1
                else:
                    errors += 1
            n += stride * threads

    pool = [threading.Thread(target=run, args=(i * stride,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return done, errors, latencies


def closed_loop(kind: str, port: int, csrf, paths, procs: int, threads: int, seconds: float) -> dict:
    with mp.Pool(procs) as pool:
        results = pool.map(
            _closed_loop_worker,
            [(kind, port, csrf, paths, p, procs, threads, seconds) for p in range(procs)],
        )
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    latencies = sorted(x for r in results for x in r[2])
    return {"rps": done / seconds, "errors": errors, "p50": _pct(latencies, 50), "p99": _pct(latencies, 99)}


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def open_loop(port: int, csrf, paths: list[str], subjects: list[str], rate: float, seconds: float) -> dict:
    """Send objections on a fixed schedule at `rate`/s; poll the feed meanwhile."""
    import django

    django.setup()
    from django.db import connection

    from optout.selectors import feed_horizon, feed_page

    target = Target("objection", port, csrf, paths)
    total = int(rate * seconds)
    start = time.monotonic() + 0.2
    answered: dict[str, float] = {}
    seen: dict[str, float] = {}
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    next_index = iter(range(total))
    cursor = feed_horizon()
    stop = threading.Event()

    held_back = [0.0]

    def poll() -> None:
        nonlocal cursor
        checked = 0.0
        while not stop.is_set():
            page = feed_page(cursor=cursor, limit=1000)
            now = time.monotonic()
            for row in page.rows:
                seen.setdefault(row.subject_id, now)
            cursor = page.next_cursor
            if now - checked > 0.5:
                # The feed reads below the oldest running transaction of the whole
                # cluster: note how old the oldest one elsewhere was.
                checked = now
                with connection.cursor() as db:
                    db.execute(
                        "SELECT coalesce(extract(epoch FROM max(now() - xact_start)), 0) FROM pg_stat_activity"
                        " WHERE pid <> pg_backend_pid() AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)"
                    )
                    held_back[0] = max(held_back[0], float(db.fetchone()[0]))
            if not page.has_more:
                time.sleep(0.005)
        connection.close()

    def sender() -> None:
        while True:
            with lock:
                n = next(next_index, None)
            if n is None:
                return
            scheduled = start + n / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            status = target.send(n)
            finished = time.monotonic()
            with lock:
                statuses.append(status)
                latencies.append(finished - scheduled)
                answered[subjects[n]] = finished

    poller = threading.Thread(target=poll)
    poller.start()
    senders = [threading.Thread(target=sender) for _ in range(32)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(s in seen for s in answered):
        time.sleep(0.05)
    stop.set()
    poller.join()
    visible = [max(0.0, seen[s] - answered[s]) for s in answered if s in seen]
    return {
        "sent": total,
        "ok": statuses.count(200),
        "p50": _pct(latencies, 50),
        "p99": _pct(latencies, 99),
        "feed_p50": _pct(visible, 50),
        "feed_p99": _pct(visible, 99),
        "feed_missing": len([s for s in answered if s not in seen]),
        "held_back": held_back[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--fresh", action="store_true", help="drop and re-create the bench database first")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("Set DATABASE_URL=postgres://.../demur_pages_bench", file=sys.stderr)
        return 2

    port = _free_port()
    env = _env(port)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ or k != "DATABASE_URL"})
    _prepare(env, args.fresh)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.optout_settings"
    import django

    django.setup()
    from optout.links import LinkClaims, objection_url

    run = uuid.uuid4().hex[:8]
    needed = int(4000 * args.seconds * args.rounds)  # more links than the server can use
    print(f"signing {needed} links ...", flush=True)
    subjects = [f"bench-{run}-{n}" for n in range(needed)]
    prefix = f"http://127.0.0.1:{port}"
    paths = [
        objection_url(LinkClaims(s, "ai-training", "en", email=f"{s}@example.org")).removeprefix(prefix)
        for s in subjects
    ]

    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-w", "2", "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", "--backlog", "2048", "--access-logfile", "/dev/null"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                status, _page = _request(port, "GET", paths[0], b"", {})
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200, status
        csrf = _csrf(port, paths[0])
        status, _ = _request(port, "POST", "/bench/insert-one-row/", Target("baseline", port, csrf).body,
                             Target("baseline", port, csrf).headers)  # fmt: skip
        assert status == 200, f"baseline answered {status}"

        results: dict[str, list[dict]] = {"baseline": [], "objection": []}
        offset = 1
        for round_no in range(args.rounds):
            for kind in ("baseline", "objection"):
                slice_ = paths[offset:] if kind == "objection" else []
                result = closed_loop(kind, port, csrf, slice_, args.procs, args.threads, args.seconds)
                if kind == "objection":
                    offset += int(result["rps"] * args.seconds) + len(paths) // (4 * args.rounds)
                results[kind].append(result)
                print(f"round {round_no + 1} {kind:9s}: {result['rps']:7.1f} req/s, "
                      f"p50 {result['p50'] * 1000:6.1f} ms, p99 {result['p99'] * 1000:6.1f} ms, "
                      f"errors {result['errors']}", flush=True)  # fmt: skip

        base = statistics.median(r["rps"] for r in results["baseline"])
        obj = statistics.median(r["rps"] for r in results["objection"])
        half = obj / 2
        rest = offset + 1
        half_load = open_loop(port, csrf, paths[rest:], subjects[rest:], half, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
        import redis

        redis.Redis.from_url(BROKER).flushdb()

    ratio = obj / base if base else float("nan")
    print()
    print(f"baseline (insert one row), median of {args.rounds}: {base:7.1f} req/s")
    print(f"objection POST,            median of {args.rounds}: {obj:7.1f} req/s")
    print(f"ratio objection / baseline: {ratio:.2f}  (target >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'})")
    print(f"at half load ({half:.0f}/s for {args.seconds:.0f} s, {half_load['ok']}/{half_load['sent']} ok): "
          f"p50 {half_load['p50'] * 1000:.1f} ms, p99 {half_load['p99'] * 1000:.1f} ms "
          f"(target p99 < 50 ms: {'met' if half_load['p99'] < 0.05 else 'NOT met'})")  # fmt: skip
    print(f"POST answer -> visible in feed_page: p50 {half_load['feed_p50'] * 1000:.1f} ms, "
          f"p99 {half_load['feed_p99'] * 1000:.1f} ms, never seen {half_load['feed_missing']} "
          f"(target p99 < 1 s: {'met' if half_load['feed_p99'] < 1 and not half_load['feed_missing'] else 'NOT met'}); "
        f"oldest other transaction in the cluster meanwhile: {half_load['held_back']:.1f} s")  # fmt: skip
    return 0


def _csrf(port: int, path: str) -> tuple[str, str]:
    """The CSRF cookie and form token of one page view (they belong together)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        cookies = [re.match(r"csrftoken=([^;]+)", h) for h in response.headers.get_all("Set-Cookie") or []]
    finally:
        conn.close()
    cookie = next(m.group(1) for m in cookies if m)
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    return cookie, token


if __name__ == "__main__":
    sys.exit(main())
