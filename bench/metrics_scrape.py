"""Benchmark: one Prometheus scrape of /metrics with an empty deliveries table and with N
deliveries, beside the query a scrape would run if it read deliveries by status from the
rows (`SELECT channel, status, count(*) ... GROUP BY`), in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_metrics_bench \\
        .venv/bin/python bench/metrics_scrape.py --deliveries 1000000 --repeats 15

The deliveries are loaded with one INSERT ... SELECT (foreign-key triggers off for the
load: this is a benchmark database, the rows point at one campaign and version).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import django_env, ensure_database, manage, median_seconds, psql, report  # noqa: E402

STATUSES = "ARRAY['sent','sent','sent','sent','sent','failed','skipped','pending','sent','unknown']"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/demur_metrics_bench")
    ensure_database(url)
    env = django_env(url)
    manage("migrate", "-v0", env=env)
    psql(url, "TRUNCATE campaigns_delivery CASCADE")
    os.environ.update(env)

    import django

    django.setup()
    from django.db import connection
    from django.test import Client

    client = Client()

    def scrape() -> None:
        response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
        assert response.status_code == 200, response.status_code

    def group_by() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT channel, status, count(*) FROM campaigns_delivery GROUP BY 1, 2")
            cursor.fetchall()

    empty, _ = median_seconds(scrape, repeats=args.repeats)
    psql(
        url,
        "SET session_replication_role = replica; "
        "INSERT INTO campaigns_delivery (campaign_id, subject_id, channel, notice_version_id, status, attempts,"
        " sent_at, message_id, error) "
        f"SELECT 1, 's' || g, CASE WHEN g % 5 = 0 THEN 'inapp' ELSE 'mail' END, 1, ({STATUSES})[1 + g % 10], 1,"
        f" now() - (g % 3600) * interval '1 second', '', '' FROM generate_series(1, {args.deliveries}) g",
    )
    psql(url, "VACUUM ANALYZE campaigns_delivery")
    full, _ = median_seconds(scrape, repeats=args.repeats)
    counted, _ = median_seconds(group_by, repeats=args.repeats)
    n = f"{args.deliveries:,}"
    report(
        f"/metrics scrape, median of {args.repeats} (milliseconds)",
        [
            ("scrape, 0 deliveries", empty * 1000, "ms"),
            (f"scrape, {n} deliveries", full * 1000, "ms"),
            (f"GROUP BY status over {n} deliveries", counted * 1000, "ms"),
        ],
        baseline="scrape, 0 deliveries",
    )
    psql(url, "TRUNCATE campaigns_delivery CASCADE")


if __name__ == "__main__":
    main()
