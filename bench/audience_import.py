"""Benchmark: `manage.py import_audience` of N rows on PostgreSQL, beside `psql \\copy` of
the same file into a bare table (the floor for getting those bytes into PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_campaigns_bench \\
        .venv/bin/python bench/audience_import.py --rows 1000000 --repeats 3

Each repeat starts from an empty audience (all rows created); one more run re-imports the
same file over the full audience (all rows unchanged). The import figure includes the
command's start-up, validation, COPY into staging, the duplicate check, the update and
the insert. Then, where the time goes: each stage of the fast path timed on its own in
one process (the line check in Python, COPY, the duplicate check, the write), the same
insert into a copy of the table without its indexes, and the ON CONFLICT upsert the
write replaced. Target (issue 6): at least 100,000 rows/s for 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import bench_database_url, django_env, manage, median_seconds, psql, report  # noqa: E402

LANGUAGES = ["de", "fr", "it", "es", "pl", "nl", "el", "sv", "cs", "pt"]
COUNTRIES = ["DE", "FR", "IT", "ES", "PL", "NL", "GR", "SE", "CZ", "PT"]

# What campaigns.audience.staging_write replaced, for comparison: one upsert, whose
# ON CONFLICT inserts each row speculatively.
UPSERT_SQL = """
INSERT INTO campaigns_recipient AS r (subject_id, email, language, country, created_at, updated_at)
SELECT subject_id, email, language, country, %(now)s, %(now)s FROM audience_staging
ON CONFLICT (subject_id) DO UPDATE SET
    email = EXCLUDED.email, language = EXCLUDED.language, country = EXCLUDED.country,
    updated_at = EXCLUDED.updated_at, email_erased_at = NULL
WHERE (r.email, r.language, r.country) IS DISTINCT FROM (EXCLUDED.email, EXCLUDED.language, EXCLUDED.country)
"""


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as handle:
        handle.write("subject_id,email,language,country\n")
        handle.writelines(
            f"acct-{n:09d},user{n}@example.org,{LANGUAGES[n % 10]},{COUNTRIES[n % 10]}\n" for n in range(rows)
        )


def stages(path: Path, url: str) -> list[tuple[str, float]]:
    """Seconds per stage of the fast path, each run alone, in this process."""
    os.environ.update(django_env(url))
    import django

    django.setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from campaigns import audience

    timings: list[tuple[str, float]] = []

    def timed(label: str, run) -> None:
        start = time.perf_counter()
        run()
        timings.append((label, time.perf_counter() - start))

    def check_lines() -> None:
        pattern = audience.fast_line_pattern(["subject_id", "email", "language", "country"])
        with path.open("rb") as handle:
            handle.readline()
            tail = b""
            while chunk := handle.read(1 << 20):
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                assert audience.fast_lines_ok(pattern, lines)

    timed("line check in Python", check_lines)
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        pg = cursor.cursor
        pg.execute("DELETE FROM campaigns_delivery; TRUNCATE campaigns_recipient")
        audience.staging_create(pg)
        columns = "subject_id, email, language, country"

        def copy() -> None:
            with (
                path.open("rb") as handle,
                pg.copy(f"COPY audience_staging ({columns}) FROM STDIN (FORMAT csv, HEADER)") as out,
            ):
                while chunk := handle.read(1 << 20):
                    out.write(chunk)

        timed("COPY into the staging table", copy)
        timed("duplicate check", lambda: audience.staging_duplicated(pg))
        timed("write (UPDATE, then INSERT)", lambda: audience.staging_write(pg, now=now))
        pg.execute("TRUNCATE campaigns_recipient")
        # A plain table, logged like the real one, dropped with the rollback below.
        pg.execute("CREATE TABLE bench_bare_recipient (LIKE campaigns_recipient INCLUDING DEFAULTS INCLUDING IDENTITY)")
        bare_insert = audience.RECIPIENTS_INSERT_SQL.replace("campaigns_recipient", "bench_bare_recipient")
        timed("same INSERT, table without indexes", lambda: pg.execute(bare_insert, {"now": now}))
        timed("INSERT ... ON CONFLICT instead", lambda: pg.execute(UPSERT_SQL, {"now": now}))
        transaction.set_rollback(True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    url = bench_database_url("demur_campaigns_bench")
    env = django_env(url)
    manage("migrate", "-v0", env=env)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audience.csv"
        write_csv(path, args.rows)
        print(f"{args.rows:,} rows, {path.stat().st_size / 1e6:.0f} MB CSV; {args.repeats} repeats each")
        psql(
            url,
            "DROP TABLE IF EXISTS bench_bare; CREATE TABLE bench_bare (subject_id text, email text, language text, country text)",
        )
        copy_median, copy_all = median_seconds(
            lambda: subprocess.run(
                ["psql", "-q", url, "-c", f"\\copy bench_bare FROM '{path}' CSV HEADER"], check=True
            ),
            repeats=args.repeats,
            before=lambda: psql(url, "TRUNCATE bench_bare"),
        )
        outputs = []
        import_median, import_all = median_seconds(
            lambda: outputs.append(manage("import_audience", str(path), env=env).stdout.strip()),
            repeats=args.repeats,
            before=lambda: psql(url, "DELETE FROM campaigns_delivery; TRUNCATE campaigns_recipient"),
        )
        count = int(psql(url, "SELECT count(*) FROM campaigns_recipient"))
        assert count == args.rows, f"expected {args.rows} recipients, found {count}"
        reimport_median, _ = median_seconds(
            lambda: outputs.append(manage("import_audience", str(path), env=env).stdout.strip()), repeats=1
        )
        psql(url, "DROP TABLE bench_bare")
        breakdown = stages(path, url)

    print(f"  psql \\copy runs (s): {', '.join(f'{t:.2f}' for t in copy_all)}")
    print(f"  import runs (s):      {', '.join(f'{t:.2f}' for t in import_all)}")
    print(f"  last command outputs: {outputs[0]} / {outputs[-1]}")
    report(
        "Audience import (rows/s, median; higher is better)",
        [
            ("psql \\copy into a bare table", args.rows / copy_median, "rows/s"),
            ("manage.py import_audience", args.rows / import_median, "rows/s"),
            ("re-import of the same file", args.rows / reimport_median, "rows/s"),
        ],
        baseline="psql \\copy into a bare table",
    )
    print("\nWhere the time goes (seconds, one run each, empty audience)")
    for label, seconds in breakdown:
        print(f"  {label:<36} {seconds:6.2f} s  {args.rows / seconds:>12,.0f} rows/s")


if __name__ == "__main__":
    main()
