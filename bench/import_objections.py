"""Benchmark: `manage.py import_objections` of N rows on PostgreSQL, beside `psql \\copy`
of the same file into a bare table (the floor for getting those bytes into PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_bench \\
        .venv/bin/python bench/import_objections.py --rows 1000000 --repeats 3

Each repeat starts from an empty ledger. The import figure includes the command's
start-up, the validation pass, COPY into staging, hashing every event and the state
upserts. Target (issue 2): at least 100,000 rows/s for 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import bench_database_url, django_env, manage, median_seconds, psql, report  # noqa: E402

SOURCES = ["email-link", "in-app", "web-form", "api", "gpc"]


def write_csv(path: Path, rows: int) -> None:
    start = datetime(2024, 6, 1, tzinfo=UTC)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["subject_id", "purpose", "received_at", "source", "email"])
        for n in range(rows):
            received = start + timedelta(seconds=n * 7)
            email = f"user{n}@example.org" if n % 10 == 0 else ""
            out.writerow(
                [f"acct-{n:09d}", "ai-training", received.strftime("%Y-%m-%dT%H:%M:%SZ"), SOURCES[n % 5], email]
            )


def empty_ledger(url: str) -> None:
    psql(
        url,
        "ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_truncate;"
        "ALTER TABLE optout_objectionstate DISABLE TRIGGER demur_state_no_truncate;"
        "TRUNCATE optout_objectionstate, optout_objectionevent CASCADE;"
        "ALTER TABLE optout_objectionevent ENABLE TRIGGER demur_ledger_no_truncate;"
        "ALTER TABLE optout_objectionstate ENABLE TRIGGER demur_state_no_truncate;",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    url = bench_database_url("demur_bench")
    env = django_env(url)
    manage("migrate", "-v0", env=env)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "objections.csv"
        write_csv(path, args.rows)
        print(f"{args.rows:,} rows, {path.stat().st_size / 1e6:.0f} MB CSV; {args.repeats} repeats each")

        psql(
            url,
            "DROP TABLE IF EXISTS bench_bare; CREATE TABLE bench_bare (subject_id text, purpose text, received_at timestamptz, source text, email text)",
        )
        copy_median, copy_all = median_seconds(
            lambda: subprocess.run(
                ["psql", "-q", url, "-c", f"\\copy bench_bare FROM '{path}' CSV HEADER"], check=True
            ),
            repeats=args.repeats,
            before=lambda: psql(url, "TRUNCATE bench_bare"),
        )
        import_median, import_all = median_seconds(
            lambda: manage("import_objections", str(path), env=env),
            repeats=args.repeats,
            before=lambda: empty_ledger(url),
        )
        count = int(psql(url, "SELECT count(*) FROM optout_objectionevent"))
        assert count == args.rows, f"expected {args.rows} events, found {count}"
        reimport_median, _ = median_seconds(lambda: manage("import_objections", str(path), env=env), repeats=1)
        assert int(psql(url, "SELECT count(*) FROM optout_objectionevent")) == args.rows
        verify = manage("verify_ledger", env=env).stdout.strip()
        psql(url, "DROP TABLE bench_bare")

    print(f"  psql \\copy runs (s): {', '.join(f'{t:.2f}' for t in copy_all)}")
    print(f"  import runs (s):      {', '.join(f'{t:.2f}' for t in import_all)}")
    report(
        "Import of past objections (rows/s, median; higher is better)",
        [
            ("psql \\copy into a bare table", args.rows / copy_median, "rows/s"),
            ("manage.py import_objections", args.rows / import_median, "rows/s"),
            ("re-import of the same file", args.rows / reimport_median, "rows/s"),
        ],
        baseline="psql \\copy into a bare table",
    )
    print(f"  after the runs: {verify}")


if __name__ == "__main__":
    main()
