"""Benchmark: the NDJSON export of every objector through HTTP, and the web process's
peak memory while it streams.

How to run (loads the data set into demur_api_bench on first use):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_api_bench \\
        .venv/bin/python bench/api_export.py --events 1000000 --repeats 3

gunicorn runs one sync worker (DEBUG off), so the process that streams is known; its
peak resident memory (VmHWM from /proc) is read after a small warm-up request (the
baseline: what the worker needs anyway) and again after the exports, plain and gzip.
The export rate is printed beside `COPY (SELECT ...) TO STDOUT` of the same rows.
It streams however many objectors the purpose has (1,000,000 unless bench/api_check.py
added its extra objectors to the same database; the count is printed).

Target (issue 4): web-process peak RSS under 200 MB for 1,000,000 objectors.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import median_seconds, psql, report
from bench.api_common import (
    database_url,
    gunicorn,
    prepare,
    read_key,
    rss_kib,
    worker_pids,
)

COPY_SQL = """
    SELECT s.subject_id, p.slug, s.received_at, s.effective_at, s.source
    FROM optout_objectionstate s JOIN optout_purpose p ON p.id = s.purpose_id
    WHERE p.slug = 'ai-training' AND s.objected ORDER BY s.subject_id
"""


def export(base: str, key: str, *, compressed: bool) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if compressed:
        headers["Accept-Encoding"] = "gzip"
    request = urllib.request.Request(f"{base}/api/v1/objections/export", headers=headers)
    lines, tail = 0, b""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with urllib.request.urlopen(request, timeout=600) as response:
        assert (response.headers.get("Content-Encoding") == "gzip") == compressed
        while chunk := response.read(1 << 20):
            data = tail + (inflate.decompress(chunk) if compressed else chunk)
            lines += data.count(b"\n")
            tail = data[data.rfind(b"\n") + 1 :]
            last = data
    trailer = json.loads(last.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    if trailer["count"] != lines - 1:
        raise SystemExit(f"the export had {lines - 1} rows but says {trailer['count']}")
    return trailer["count"]


def copy_out(url: str) -> None:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(f"COPY ({COPY_SQL}) TO STDOUT") as copy:
        for _ in copy:
            pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    url = database_url()
    prepare(url, events=args.events)
    key = read_key(url)
    objectors = int(psql(url, "SELECT count(*) FROM optout_objectionstate WHERE objected"))

    with gunicorn(url, workers=1) as (base, master):
        (worker,) = worker_pids(master)
        urllib.request.urlopen(
            urllib.request.Request(
                f"{base}/api/v1/objections/check",
                data=b'{"subject_ids":["u000000001"]}',
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
        ).read()
        idle_kib = rss_kib(worker)
        counts = []
        plain, plain_all = median_seconds(
            lambda: counts.append(export(base, key, compressed=False)), repeats=args.repeats
        )
        plain_peak_kib = rss_kib(worker)
        zipped, zipped_all = median_seconds(
            lambda: counts.append(export(base, key, compressed=True)), repeats=args.repeats
        )
        peak_kib = rss_kib(worker)
    assert set(counts) == {objectors}, (counts, objectors)
    cp, cp_all = median_seconds(lambda: copy_out(url), repeats=args.repeats)
    for label, times in [("HTTP", plain_all), ("HTTP gzip", zipped_all), ("COPY", cp_all)]:
        print(f"  {label}: {', '.join(f'{t:.2f}s' for t in times)}")
    report(
        f"export of {objectors:,} objectors (median of {args.repeats})",
        [
            ("HTTP NDJSON", objectors / plain, "rows/s"),
            ("HTTP NDJSON gzip", objectors / zipped, "rows/s"),
            ("COPY", objectors / cp, "rows/s"),
        ],
        baseline="COPY",
    )
    report(
        "web worker peak RSS (VmHWM; target < 200 MB)",
        [
            ("after warm-up", idle_kib / 1024, "MB"),
            ("after plain exports", plain_peak_kib / 1024, "MB"),
            ("after gzip exports", peak_kib / 1024, "MB"),
        ],
        baseline="after warm-up",
    )


if __name__ == "__main__":
    main()
