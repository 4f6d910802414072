"""What the API benchmarks share: the data set, a gunicorn server, a key, percentiles.

Not a benchmark itself; see bench/api_feed.py, bench/api_check.py, bench/api_export.py.
The data lives in its own database (demur_api_bench by default) and is loaded once and
reused while the row counts match:

- N ledger events (one objection each, distinct subjects), written with COPY in
  transactions of 50,000 rows so the feed crosses many transaction ids; hashes are cheap
  stand-ins (verify_ledger would reject them; no API selector reads them);
- the current-state row for each of them (objected, pointing at its event);
- optionally extra current-state rows for objectors loaded without events, so the bulk
  check can run against 10,000,000 objections without writing 10,000,000 events.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import ROOT, django_env, ensure_database, manage, psql

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/demur_api_bench"
SOURCES = ["email-link", "in-app", "web-form", "api", "gpc"]
COPY_BATCH = 50_000
SECRET = "bench-secret-key-" + "x" * 48


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if not url.startswith("postgres"):
        sys.exit("These benchmarks need DATABASE_URL=postgres://...")
    return url


def prepare(url: str, *, events: int, extra_objectors: int = 0) -> None:
    """Migrate and load the data set unless it is already there with these counts."""
    ensure_database(url)
    manage("migrate", "-v0", env=django_env(url))
    have_events = int(psql(url, "SELECT count(*) FROM optout_objectionevent"))
    have_states = int(psql(url, "SELECT count(*) FROM optout_objectionstate WHERE objected"))
    if have_events == events and have_states >= events + extra_objectors:
        print(f"data set present: {events:,} events, {have_states:,} objectors")
        return
    if have_events == events and have_states == events:
        _add_objectors(url, extra_objectors)
        return
    print(f"loading {events:,} events and {events + extra_objectors:,} objectors ...", flush=True)
    started = time.perf_counter()
    psql(
        url,
        "ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_truncate;"
        "ALTER TABLE optout_objectionstate DISABLE TRIGGER demur_state_no_truncate;"
        "TRUNCATE optout_objectionstate, optout_objectionevent CASCADE;"
        "ALTER TABLE optout_objectionevent ENABLE TRIGGER demur_ledger_no_truncate;"
        "ALTER TABLE optout_objectionstate ENABLE TRIGGER demur_state_no_truncate;",
    )
    purpose_id = int(psql(url, "SELECT id FROM optout_purpose WHERE slug = 'ai-training'"))
    _copy_events(url, events, purpose_id)
    psql(
        url,
        "INSERT INTO optout_objectionstate (subject_id, objected, source, received_at, effective_at, receipt,"
        " head_hash, updated_at, last_event_id, purpose_id, seq, feed_key)"
        " SELECT subject_id, true, source, received_at, effective_at, 'B' || lpad(id::text, 15, '0'), hash, now(),"
        " id, purpose_id, seq, feed_key"
        " FROM optout_objectionevent",
    )
    _add_objectors(url, extra_objectors)
    print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)


def _add_objectors(url: str, extra_objectors: int) -> None:
    """Current-state rows for objectors loaded without events (the bulk check reads only these)."""
    if extra_objectors:
        print(f"adding {extra_objectors:,} objectors ...", flush=True)
        purpose_id = int(psql(url, "SELECT id FROM optout_purpose WHERE slug = 'ai-training'"))
        psql(
            url,
            "INSERT INTO optout_objectionstate (subject_id, objected, source, received_at, effective_at, receipt,"
            " head_hash, updated_at, last_event_id, purpose_id)"
            f" SELECT 'x' || lpad(g::text, 9, '0'), true, 'import', ts, ts, 'X' || g, '', now(), NULL, {purpose_id}"
            f" FROM generate_series(1, {extra_objectors}) g,"
            " LATERAL (SELECT timestamptz '2024-01-01' + g * interval '1 second' AS ts) t",
        )
    for table in ("optout_objectionevent", "optout_objectionstate"):
        psql(url, f"VACUUM ANALYZE {table}")  # one statement per call: VACUUM refuses a transaction


def _copy_events(url: str, count: int, purpose_id: int) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        # The receipt is stored as text (`receipt`) or as a number beside the id
        # (`receipt_code`), depending on the ledger's migration; fill whichever exists.
        receipt_column = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'optout_objectionevent'"
            " AND column_name IN ('receipt', 'receipt_code')"
        ).fetchone()[0]
        columns = (
            "uuid, subject_id, email, action, source, reason, staff_user, received_at, effective_at,"
            f" recorded_at, {receipt_column}, prev_hash, hash, purpose_id, seq, feed_key"
        )
        for start in range(0, count, COPY_BATCH):
            with conn.transaction(), conn.cursor() as cur:
                # Each event is the first of its chain, at its transaction's feed position.
                (feed_key,) = cur.execute(
                    "SELECT base + pg_current_xact_id()::text::bigint FROM demur_ledger_epoch()"
                ).fetchone()
                copy_events(cur, columns, start, min(start + COPY_BATCH, count), purpose_id, receipt_column, feed_key)


def copy_events(cur, columns: str, start: int, stop: int, purpose_id: int, receipt_column: str, feed_key: int) -> None:
    """Events start..stop-1, one COPY in the caller's transaction."""
    lines = []
    for n in range(start, stop):
        at = f"2024-06-{1 + n % 28:02d} {n % 24:02d}:{n % 60:02d}:{(n // 60) % 60:02d}.{n % 1000000:06d}+00"
        receipt = f"B{n:015d}" if receipt_column == "receipt" else n
        lines.append(
            f"{uuid.UUID(int=n + 1)}\tu{n:09d}\t\tobjected\t{SOURCES[n % 5]}\t\t\t{at}\t{at}\t{at}"
            f"\t{receipt}\t{'0' * 64}\t{n:064x}\t{purpose_id}\t1\t{feed_key}\n"
        )
    with cur.copy(f"COPY optout_objectionevent ({columns}) FROM STDIN") as copy:
        copy.write("".join(lines))


def read_key(url: str) -> str:
    result = manage("create_api_client", "bench", "--scopes", "objections:read", env=django_env(url))
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gunicorn(
    url: str, *, workers: int = 2, cpus: str | None = None, **extra_env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Demur under gunicorn (sync workers, DEBUG off, persistent connections) on a free
    port; pinned to the CPU list `cpus` (taskset syntax) when given."""
    port = free_port()
    env = django_env(
        url,
        DEBUG="false",
        SECRET_KEY=SECRET,
        ALLOWED_HOSTS="127.0.0.1",
        SITE_URL=f"http://127.0.0.1:{port}",
        SECURE_SSL_REDIRECT="false",
        CACHE_URL=os.environ.get("CACHE_URL", "redis://127.0.0.1:6379/6"),
        DEMUR_API_THROTTLE_RATE="100000/minute",
        LOG_LEVEL="WARNING",
        **extra_env,
    )
    pin = ["taskset", "-c", cpus] if cpus else []
    proc = subprocess.Popen(
        [
            *pin,
            str(Path(sys.executable).parent / "gunicorn"),
            "config.wsgi",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--timeout",
            "600",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/schema/", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("gunicorn did not start") from None
                time.sleep(0.3)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def worker_pids(master: subprocess.Popen) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
