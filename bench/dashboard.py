"""Benchmark: the campaign dashboard of a campaign with 1,000,000 deliveries and 50,000
objections, through the Django test client, beside baselines measured in the same run
(the admin index page, and a bare `SELECT count(*)` over the campaign's deliveries).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_dashboard_bench \\
        .venv/bin/python bench/dashboard.py --repeats 30

The data set is built once with generate_series (700,000 recipients in 26 languages and
13 countries; 700,000 mails and 300,000 in-app notices with tracking timestamps; 50,000
objections pointing at the campaign, 2,000 later withdrawals, and 500,000 unrelated
ledger events) and kept; `--rebuild` drops and builds it again. Target (issue 7): under 1 s.

It times three things: the page answered from the cached aggregates (what staff see),
the page right after the cache was emptied, and the count alone. The bench has no
broker, so Celery runs the count inside that request, as in the quick start; with a
broker the page answers at once that the first count is under way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import bench_database_url, django_env, ensure_database, manage, median_seconds, psql  # noqa: E402

# Every event's feed position: its transaction's, as the ledger's writers give it (one
# scalar subquery, evaluated once per statement).
FEED_KEY = "(SELECT base + pg_current_xact_id()::text::bigint FROM demur_ledger_epoch())"
COUNTRIES = ["DE", "FR", "IT", "ES", "PL", "NL", "GR", "SE", "CZ", "PT", "IE", "MT", "BG"]


def build(url: str, *, recipients: int, inapp: int, objections: int, withdrawals: int, noise: int) -> None:
    from django.conf import settings

    languages = [code for code, _name in settings.LANGUAGES]
    started = time.perf_counter()
    psql(
        url,
        f"""
        INSERT INTO optout_purpose (slug, name, description) VALUES ('ai-training', 'training and improving AI models', '')
            ON CONFLICT (slug) DO NOTHING;
        INSERT INTO campaigns_campaign (name, purpose_id, status, created_at, notice_template, controller_name,
            product_name, dpo_email, contact_email, policy_url, send_mail, send_inapp, countries, languages,
            send_rate, objected_policy, launched_at, ended_at, pause_reason)
        SELECT 'bench', id, 'completed', now() - interval '40 days', 'ai-training', 'Example Social Ltd', 'Demur Social',
            'dpo@example.com', 'privacy@example.com', 'https://example.com/privacy', true, true, '[]', '[]', 50, 'variant',
            now() - interval '35 days', now() - interval '5 days', ''
        FROM optout_purpose WHERE slug = 'ai-training';
        INSERT INTO campaigns_noticeversion (campaign_id, language, content_hash, subject, body_html, body_text,
            created_at, direction, preheader, inapp_body, objected_subject, objected_preheader, objected_body_html,
            objected_body_text, objected_inapp_body, greetings, template_name, template_hash, catalog_hash)
        SELECT c.id, l.code, encode(sha256(l.code::bytea), 'hex'), 'Notice', '<p>Notice</p>', 'Notice', now(), 'ltr',
            '', '', '', '', '', '', '', '{{}}', 'ai-training', '', ''
        FROM campaigns_campaign c, unnest(ARRAY{languages!r}) AS l(code);
        INSERT INTO campaigns_recipient (subject_id, email, language, country, created_at, updated_at)
        SELECT 'acct-' || lpad(n::text, 9, '0'), 'user' || n || '@example.org',
            (ARRAY{languages!r})[1 + n % {len(languages)}], (ARRAY{COUNTRIES!r})[1 + (n / 7) % {len(COUNTRIES)}],
            now(), now()
        FROM generate_series(1, {recipients}) n;
        """,
    )
    # Mail to everyone, in-app to the first `inapp`; outcomes spread by n so that every
    # country has its own reach. Times within the 30 days after launch.
    psql(
        url,
        f"""
        INSERT INTO campaigns_delivery (campaign_id, subject_id, channel, notice_version_id, status, attempts,
            message_id, error, sent_at, delivered_at, opened_at, clicked_at, bounced_at, complained_at)
        SELECT c.id, r.subject_id, 'mail', v.id,
            CASE WHEN r.id % 50 = 0 THEN 'failed' ELSE 'sent' END, 1, '', '',
            c.launched_at + (r.id % 30) * interval '1 day',
            CASE WHEN r.id % 50 <> 0 AND r.id % 13 <> 0 THEN c.launched_at + (r.id % 30) * interval '1 day' END,
            CASE WHEN r.id % 3 = 0 AND r.id % 13 <> 0 THEN c.launched_at + (r.id % 30) * interval '1 day' END,
            CASE WHEN r.id % 19 = 0 THEN c.launched_at + (r.id % 30) * interval '1 day' END,
            CASE WHEN r.id % 50 = 0 THEN c.launched_at + (r.id % 30) * interval '1 day' END,
            CASE WHEN r.id % 997 = 0 THEN c.launched_at + (r.id % 30) * interval '1 day' END
        FROM campaigns_recipient r
        JOIN campaigns_campaign c ON c.name = 'bench'
        JOIN campaigns_noticeversion v ON v.campaign_id = c.id AND v.language = r.language;
        INSERT INTO campaigns_delivery (campaign_id, subject_id, channel, notice_version_id, status, attempts,
            message_id, error, shown_at, clicked_at)
        SELECT c.id, r.subject_id, 'inapp', v.id, 'sent', 0, '', '',
            CASE WHEN (r.id + r.id / 7) % 5 <> 0 THEN c.launched_at + (r.id % 30) * interval '1 day' END,
            CASE WHEN r.id % 17 = 0 THEN c.launched_at + (r.id % 30) * interval '1 day' END
        FROM campaigns_recipient r
        JOIN campaigns_campaign c ON c.name = 'bench'
        JOIN campaigns_noticeversion v ON v.campaign_id = c.id AND v.language = r.language
        WHERE r.id <= {inapp};
        """,
    )
    # The ledger: objections from every 14th recipient (so 50,000 of 700,000), a few
    # withdrawals, and unrelated events (imports without a campaign).
    stride = recipients // objections
    psql(
        url,
        f"""
        INSERT INTO optout_objectionevent (uuid, subject_id, email, purpose_id, action, source, reason, campaign_id,
            notice_version_id, staff_user, received_at, effective_at, recorded_at, receipt_code, prev_hash, hash,
            seq, feed_key)
        SELECT gen_random_uuid(), r.subject_id, '', c.purpose_id, 'objected',
            CASE WHEN r.id % 4 = 0 THEN 'in-app' ELSE 'email-link' END, '', c.id, v.id, '',
            c.launched_at + (r.id % 30) * interval '1 day' + (r.id % 86400) * interval '1 second',
            c.launched_at + (r.id % 30) * interval '1 day' + (r.id % 86400) * interval '1 second'
                + (r.id % 600) * interval '1 second',
            now(), r.id % 1000000, repeat('0', 64), encode(sha256(r.subject_id::bytea), 'hex'), 1, {FEED_KEY}
        FROM campaigns_recipient r
        JOIN campaigns_campaign c ON c.name = 'bench'
        JOIN campaigns_noticeversion v ON v.campaign_id = c.id AND v.language = r.language
        WHERE r.id % {stride} = 0 AND r.id <= {stride * objections};
        INSERT INTO optout_objectionevent (uuid, subject_id, email, purpose_id, action, source, reason, campaign_id,
            notice_version_id, staff_user, received_at, effective_at, recorded_at, receipt_code, prev_hash, hash,
            seq, feed_key)
        SELECT gen_random_uuid(), e.subject_id, '', e.purpose_id, 'withdrawn', 'web-form', '', NULL,
            NULL, '', e.received_at + interval '2 days', e.received_at + interval '2 days', now(),
            e.receipt_code, e.hash, encode(sha256(e.hash::bytea), 'hex'), 2, {FEED_KEY}
        FROM optout_objectionevent e WHERE e.campaign_id IS NOT NULL AND e.id % {objections // withdrawals} = 0;
        INSERT INTO optout_objectionevent (uuid, subject_id, email, purpose_id, action, source, reason,
            staff_user, received_at, effective_at, recorded_at, receipt_code, prev_hash, hash, seq, feed_key)
        SELECT gen_random_uuid(), 'old-' || n, '', p.id, 'objected', 'import', '', '',
            now() - interval '400 days', now() - interval '400 days', now(), n % 1000000, repeat('0', 64),
            encode(sha256(n::text::bytea), 'hex'), 1, {FEED_KEY}
        FROM optout_purpose p, generate_series(1, {noise}) n WHERE p.slug = 'ai-training';
        """,
    )
    for table in ("campaigns_recipient", "campaigns_delivery", "optout_objectionevent"):
        psql(url, f"VACUUM ANALYZE {table}")
    print(f"data set built in {time.perf_counter() - started:.1f} s")


def timed(run, repeats: int, before=None) -> list[float]:
    """Milliseconds of each of `repeats` runs."""
    return [t * 1000 for t in median_seconds(run, repeats=repeats, before=before)[1]]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=700_000)
    parser.add_argument("--inapp", type=int, default=300_000)
    parser.add_argument("--objections", type=int, default=50_000)
    parser.add_argument("--withdrawals", type=int, default=2_000)
    parser.add_argument("--noise", type=int, default=500_000, help="ledger events of no campaign")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cold-repeats", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    url = bench_database_url("demur_dashboard_bench")
    if args.rebuild:
        server = url.rsplit("/", 1)[0] + "/postgres"
        psql(server, f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        ensure_database(url)
    env = django_env(url, LOG_LEVEL="WARNING")
    manage("migrate", "-v0", env=env)
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from campaigns.dashboard import campaign_stats, stats_cache_key
    from campaigns.models import Campaign

    if not Campaign.objects.filter(name="bench").exists():
        build(
            url,
            recipients=args.recipients,
            inapp=args.inapp,
            objections=args.objections,
            withdrawals=args.withdrawals,
            noise=args.noise,
        )
    campaign = Campaign.objects.get(name="bench")
    deliveries = campaign.deliveries.count()
    objections = campaign.objectionevent_set.filter(action="objected").count()
    print(f"campaign {campaign.pk}: {deliveries:,} deliveries, {objections:,} objections")

    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench", "bench@example.org", "bench-password-1")
    client = Client()
    client.force_login(user)
    page = reverse("admin:demur-campaign-dashboard", args=[campaign.pk])
    index = reverse("admin:index")

    def get(path: str) -> None:
        response = client.get(path)
        assert response.status_code == 200, response.status_code

    def count() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM campaigns_delivery WHERE campaign_id = %s", [campaign.pk])
            cursor.fetchone()

    get(page)  # warm the connection, the templates and the cache
    get(index)
    rows = [
        ("admin index page (baseline)", timed(lambda: get(index), args.repeats)),
        ("bare SELECT count(*) of the deliveries (baseline)", timed(count, args.repeats)),
        ("campaign dashboard, cached aggregates", timed(lambda: get(page), args.repeats)),
        (
            "campaign dashboard, cache emptied, count in the request",
            timed(lambda: get(page), args.cold_repeats, before=lambda: cache.delete(stats_cache_key(campaign.pk))),
        ),
        (
            "aggregates alone (campaign_stats)",
            timed(lambda: campaign_stats(campaign_id=campaign.pk), args.cold_repeats),
        ),
    ]
    base_index = statistics.median(rows[0][1])
    base_count = statistics.median(rows[1][1])
    print(f"\nCampaign dashboard, {deliveries:,} deliveries, {objections:,} objections (ms; lower is better)")
    width = max(len(label) for label, _ in rows)
    for label, times in rows:
        median = statistics.median(times)
        print(
            f"  {label:<{width}}  n={len(times):<3} median {median:8.1f}  p95 {p95(times):8.1f}"
            f"  {median / base_index:6.2f}x index  {median / base_count:6.2f}x count(*)"
        )
    print("  target: under 1,000 ms")


if __name__ == "__main__":
    main()
