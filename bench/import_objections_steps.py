"""Where `import_objections` spends its time on PostgreSQL: each step of the COPY path
timed on its own (wall clock and the database backend's CPU time, which a busy machine
disturbs less), then EXPLAIN ANALYZE of the import statement with the per-row trigger
times (foreign keys checked at once instead of at commit, so they show). Everything is
rolled back.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_bench \\
        .venv/bin/python bench/import_objections_steps.py --rows 200000

The baseline printed first is `psql \\copy` of the same file into a bare table.
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
from bench._harness import bench_database_url, django_env, manage, psql  # noqa: E402
from bench.import_objections import empty_ledger, write_csv  # noqa: E402


def _backend_cpu(pid: int) -> float:
    """User + system CPU seconds of a local PostgreSQL backend (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    url = bench_database_url("demur_bench")
    os.environ.update(django_env(url))
    manage("migrate", "-v0", env=dict(os.environ))
    empty_ledger(url)

    import django

    django.setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from optout.imports import FAST_CHECK_SQL, fast_check_params
    from optout.services import STAGED_APPEND_SQL, STAGING_DDL, staged_append_params

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "objections.csv"
        write_csv(path, args.rows)
        psql(
            url,
            "DROP TABLE IF EXISTS bench_bare; CREATE TABLE bench_bare (subject_id text, purpose text, received_at timestamptz, source text, email text)",
        )
        start = time.perf_counter()
        subprocess.run(["psql", "-q", url, "-c", f"\\copy bench_bare FROM '{path}' CSV HEADER"], check=True)
        print(f"{args.rows:,} rows; psql \\copy into a bare table: {time.perf_counter() - start:.2f} s")
        psql(url, "DROP TABLE bench_bare")

        now = timezone.now()
        with transaction.atomic(), connection.cursor() as cursor, path.open("rb") as handle:
            pg = cursor.cursor
            pg.execute("SELECT pg_backend_pid()")
            (pid,) = pg.fetchone()
            mark = [time.perf_counter(), _backend_cpu(pid)]

            def step(label: str) -> None:
                wall, cpu = time.perf_counter(), _backend_cpu(pid)
                print(f"  {label:<44} {wall - mark[0]:7.2f} s wall {cpu - mark[1]:7.2f} s database CPU")
                mark[:] = [time.perf_counter(), _backend_cpu(pid)]

            header = handle.readline().decode().strip()
            pg.execute(STAGING_DDL)
            pg.execute("SET LOCAL TimeZone = 'UTC'")
            with pg.copy(f"COPY import_staging ({header}) FROM STDIN (FORMAT csv, FORCE_NOT_NULL (email))") as copy:
                while chunk := handle.read(1 << 20):
                    copy.write(chunk)
            step("COPY into staging")
            pg.execute(FAST_CHECK_SQL, fast_check_params())
            step("set-based check of every line")
            pg.execute("ANALYZE import_staging")
            pg.execute("SET LOCAL work_mem = '512MB'")
            pg.execute("SET CONSTRAINTS ALL IMMEDIATE")
            step("ANALYZE staging")
            temp_bytes = "SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()"
            pg.execute(temp_bytes)
            (temp_before,) = pg.fetchone()
            pg.execute("EXPLAIN (ANALYZE, BUFFERS, WAL) " + STAGED_APPEND_SQL, staged_append_params(now=now))
            plan = [line for (line,) in pg.fetchall()]
            step("import statement (EXPLAIN ANALYZE)")
            pg.execute("SELECT pg_stat_clear_snapshot()")
            pg.execute(temp_bytes)
            (temp_after,) = pg.fetchone()
            print(f"  temporary files written by the statement: {(temp_after - temp_before) / 1e6:.0f} MB")
            transaction.set_rollback(True)
    print("\n".join(line for line in plan if "Buffers:" not in line))


if __name__ == "__main__":
    main()
