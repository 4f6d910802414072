"""Benchmark: a full sync of the change feed through HTTP (gunicorn on PostgreSQL).

How to run (loads the data set into demur_api_bench on first use, about a minute):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_api_bench \\
        .venv/bin/python bench/api_feed.py --events 1000000 --repeats 3

A client follows the feed from the start with limit=10000 until has_more is false,
against gunicorn (2 sync workers, DEBUG off, the throttle on Redis), three ways:

- "HTTP feed": the reference client's reader (client/demur_client.py, feed_pages): every
  page parsed with json.loads and its events counted, while a thread already fetches the
  next page (its cursor from the X-Next-Cursor header);
- "one request at a time": the same parse, but the next request only after the parse;
- "unparsed": the cursor read from the end of each body, no parse: the server's and the
  wire's share alone.

The client, gunicorn and PostgreSQL share this machine's cores (the load average is
printed; pass --taskset to pin client and server to separate cores). Printed beside, in
the same run on the same rows:

- python+cursor: the same SELECT from Python through a server-side cursor, each row
  turned into a dict and JSON-encoded (what a naive feed would cost per row);
- COPY: `COPY (SELECT ...) TO STDOUT` of the same rows, read by psycopg (the floor).

Target (issue 4): at least 200,000 events/s for 1,000,000 events. Figures are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import psql, report
from bench.api_common import database_url, gunicorn, prepare, read_key

FEED_ROWS_SQL = """
    SELECT e.uuid, e.subject_id, p.slug, e.action, e.received_at, e.effective_at, e.source, e.seq, e.feed_key, e.id
    FROM optout_objectionevent e JOIN optout_purpose p ON p.id = e.purpose_id
    WHERE e.feed_key < (SELECT base + pg_snapshot_xmin(pg_current_snapshot())::text::bigint FROM demur_ledger_epoch())
    ORDER BY e.feed_key, e.id
"""


def wait_for_horizon(url: str) -> None:
    """The feed's horizon is cluster-wide: wait out long transactions of other sessions."""
    while int(
        psql(
            url,
            "SELECT (SELECT base + pg_snapshot_xmin(pg_current_snapshot())::text::bigint FROM demur_ledger_epoch())"
            " <= coalesce((SELECT max(feed_key) FROM optout_objectionevent), 0) AS behind",
        ).strip()
        == "t"
    ):
        print("waiting for another session's transaction to end ...", flush=True)
        time.sleep(2)


_TAIL = re.compile(rb'\],"next_cursor":"([^"]*)","has_more":(true|false)\}$')


def client_sync(base: str, key: str, expected: int, limit: int) -> None:
    """The reference client's feed reader: parses every page, fetches one ahead."""
    from client.demur_client import ObjectionMirror, feed_pages

    api = ObjectionMirror(base, key, ":memory:", timeout=120)
    total, has_more = 0, True
    for _, page, _ in feed_pages(api.send, purpose=None, limit=limit):
        total += len(page["events"])
        has_more = page["has_more"]
    api.close()
    if total != expected or has_more:
        raise SystemExit(f"the sync saw {total} events, expected {expected}")


def http_sync(base: str, key: str, expected: int, limit: int, *, parse: bool = True) -> None:
    """Follow the feed from the start. parse=False reads the cursor from the end of each
    body and counts events by their "id" keys: the server's and the wire's share alone."""
    cursor, total = "", 0
    while True:
        request = urllib.request.Request(
            f"{base}/api/v1/objections/changes?limit={limit}&cursor={cursor}",
            headers={"Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
        if parse:
            page = json.loads(body)
            total += len(page["events"])
            cursor, has_more = page["next_cursor"], page["has_more"]
        else:
            tail = _TAIL.search(body[-200:])
            total += body.count(b'{"id":"')
            cursor, has_more = tail.group(1).decode(), tail.group(2) == b"true"
        if not has_more:
            break
    if total != expected:
        raise SystemExit(f"the sync saw {total} events, expected {expected}")


def python_cursor(url: str, expected: int) -> None:
    import psycopg

    from optout.ledger import format_timestamp

    total = 0
    with psycopg.connect(url) as conn, conn.cursor(name="feed_bench") as cur:
        cur.itersize = 10_000
        cur.execute(FEED_ROWS_SQL)
        dumps = json.dumps
        for uuid, subject_id, slug, action, received_at, effective_at, source, seq, _key, _id in cur:
            dumps(
                {
                    "id": str(uuid),
                    "subject_id": subject_id,
                    "purpose": slug,
                    "action": action,
                    "received_at": format_timestamp(received_at),
                    "effective_at": format_timestamp(effective_at),
                    "source": source,
                    "seq": seq,
                }
            )
            total += 1
    assert total == expected, total


def copy_out(url: str) -> None:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(f"COPY ({FEED_ROWS_SQL}) TO STDOUT") as copy:
        for _ in copy:
            pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument(
        "--taskset", metavar="SERVER:CLIENT", help="pin gunicorn and this process to CPU lists, e.g. 0:1"
    )
    args = parser.parse_args()
    url = database_url()
    prepare(url, events=args.events)
    key = read_key(url)
    wait_for_horizon(url)
    server_cpus, client_cpus = args.taskset.split(":") if args.taskset else (None, None)
    if client_cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in client_cpus.split(",")})
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs", flush=True)

    n, limit = args.events, args.limit
    runs = {
        "HTTP feed": lambda: client_sync(base, key, n, limit),
        "HTTP, one request at a time": lambda: http_sync(base, key, n, limit),
        "HTTP, unparsed": lambda: http_sync(base, key, n, limit, parse=False),
        "python+cursor": lambda: python_cursor(url, n),
        "COPY": lambda: copy_out(url),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    with gunicorn(url, workers=2, cpus=server_cpus) as (base, _):
        client_sync(base, key, n, limit)  # warm the caches once
        for _ in range(args.repeats):  # interleaved, so that every method sees the same load drift
            for label, run in runs.items():
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for label, all_times in times.items():
        print(f"  {label}: {', '.join(f'{t:.2f}s' for t in all_times)}")
    medians = {label: statistics.median(all_times) for label, all_times in times.items()}
    report(
        f"change feed, full sync of {n:,} events (median of {args.repeats}; target >= 200,000 events/s)",
        [(label, n / seconds, "events/s") for label, seconds in medians.items()],
        baseline="python+cursor",
    )
    for label in ("HTTP feed", "HTTP, unparsed"):
        print(f"  {label} / COPY: {medians['COPY'] / medians[label]:.2f}x")


if __name__ == "__main__":
    main()
