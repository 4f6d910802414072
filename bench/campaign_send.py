"""Benchmark: a campaign of N recipients in 10 languages sent end to end through real
Celery workers, Redis and a local SMTP sink, beside a bare smtplib loop sending the same
kind of pre-rendered messages to the same sink over one connection.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_campaigns_bench \\
        .venv/bin/python bench/campaign_send.py --recipients 100000 --workers 2

Broker and cache: BENCH_BROKER_URL and BENCH_CACHE_URL (queue "demur-bench"; the cache's
database is flushed), the sink on BENCH_SMTP_PORT. The campaign figure runs from
the launch call (freeze + deliveries) until the campaign is completed; "sending only"
from the end of the launch; the baseline is the mean of the smtplib loop run before and
after the campaign. Worker peak RSS is each worker process's VmHWM; CPU per mail is the
workers' and the sink's own CPU time divided by the mails. Target (issue 6): at least 1,000 mails/s for 100,000 recipients, workers under 250 MB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import ROOT, bench_database_url, django_env, manage, psql, report  # noqa: E402

BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6380/5")
CACHE = os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/5")
SMTP_PORT = int(os.environ.get("BENCH_SMTP_PORT", "2525"))
QUEUE = "demur-bench"
LANGUAGES = ["de", "fr", "it", "es", "pl", "nl", "el", "sv", "cs", "pt"]


def start_sink(port: int) -> subprocess.Popen:
    sink = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "campaign_sink.py"), str(port)], stdout=subprocess.PIPE, text=True
    )
    assert sink.stdout.readline().strip() == "ready"
    return sink


def stop_sink(sink: subprocess.Popen) -> dict:
    sink.terminate()
    return json.loads(sink.communicate(timeout=30)[0].strip().splitlines()[-1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-mails", type=int, default=20_000)
    args = parser.parse_args()
    url = bench_database_url("demur_campaigns_bench")
    port = SMTP_PORT
    env = django_env(url, LOG_LEVEL="WARNING", CELERY_BROKER_URL=BROKER, CACHE_URL=CACHE, CELERY_TASK_DEFAULT_QUEUE=QUEUE,
                     EMAIL_URL=f"smtp://127.0.0.1:{port}", DEMUR_DISPATCH_BATCH="500",
                     DEMUR_DISPATCH_PARALLELISM=str(args.workers))  # fmt: skip
    env.pop("EMAIL_BACKEND", None)
    manage("migrate", "-v0", env=env)
    os.environ.update(env)
    import django

    django.setup()
    import redis
    from django.core.mail import get_connection
    from django.db import connection

    from campaigns.models import Campaign, NoticeVersion
    from campaigns.notices import notice_build, notice_email
    from campaigns.services import campaign_launch
    from optout.models import Purpose

    redis.Redis.from_url(CACHE).flushdb()  # the benchmark's own database number
    redis.Redis.from_url(BROKER).delete(QUEUE)
    psql(url, "DELETE FROM campaigns_delivery; TRUNCATE campaigns_recipient")
    psql(
        url,
        "INSERT INTO campaigns_recipient (subject_id, email, language, country, created_at, updated_at) "
        f"SELECT 'acct-' || lpad(n::text, 9, '0'), 'user' || n || '@example.org', "
        f"(ARRAY{LANGUAGES!r})[1 + n % 10], 'DE', now(), now() FROM generate_series(1, {args.recipients}) n; "
        "ANALYZE campaigns_recipient",
    )
    purpose = Purpose.objects.get_or_create(slug="ai-training", defaults={"name": "training and improving AI models"})[
        0
    ]
    campaign = Campaign.objects.create(
        name="bench", purpose=purpose, controller_name="Example Social Ltd", product_name="Demur Social",
        training_starts_on=dt.date(2027, 1, 27), dpo_email="dpo@example.com", contact_email="privacy@example.com",
        policy_url="https://example.com/privacy", send_rate=1_000_000, languages=LANGUAGES,
    )  # fmt: skip

    # Baseline: the same notices, rendered once per language, sent by a bare smtplib loop.
    versions = [notice_build(campaign=campaign, language=language) for language in LANGUAGES]
    for version in versions:
        version.pk = 1  # unsaved; only the links read it
    messages = [
        notice_email(v, to="x@example.org", name="", subject_id="acct-1", connection=get_connection())
        .message()
        .as_bytes(linesep="\r\n")
        for v in versions
    ]

    def smtplib_loop() -> tuple[float, dict]:
        sink = start_sink(port)
        smtp = smtplib.SMTP("127.0.0.1", port)
        started = time.perf_counter()
        for n in range(args.baseline_mails):
            smtp.sendmail("privacy@example.org", [f"base{n}@example.org"], messages[n % len(messages)])
        rate = args.baseline_mails / (time.perf_counter() - started)
        smtp.quit()
        outcome = stop_sink(sink)
        assert outcome["mails"] == args.baseline_mails
        return rate, outcome

    def worker_sessions_cpu() -> dict[int, float]:
        """CPU time so far of every session on the database but this process's own (which
        launches): the database's share of sending, sampled while the sessions live."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            pids = [pid for (pid,) in cursor.fetchall()]
        seen = {}
        for pid in pids:
            try:
                seen[pid] = cpu_seconds(pid)
            except OSError:
                pass  # the session ended meanwhile
        return seen

    # Measured before and after the campaign: the machine's load drifts in between.
    baseline_before, baseline_sink = smtplib_loop()

    sink = start_sink(port)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "-n", f"bench{i}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i in range(args.workers)
    ]  # fmt: skip
    try:
        time.sleep(5)  # let the workers connect
        load_before = os.getloadavg()[0]
        cpu_before = sum(cpu_seconds(worker.pid) for worker in workers)
        started = time.perf_counter()
        created = campaign_launch(campaign_id=campaign.pk)
        launched = time.perf_counter()
        sessions: dict[int, float] = {}  # the workers' PostgreSQL sessions: pid -> CPU seconds seen last
        while Campaign.objects.filter(pk=campaign.pk).values_list("status", flat=True).get() != "completed":
            if any(worker.poll() is not None for worker in workers):
                sys.exit("a worker exited")
            sessions.update(worker_sessions_cpu())
            time.sleep(0.2)
        finished = time.perf_counter()
        rss = [peak_rss_mb(worker.pid) for worker in workers]
        worker_cpu = sum(cpu_seconds(worker.pid) for worker in workers) - cpu_before
        database_cpu = sum(sessions.values())
        load_after = os.getloadavg()[0]
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
    outcome = stop_sink(sink)
    baseline_after, _sink = smtplib_loop()
    baseline = (baseline_before + baseline_after) / 2
    rows = psql(url, f"SELECT status, count(*) FROM campaigns_delivery WHERE campaign_id = {campaign.pk} GROUP BY 1")
    statuses = dict(line.split("|") for line in rows.splitlines())
    assert created == args.recipients and outcome["mails"] == args.recipients and outcome["duplicates"] == 0, (
        outcome,
        statuses,
    )
    assert NoticeVersion.objects.filter(campaign=campaign).count() == 26

    print(
        f"{args.recipients:,} recipients in {len(LANGUAGES)} languages, {args.workers} solo workers; sink: {outcome}; deliveries: {statuses}"
    )
    print(
        f"  launch {launched - started:.1f} s, sending {finished - launched:.1f} s, end to end {finished - started:.1f} s"
    )
    print(
        f"  smtplib baseline {baseline_before:,.0f} mails/s before the campaign, {baseline_after:,.0f} after; the mean below"
    )
    print(f"  worker peak RSS (MB): {', '.join(f'{r:.0f}' for r in rss)}")
    print(
        f"  CPU per mail: workers {worker_cpu / args.recipients * 1e6:.0f} us, their PostgreSQL sessions"
        f" {database_cpu / args.recipients * 1e6:.0f} us, sink {outcome['cpu'] / args.recipients * 1e6:.0f} us"
        f" (sink in the smtplib baseline {baseline_sink['cpu'] / args.baseline_mails * 1e6:.0f} us);"
        f" load average {load_before:.1f} before, {load_after:.1f} after"
    )
    report(
        "Campaign mail throughput (mails/s; higher is better)",
        [
            ("bare smtplib loop, pre-rendered", baseline, "mails/s"),  # the mean of before and after
            ("campaign end to end (launch + send)", args.recipients / (finished - started), "mails/s"),
            ("campaign sending only", args.recipients / (finished - launched), "mails/s"),
        ],
        baseline="bare smtplib loop, pre-rendered",
    )


if __name__ == "__main__":
    main()
