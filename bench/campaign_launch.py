"""Benchmark: launching a campaign of N recipients in 26 languages on PostgreSQL (freezing
the notice in every language and creating one delivery per recipient in one INSERT ...
SELECT), beside a bare INSERT ... SELECT of the same rows into an unindexed table.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_campaigns_bench \\
        .venv/bin/python bench/campaign_launch.py --recipients 1000000 --repeats 3

Each repeat launches a new campaign over an empty delivery table. Target (issue 6): a
1,000,000-recipient launch in under 60 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import bench_database_url, django_env, manage, median_seconds, psql, report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    url = bench_database_url("demur_campaigns_bench")
    env = django_env(url, LOG_LEVEL="WARNING")
    manage("migrate", "-v0", env=env)
    os.environ.update(env)
    import django

    django.setup()
    from django.conf import settings

    from campaigns.models import Campaign
    from campaigns.services import campaign_launch
    from optout.models import Purpose

    languages = [code for code, _name in settings.LANGUAGES]
    countries = ["DE", "FR", "IT", "ES", "PL", "NL", "GR", "SE", "CZ", "PT", "IE", "MT", "AT"]
    psql(url, "DELETE FROM campaigns_delivery; TRUNCATE campaigns_recipient")
    started = time.perf_counter()
    psql(
        url,
        "INSERT INTO campaigns_recipient (subject_id, email, language, country, created_at, updated_at) "
        f"SELECT 'acct-' || lpad(n::text, 9, '0'), 'user' || n || '@example.org', "
        f"(ARRAY{languages!r})[1 + n % {len(languages)}], (ARRAY{countries!r})[1 + n % {len(countries)}], now(), now() "
        f"FROM generate_series(1, {args.recipients}) n; ANALYZE campaigns_recipient",
    )
    print(
        f"{args.recipients:,} recipients in {len(languages)} languages loaded in {time.perf_counter() - started:.1f} s"
    )
    purpose = Purpose.objects.get_or_create(slug="ai-training", defaults={"name": "training and improving AI models"})[
        0
    ]
    psql(
        url,
        "DROP TABLE IF EXISTS bench_bare; CREATE TABLE bench_bare (campaign_id bigint, subject_id text, channel text, version_id bigint)",
    )

    bare_median, bare_all = median_seconds(
        lambda: psql(url, "INSERT INTO bench_bare SELECT 1, subject_id, 'mail', 1 FROM campaigns_recipient"),
        repeats=args.repeats,
        before=lambda: psql(url, "TRUNCATE bench_bare"),
    )

    def new_campaign() -> int:
        psql(url, "DELETE FROM campaigns_delivery")
        return Campaign.objects.create(
            name="bench",
            purpose=purpose,
            controller_name="Example Social Ltd",
            product_name="Demur Social",
            training_starts_on=dt.date(2027, 1, 27),
            dpo_email="dpo@example.com",
            contact_email="privacy@example.com",
            policy_url="https://example.com/privacy",
            scheduled_at=dt.datetime(2099, 1, 1, tzinfo=dt.UTC),  # launched, not dispatched
        ).pk

    ids: list[int] = []
    created: list[int] = []
    launch_median, launch_all = median_seconds(
        lambda: created.append(campaign_launch(campaign_id=ids[-1])),
        repeats=args.repeats,
        before=lambda: ids.append(new_campaign()),
    )
    assert all(n == args.recipients for n in created), created
    relaunch_started = time.perf_counter()
    try:
        campaign_launch(campaign_id=ids[-1])
    except Exception as exc:  # noqa: BLE001 - the refusal is what we time
        refusal = type(exc).__name__
    relaunch = time.perf_counter() - relaunch_started
    psql(url, "DROP TABLE bench_bare")

    print(f"  bare INSERT ... SELECT runs (s): {', '.join(f'{t:.2f}' for t in bare_all)}")
    print(f"  campaign_launch runs (s):        {', '.join(f'{t:.2f}' for t in launch_all)}")
    print(f"  launching again: {refusal} after {relaunch * 1000:.0f} ms, nothing created")
    report(
        f"Launch of {args.recipients:,} recipients (deliveries/s, median; higher is better)",
        [
            ("bare INSERT ... SELECT, no index", args.recipients / bare_median, "rows/s"),
            ("campaign_launch (freeze + deliveries)", args.recipients / launch_median, "rows/s"),
        ],
        baseline="bare INSERT ... SELECT, no index",
    )
    print(f"  campaign_launch median: {launch_median:.1f} s (target: under 60 s)")


if __name__ == "__main__":
    main()
