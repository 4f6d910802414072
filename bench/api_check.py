"""Benchmark: the bulk check of 10,000 ids through HTTP against 10,000,000 objections,
beside the bare SQL query issued from Python with the same ids.

How to run (adds 9,000,000 objectors to the feed's data set on first use, a few minutes):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_api_bench \\
        .venv/bin/python bench/api_check.py --events 1000000 --extra 9000000 --requests 200

Smaller scale, if 10,000,000 rows take too long here: --extra 0 (1,000,000 objections).

Each id list has 10,000 ids: half are objectors picked at random across the table, half
unknown. Every round sends one list through HTTP (POST /api/v1/objections/check to
gunicorn, 2 sync workers, DEBUG off, throttle on Redis; the client encodes the body and
parses the answer) and runs the same ids through the bare query from Python
(`... WHERE purpose_id = %s AND objected AND subject_id = ANY(%s)`, fetchall; psycopg
prepares it after five runs, so it is measured with its generic plan), and, to show
where the time goes, the API's own selector (optout.selectors.objection_check) called
in this process without HTTP. They alternate so all see the same machine load, and which
goes first with an id list rotates (the first warms the buffers for the others). Prints
p50 and p99 of each and the ratios to the bare query. The client, gunicorn and
PostgreSQL share this machine's cores (the load average is printed; --taskset pins
client and server to separate cores).

Target (issue 4): HTTP p50 within 1.5x and p99 within 3x of the bare query.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import django_env, psql
from bench.api_common import database_url, gunicorn, percentile, prepare, read_key

BARE_SQL = (
    "SELECT subject_id, effective_at FROM optout_objectionstate"
    " WHERE purpose_id = %s AND objected AND subject_id = ANY(%s)"
)


def id_lists(events: int, extra: int, count: int, seed: int = 4) -> list[list[str]]:
    rng = random.Random(seed)
    lists = []
    for _ in range(count):
        ids = []
        for n, k in enumerate(rng.sample(range(events + extra), 5_000)):
            ids.append(f"u{k:09d}" if k < events else f"x{k - events + 1:09d}")
            ids.append(f"nobody-{rng.randrange(10**9)}-{n}")
        lists.append(ids)
    return lists


def api_selector(url: str):
    """optout.selectors.objection_check in this process, on the benchmark database."""
    os.environ.update(django_env(url))
    import django

    django.setup()
    from optout.selectors import objection_check

    return objection_check


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--extra", type=int, default=9_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--taskset", metavar="SERVER:CLIENT", help="pin gunicorn and this process to CPU lists, e.g. 0:1"
    )
    args = parser.parse_args()
    url = database_url()
    prepare(url, events=args.events, extra_objectors=args.extra)
    objectors = int(psql(url, "SELECT count(*) FROM optout_objectionstate WHERE objected"))
    purpose_id = int(psql(url, "SELECT id FROM optout_purpose WHERE slug = 'ai-training'"))
    key = read_key(url)
    lists = id_lists(args.events, objectors - args.events, 20)
    objection_check = api_selector(url)
    server_cpus, client_cpus = args.taskset.split(":") if args.taskset else (None, None)
    if client_cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in client_cpus.split(",")})
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs", flush=True)

    import psycopg

    http_times, sql_times, selector_times = [], [], []
    with gunicorn(url, workers=2, cpus=server_cpus) as (base, _), psycopg.connect(url, autocommit=True) as conn:

        def via_http(ids: list[str]) -> int:
            body = json.dumps({"subject_ids": ids}).encode()
            request = urllib.request.Request(
                f"{base}/api/v1/objections/check",
                data=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                results = json.loads(response.read())["results"]
            return sum(r["objected"] for r in results)

        def via_sql(ids: list[str]) -> int:
            return len(conn.execute(BARE_SQL, [purpose_id, ids]).fetchall())

        def via_selector(ids: list[str]) -> int:
            return objection_check(purpose="ai-training", subject_ids=ids).results_json.count(b'"objected":true')

        methods = [(via_http, http_times), (via_sql, sql_times), (via_selector, selector_times)]
        for n in range(args.warmup + args.requests):
            ids = lists[n % len(lists)]
            # Whichever runs first with a list reads its index and heap pages into
            # PostgreSQL's buffers for the others, so the first place rotates.
            turn = methods[n % 3 :] + methods[: n % 3]
            found = []
            for method, times in turn:
                start = time.perf_counter()
                found.append(method(ids))
                if n >= args.warmup:
                    times.append(time.perf_counter() - start)
            assert found == [5_000] * 3, found

    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    http50, http99 = percentile(http_times, 50), percentile(http_times, 99)
    sql50, sql99 = percentile(sql_times, 50), percentile(sql_times, 99)
    print(f"\nbulk check of 10,000 ids against {objectors:,} objections ({args.requests} requests each)")
    print(f"  HTTP      p50 {http50 * 1000:7.1f} ms   p99 {http99 * 1000:7.1f} ms")
    print(f"  bare SQL  p50 {sql50 * 1000:7.1f} ms   p99 {sql99 * 1000:7.1f} ms")
    sel50, sel99 = percentile(selector_times, 50), percentile(selector_times, 99)
    print(
        f"  selector  p50 {sel50 * 1000:7.1f} ms   p99 {sel99 * 1000:7.1f} ms   (objection_check in-process, no HTTP)"
    )
    print(f"  ratio     p50 {http50 / sql50:7.2f}x (target <= 1.5x)   p99 {http99 / sql99:7.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
