"""Benchmark: a full sync of the change feed through HTTP (gunicorn on PostgreSQL).

How to run (loads the data set into demur_api_bench on first use, about a minute):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_api_bench \\
        .venv/bin/python bench/api_feed.py --events 1000000 --repeats 3

A client follows `next_cursor` from the start with limit=10000 until has_more is false,
parsing every page with json.loads, against gunicorn (2 sync workers, DEBUG off, the
throttle on Redis); a second figure ("unparsed") reads only the cursor from the end of
each page, to show the server's and the wire's share. Printed beside, in the same run on
the same rows:

- python+cursor: the same SELECT from Python through a server-side cursor, each row
  turned into a dict and JSON-encoded (what a naive feed would cost per row);
- COPY: `COPY (SELECT ...) TO STDOUT` of the same rows, read by psycopg (the floor).

Target (issue 4): at least 200,000 events/s for 1,000,000 events. Figures are medians.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import median_seconds, psql, report
from bench.api_common import database_url, gunicorn, prepare, read_key

FEED_ROWS_SQL = """
    SELECT e.uuid, e.subject_id, p.slug, e.action, e.received_at, e.effective_at, e.source, e.xid, e.id
    FROM optout_objectionevent e JOIN optout_purpose p ON p.id = e.purpose_id
    WHERE e.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
    ORDER BY e.xid, e.id
"""


def wait_for_horizon(url: str) -> None:
    """The feed's horizon is cluster-wide: wait out long transactions of other sessions."""
    while int(psql(url, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                   " <= coalesce((SELECT max(xid) FROM optout_objectionevent), 0) AS behind").strip() == "t"):
        print("waiting for another session's transaction to end ...", flush=True)
        time.sleep(2)


_TAIL = re.compile(rb'\],"next_cursor":"([^"]*)","has_more":(true|false)\}$')


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
        for uuid, subject_id, slug, action, received_at, effective_at, source, _xid, _id in cur:
            dumps(
                {
                    "id": str(uuid), "subject_id": subject_id, "purpose": slug, "action": action,
                    "received_at": format_timestamp(received_at), "effective_at": format_timestamp(effective_at),
                    "source": source,
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
    args = parser.parse_args()
    url = database_url()
    prepare(url, events=args.events)
    key = read_key(url)
    wait_for_horizon(url)

    with gunicorn(url, workers=2) as (base, _):
        http_sync(base, key, args.events, args.limit)  # warm the caches once
        http, http_all = median_seconds(lambda: http_sync(base, key, args.events, args.limit), repeats=args.repeats)
        raw, raw_all = median_seconds(
            lambda: http_sync(base, key, args.events, args.limit, parse=False), repeats=args.repeats
        )
    py, py_all = median_seconds(lambda: python_cursor(url, args.events), repeats=args.repeats)
    cp, cp_all = median_seconds(lambda: copy_out(url), repeats=args.repeats)
    for label, times in [("HTTP", http_all), ("HTTP unparsed", raw_all), ("python+cursor", py_all), ("COPY", cp_all)]:
        print(f"  {label}: {', '.join(f'{t:.2f}s' for t in times)}")
    report(
        f"change feed, full sync of {args.events:,} events (median of {args.repeats}; target >= 200,000 events/s)",
        [
            ("HTTP feed", args.events / http, "events/s"),
            ("HTTP feed, unparsed", args.events / raw, "events/s"),
            ("python+cursor", args.events / py, "events/s"),
            ("COPY", args.events / cp, "events/s"),
        ],
        baseline="python+cursor",
    )
    print(f"  HTTP feed / COPY: {cp / http:.2f}x")


if __name__ == "__main__":
    main()
