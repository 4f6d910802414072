"""Benchmark: objections through the signed-link page (POST), served by gunicorn with two
sync workers on PostgreSQL, beside a trivial view that inserts one row (same stack, same
middleware, same run, same load generator).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_pages_bench \\
        .venv/bin/python bench/optout_pages.py --seconds 10 --rounds 3

Needs wrk and a C compiler (Debian: apt-get install -y wrk gcc). gunicorn runs with the
production gunicorn.conf.py (a worker is replaced after max_requests, about 100,000
requests, which one run does not reach; each phase line says if it happened). The load generators are kept cheap,
because they share the machine's cores with gunicorn and PostgreSQL:
  1. max throughput: closed loop, wrk with --connections connections
     (bench/optout_wrk.lua), each request a new connection (gunicorn's sync workers
     close it); objection and baseline phases alternate, --rounds times, so both see the
     same machine load; the figure is the median;
  2. latency at half load: open loop, bench/optout_openloop.c (compiled into var/ on
     first use; one process, epoll) sends requests on a fixed schedule at half of each
     side's own median maximum; p50/p99 from the scheduled send time (no coordinated
     omission); alternating, --rounds times, medians. (The asyncio client it replaces
     ran in this process and, on a busy machine, was late by more than the server took:
     up to seconds at 300/s, where this one was late by under 3 ms at p99);
  3. POST answer -> visible in the change feed: one more open-loop objection phase at
     half load while a poller reads optout.selectors.feed_page every 5 ms and notes when
     each subject first appears (its own phase, so the poller's queries do not weigh on
     the latency figures of phase 2; its latency is printed too).

Every objection POST carries a fresh signed link (a new person), passes the CSRF check
(token fetched once) and writes a ledger event, the state row and an outbox row for the
confirmation mail; the mails are handed to Celery on Redis (db 8; no worker runs, the
queue is flushed afterwards). Targets (issue 3): throughput >= 50 % of the baseline; p99
< 50 ms at half load; POST answer to visible in the feed < 1 s at p99.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
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

# Where the confirmation mails are queued (no worker reads them; flushed at the end).
BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/8")
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


# --- the load generators -----------------------------------------------------------------


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
        self.cookie, self.token = csrf
        self.origin = f"http://127.0.0.1:{port}"
        self.body = f"csrfmiddlewaretoken={self.token}&object=yes&reason=".encode()

    def path(self, n: int) -> str:
        return self.paths[n] if self.kind == "objection" else "/bench/insert-one-row/"

    def raw(self, n: int) -> bytes:
        """The whole HTTP/1.1 request, ready for the socket."""
        head = (
            f"POST {self.path(n)} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(self.body)}\r\n"
            f"Cookie: csrftoken={self.cookie}\r\nOrigin: {self.origin}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + self.body


def closed_loop(target: Target, connections: int, threads: int, seconds: float, paths_file: Path) -> dict:
    """wrk at full speed; requests/s and how many were answered with something but 200."""
    if target.kind == "objection":
        paths_file.write_text("\n".join(target.paths) + "\n")
    env = {
        **os.environ,
        "BENCH_KIND": target.kind,
        "BENCH_THREADS": str(threads),
        "BENCH_PATHS": str(paths_file),
        "BENCH_CSRF_COOKIE": target.cookie,
        "BENCH_CSRF_TOKEN": target.token,
        "BENCH_ORIGIN": target.origin,
    }
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{round(seconds)}s", "--latency",
         "-s", str(ROOT / "bench" / "optout_wrk.lua"), target.origin],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "out of signed links" in out:
        raise SystemExit("wrk ran out of signed links: sign more")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": requests,
        "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0),
        "p50": _wrk_ms(re.search(r"50%\s+(\S+)", out).group(1)),
        "p99": _wrk_ms(re.search(r"99%\s+(\S+)", out).group(1)),
    }


def _wrk_ms(text: str) -> float:
    """wrk's '12.34ms' / '1.02s' / '850.00us' in seconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return float("nan")
    number, unit = match.groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def _cpu(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds each process has used so far (Linux /proc)."""
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return used


def _used_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings; a process that started since counts from zero."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _web_cpu(server: subprocess.Popen) -> float:
    """CPU of gunicorn's workers so far, those it has replaced included (the master's
    cutime and cstime hold the CPU of the workers it reaped)."""
    workers, _backends = _server_pids(server, backends=False)
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(_cpu(workers).values()) + (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _server_pids(server: subprocess.Popen, *, backends: bool = True) -> tuple[list[int], list[int]]:
    """The gunicorn workers, and the PostgreSQL backends serving this database (their
    CPU per request is a figure the machine's other load barely moves)."""
    from django.db import connection

    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == server.pid:
                workers.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    if not backends:
        return workers, []
    with connection.cursor() as db:
        db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        return workers, [row[0] for row in db.fetchall()]


class WorkerBirths:
    """Notes when gunicorn starts a worker: with max_requests (gunicorn.conf.py) a worker
    is replaced after about 10,000 requests, and a phase that saw one has measured a
    cold start as well."""

    def __init__(self, server: subprocess.Popen) -> None:
        self.server, self.births, self._stop = server, [], threading.Event()
        self._known: set[int] = set()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError):
                    continue
                if ppid == self.server.pid and pid not in self._known:
                    self._known.add(pid)
                    self.births.append(time.monotonic())
            self._stop.wait(0.05)

    def between(self, start: float, end: float) -> int:
        return sum(1 for born in self.births if start <= born <= end)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _openloop() -> Path:
    """The open-loop generator (bench/optout_openloop.c), compiled on first use."""
    source = ROOT / "bench" / "optout_openloop.c"
    binary = ROOT / "var" / "bench-optout-openloop"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit("Needs a C compiler for the open-loop generator: apt-get install -y gcc")
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def open_loop(target: Target, rate: float, seconds: float, *, subjects: list[str] | None = None) -> dict:
    """Send on a fixed schedule at `rate`/s (bench/optout_openloop.c, a process of its
    own); latency counts from each request's scheduled time. With `subjects`, poll the
    change feed meanwhile and time each POST answer to the event's first sight in it."""
    total = int(rate * seconds)
    run = uuid.uuid4().hex[:8]
    paths_file = ROOT / "var" / f"bench-optout-open-{run}.txt"
    rest_file = ROOT / "var" / f"bench-optout-open-{run}.http"
    paths_file.write_text("\n".join(target.paths[:total] if target.kind == "objection" else [target.path(0)]) + "\n")
    rest_file.write_bytes(target.raw(0).split(b"\r\n", 1)[1])  # all but the request line
    seen: dict[str, float] = {}
    held_back = [0.0]
    stop = threading.Event()
    poller = None
    if subjects is not None:
        poller = threading.Thread(target=_poll_feed, args=(seen, held_back, stop))
        poller.start()
    try:
        out = subprocess.run(
            [str(_openloop()), str(target.port), str(rate), str(seconds), str(paths_file), str(rest_file)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        paths_file.unlink(missing_ok=True)
        rest_file.unlink(missing_ok=True)
        if poller is not None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(s in seen for s in subjects[:total]):
                time.sleep(0.05)
            stop.set()
            poller.join()
    rows = [tuple(map(int, line.split())) for line in out.splitlines()]
    latencies = [(answered - scheduled) / 1e9 for _n, scheduled, answered, _status in rows]
    figures = {
        "rate": rate,
        "sent": total,
        "ok": sum(1 for *_times, status in rows if status == 200),
        "p50": _pct(latencies, 50),
        "p99": _pct(latencies, 99),
    }
    if subjects is not None:
        answered = {n: answered / 1e9 for n, _scheduled, answered, _status in rows}
        visible = [max(0.0, seen[s] - answered[n]) for n, s in enumerate(subjects[:total]) if s in seen]
        figures.update(
            feed_p50=_pct(visible, 50),
            feed_p99=_pct(visible, 99),
            feed_missing=sum(1 for s in subjects[:total] if s not in seen),
            held_back=held_back[0],
        )
    return figures


def _poll_feed(seen: dict[str, float], held_back: list[float], stop: threading.Event) -> None:
    from django.db import connection

    from optout.selectors import feed_horizon, feed_page

    cursor = feed_horizon()
    checked = 0.0
    while not stop.is_set():
        page = feed_page(cursor=cursor, limit=1000)
        now = time.monotonic()
        for row in page.rows:
            seen.setdefault(row.subject_id, now)
        cursor = page.next_cursor
        if now - checked > 0.5:
            # The feed reads below the oldest running transaction of the whole cluster:
            # note how old the oldest one elsewhere was.
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


def _events() -> int:
    from django.db import connection

    with connection.cursor() as db:
        db.execute("SELECT count(*) FROM optout_objectionevent")
        return db.fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--max-rate", type=float, default=1500, help="most objections/s to sign links for")
    parser.add_argument("--fresh", action="store_true", help="drop and re-create the bench database first")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("Set DATABASE_URL=postgres://.../demur_pages_bench", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("Needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2

    port = _free_port()
    env = _env(port)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ or k != "DATABASE_URL"})
    _prepare(env, args.fresh)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.optout_settings"
    import django

    django.setup()
    from django.db import connection

    from optout.links import LinkClaims, objection_url

    run = uuid.uuid4().hex[:8]
    per_phase = int(args.max_rate * args.seconds)
    needed = per_phase * (2 * args.rounds + 1)
    print(f"signing {needed} links ...", flush=True)
    subjects = [f"bench-{run}-{n}" for n in range(needed)]
    prefix = f"http://127.0.0.1:{port}"
    paths = [
        objection_url(LinkClaims(s, "ai-training", "en", email=f"{s}@example.org")).removeprefix(prefix)
        for s in subjects
    ]
    phases = iter(range(0, needed, per_phase))

    def next_slice() -> tuple[list[str], list[str]]:
        start = next(phases)
        return paths[start : start + per_phase], subjects[start : start + per_phase]

    paths_file = ROOT / "var" / f"bench-optout-paths-{run}.txt"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "config.wsgi", "-w", str(args.workers),
         "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", "--backlog", "2048", "--access-logfile", "/dev/null"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    births = WorkerBirths(server)
    try:
        status = 0
        for _ in range(100):
            try:
                status, _page = _request(port, "GET", paths[-1], b"", {})
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200, status
        csrf = _csrf(port, paths[-1])
        baseline = Target("baseline", port, csrf)
        status, _ = _request(port, "POST", "/bench/insert-one-row/", baseline.body,
                             {"Content-Type": "application/x-www-form-urlencoded",
                              "Cookie": f"csrftoken={csrf[0]}", "Origin": baseline.origin})  # fmt: skip
        assert status == 200, f"baseline answered {status}"

        closed: dict[str, list[dict]] = {"baseline": [], "objection": []}
        for round_no in range(args.rounds):
            for kind in ("baseline", "objection"):
                target = Target(kind, port, csrf, next_slice()[0] if kind == "objection" else None)
                before = _events()
                web_before, db_before = _web_cpu(server), _cpu(_server_pids(server)[1])
                started = time.monotonic()
                result = closed_loop(target, args.connections, args.threads, args.seconds, paths_file)
                restarts = births.between(started, time.monotonic())
                result["web_cpu"] = (_web_cpu(server) - web_before) / max(result["requests"], 1)
                result["db_cpu"] = _used_since(db_before, _cpu(_server_pids(server)[1])) / max(result["requests"], 1)
                written = _events() - before
                closed[kind].append(result)
                print(f"round {round_no + 1} max {kind:9s}: {result['rps']:7.1f} req/s, "
                      f"p50 {result['p50'] * 1000:6.1f} ms, p99 {result['p99'] * 1000:6.1f} ms, "
                      f"not 200: {result['errors']}, CPU/request: gunicorn {result['web_cpu'] * 1000:.2f} ms, "
                      f"postgres {result['db_cpu'] * 1000:.2f} ms"
                      + (f", events written {written} for {result['requests']} answers" if kind == "objection" else "")
                      + (f", workers restarted: {restarts} (a new worker's start counted)" if restarts else ""),
                      flush=True)  # fmt: skip
        base = statistics.median(r["rps"] for r in closed["baseline"])
        obj = statistics.median(r["rps"] for r in closed["objection"])

        half: dict[str, list[dict]] = {"baseline": [], "objection": []}
        for round_no in range(args.rounds):
            for kind, rate in (("baseline", base / 2), ("objection", obj / 2)):
                target = Target(kind, port, csrf, next_slice()[0] if kind == "objection" else None)
                started = time.monotonic()
                result = open_loop(target, rate, args.seconds)
                result["restarts"] = births.between(started, time.monotonic())
                half[kind].append(result)
                print(f"round {round_no + 1} half {kind:9s}: {rate:6.1f}/s, {result['ok']}/{result['sent']} ok, "
                      f"p50 {result['p50'] * 1000:6.1f} ms, p99 {result['p99'] * 1000:6.1f} ms"
                      + (f", workers restarted: {result['restarts']}" if result["restarts"] else ""), flush=True)  # fmt: skip
        feed_paths, feed_subjects = next_slice()
        feed = open_loop(Target("objection", port, csrf, feed_paths), obj / 2, args.seconds, subjects=feed_subjects)
        connection.close()
    finally:
        births.stop()
        server.terminate()
        server.wait(timeout=30)
        paths_file.unlink(missing_ok=True)
        import redis

        redis.Redis.from_url(BROKER).flushdb()

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in half[kind])

    ratio = obj / base if base else float("nan")
    p99 = med("objection", "p99")
    print()
    print(
        f"max throughput, median of {args.rounds} (wrk, {args.connections} connections, {args.workers} gunicorn workers):"
    )
    print(f"  baseline (insert one row): {base:7.1f} req/s")
    print(f"  objection POST:            {obj:7.1f} req/s")
    print(f"  ratio objection / baseline: {ratio:.2f}  (target >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'})")
    for kind in ("baseline", "objection"):
        web = statistics.median(r["web_cpu"] for r in closed[kind]) * 1000
        db = statistics.median(r["db_cpu"] for r in closed[kind]) * 1000
        print(f"  CPU per request, {kind:9s}: gunicorn {web:.2f} ms + postgres {db:.2f} ms")
    print(f"at half load, open loop for {args.seconds:.0f} s, median of {args.rounds}:")
    print(f"  baseline  at {base / 2:6.1f}/s: p50 {med('baseline', 'p50') * 1000:6.1f} ms, "
          f"p99 {med('baseline', 'p99') * 1000:6.1f} ms")  # fmt: skip
    print(f"  objection at {obj / 2:6.1f}/s: p50 {med('objection', 'p50') * 1000:6.1f} ms, "
          f"p99 {p99 * 1000:6.1f} ms (target p99 < 50 ms: {'met' if p99 < 0.05 else 'NOT met'})")  # fmt: skip
    feed_met = feed["feed_p99"] < 1 and not feed["feed_missing"]
    print(
        f"POST answer -> visible in feed_page (objections at {obj / 2:.1f}/s, {feed['ok']}/{feed['sent']} ok, "
        f"their p50 {feed['p50'] * 1000:.1f} ms, p99 {feed['p99'] * 1000:.1f} ms with the poller running):"
    )
    print(f"  p50 {feed['feed_p50'] * 1000:.1f} ms, p99 {feed['feed_p99'] * 1000:.1f} ms, "
          f"never seen {feed['feed_missing']} (target p99 < 1 s: {'met' if feed_met else 'NOT met'}); "
          f"oldest other transaction in the cluster meanwhile: {feed['held_back']:.1f} s")  # fmt: skip
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
