"""Benchmark: the campaign console's live progress panel (campaigns.console.progress_panel
and its page, which reloads every few seconds while a campaign sends) and the launch
confirmation's audience count, on a campaign of N deliveries, beside the selector it
builds on (campaigns.selectors.campaign_progress: one GROUP BY over the same rows).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_console_bench \\
        .venv/bin/python bench/campaign_progress.py --deliveries 1000000 --repeats 7
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import bench_database_url, django_env, manage, median_seconds, psql, report  # noqa: E402

# Statuses of the deliveries, as a campaign about two thirds through: (status, share).
MIX = (("sent", 60), ("pending", 33), ("failed", 2), ("unknown", 1), ("skipped", 4))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    url = bench_database_url("demur_console_bench")
    env = django_env(url, LOG_LEVEL="WARNING", ALLOWED_HOSTS="testserver")
    manage("migrate", "-v0", env=env)
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse
    from django.utils import timezone

    from campaigns.console import launch_estimate, progress_panel
    from campaigns.models import Campaign
    from campaigns.selectors import campaign_progress
    from campaigns.services import notice_versions_freeze
    from optout.models import Purpose

    n = args.deliveries
    psql(url, "DELETE FROM campaigns_delivery; DELETE FROM campaigns_noticeversion; DELETE FROM campaigns_campaign")
    psql(url, "TRUNCATE campaigns_recipient")
    purpose = Purpose.objects.get_or_create(slug="ai-training", defaults={"name": "training and improving AI models"})[
        0
    ]
    campaign = Campaign.objects.create(
        name="bench",
        purpose=purpose,
        controller_name="Example Social Ltd",
        product_name="Demur Social",
        training_starts_on=dt.date(2027, 1, 27),
        dpo_email="dpo@example.com",
        contact_email="privacy@example.com",
        policy_url="https://example.com/privacy",
    )
    version = notice_versions_freeze(campaign_id=campaign.pk)[0]
    cases = " ".join(
        f"WHEN g % 100 < {sum(share for _s, share in MIX[: i + 1])} THEN '{status}'"
        for i, (status, _share) in enumerate(MIX)
    )
    psql(
        url,
        "INSERT INTO campaigns_recipient (subject_id, email, language, country, created_at, updated_at) "
        f"SELECT 's-' || g, 'u' || g || '@example.org', 'de', 'DE', now(), now() FROM generate_series(1, {n}) g; "
        "INSERT INTO campaigns_delivery (campaign_id, subject_id, channel, notice_version_id, status, attempts, "
        "message_id, error, sent_at, delivered_at) "
        f"SELECT {campaign.pk}, 's-' || g, 'mail', {version.pk}, CASE {cases} END, 1, '', '', "
        "CASE WHEN g % 100 < 60 THEN now() - (g % 1200) * interval '1 second' END, "
        "CASE WHEN g % 100 < 50 THEN now() END "
        f"FROM generate_series(1, {n}) g; ANALYZE campaigns_delivery; ANALYZE campaigns_recipient",
    )
    Campaign.objects.filter(pk=campaign.pk).update(status="running", launched_at=timezone.now() - dt.timedelta(hours=1))
    campaign.refresh_from_db()
    User.objects.filter(username="bench").delete()
    client = Client()
    client.force_login(User.objects.create_superuser("bench", "bench@example.org", "bench"))
    progress_url = reverse("admin:campaigns_campaign_progress", args=[campaign.pk])
    assert client.get(progress_url).status_code == 200

    rows = []
    for label, run in (
        ("campaign_progress (GROUP BY)", lambda: campaign_progress(campaign_id=campaign.pk)),
        ("progress_panel", lambda: progress_panel(campaign=campaign)),
        ("progress page over HTTP", lambda: client.get(progress_url)),
        ("launch estimate (audience count)", lambda: launch_estimate(campaign=campaign)),
    ):
        median, runs = median_seconds(run, repeats=args.repeats)
        print(f"  {label} runs (ms): {', '.join(f'{t * 1000:.0f}' for t in runs)}")
        rows.append((label, median * 1000, "ms"))
    report(
        f"Campaign console on {n:,} deliveries and {n:,} recipients (median, lower is better)",
        rows,
        baseline="campaign_progress (GROUP BY)",
    )


if __name__ == "__main__":
    main()
