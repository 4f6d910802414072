"""How fast can the ledger's two tables take a million rows at all? The floor under any
`import_objections`: N events and their N states, already validated, deduplicated,
hashed and numbered in advance, are COPYed straight into the real tables, with no work
left but PostgreSQL's own (parsing, heap, WAL, indexes, triggers, foreign keys). Then
the same into the same tables with one part taken away at a time, so each part's price
shows. Every step runs in a transaction that is rolled back; foreign keys are checked at
once (SET CONSTRAINTS ALL IMMEDIATE), so their price falls inside the step.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/demur_bench \\
        .venv/bin/python bench/import_objections_floor.py --rows 1000000 --repeats 3

The baseline is `psql \\copy` of the import's own CSV into a bare table, as in
bench/import_objections.py. The "what if" steps change the schema inside their rolled-back
transaction (this needs the table owner, and takes its lock): they measure, they are not
proposals. The database's backend CPU time is printed too: it moves less than wall time
when the machine is busy.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import bench_database_url, django_env, manage, psql, report  # noqa: E402
from bench.import_objections import empty_ledger, write_csv  # noqa: E402

EVENT_COLUMNS = (
    "id, uuid, subject_id, email, purpose_id, action, source, reason, staff_user, received_at, effective_at, "
    "recorded_at, receipt_code, prev_hash, hash"
)
STATE_COLUMNS = (
    "subject_id, purpose_id, objected, source, received_at, effective_at, receipt, last_event_id, head_hash, updated_at"
)


def write_rows(events: Path, states: Path, rows: int, purpose_id: int, first_id: int) -> None:
    """COPY text lines for `rows` events and their states, shaped as the import writes them."""
    start = datetime(2024, 6, 1, tzinfo=UTC)
    recorded = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    millis = int(time.time() * 1000)
    genesis = "0" * 64
    with events.open("w") as ev, states.open("w") as st:
        for n in range(rows):
            subject = f"acct-{n:09d}"
            at = (start + timedelta(seconds=n * 7)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
            value = (millis + n // 4096) << 80 | 0x7 << 76 | (n % 4096) << 64 | 0x2 << 62 | random.getrandbits(62)
            hexed = f"{value:032x}"
            uuid = f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
            digest = hashlib.sha256(f"{uuid}{subject}".encode()).hexdigest()
            event_id = first_id + n
            ev.write(
                f"{event_id}\t{uuid}\t{subject}\t\t{purpose_id}\tobjected\tapi\t\t\t{at}\t{at}\t{recorded}"
                f"\t{n % 16777216}\t{genesis}\t{digest}\n"
            )
            st.write(f"{subject}\t{purpose_id}\tt\tapi\t{at}\t{at}\t0000-0000-0000\t{event_id}\t{digest}\t{recorded}\n")


def _backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _copy(conn: psycopg.Connection, table: str, columns: str, path: Path) -> None:
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy, path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            copy.write(chunk)


def timed(conn: psycopg.Connection, pid: int, setup: list[str], load: Callable[[], None], repeats: int):
    """Median wall and backend CPU seconds of `setup` + `load`, each run rolled back."""
    walls, cpus = [], []
    for _ in range(repeats):
        with conn.transaction(force_rollback=True):
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for sql in setup:
                conn.execute(sql)
            cpu, wall = _backend_cpu(pid), time.perf_counter()
            load()
            walls.append(time.perf_counter() - wall)
            cpus.append(_backend_cpu(pid) - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    url = bench_database_url("demur_bench")
    manage("migrate", "-v0", env=django_env(url))
    empty_ledger(url)

    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True) as conn:
        csv_path, events, states = Path(tmp) / "objections.csv", Path(tmp) / "events.tsv", Path(tmp) / "states.tsv"
        write_csv(csv_path, args.rows)
        (purpose_id,) = conn.execute("SELECT id FROM optout_purpose WHERE slug = 'ai-training'").fetchone()
        (first_id,) = conn.execute("SELECT nextval('optout_objectionevent_id_seq')").fetchone()
        write_rows(events, states, args.rows, purpose_id, first_id)
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        print(f"{args.rows:,} rows; {args.repeats} repeats each, medians; every step rolled back")

        psql(url, "DROP TABLE IF EXISTS bench_bare; CREATE TABLE bench_bare (subject_id text, purpose text, "
                  "received_at timestamptz, source text, email text)")  # fmt: skip
        copies = []
        for _ in range(args.repeats):
            psql(url, "TRUNCATE bench_bare")
            start = time.perf_counter()
            subprocess.run(["psql", "-q", url, "-c", f"\\copy bench_bare FROM '{csv_path}' CSV HEADER"], check=True)
            copies.append(time.perf_counter() - start)
        psql(url, "DROP TABLE bench_bare")

        def events_in(table: str = "optout_objectionevent") -> Callable[[], None]:
            return lambda: _copy(conn, table, EVENT_COLUMNS, events)

        def both() -> None:
            _copy(conn, "optout_objectionevent", EVENT_COLUMNS, events)
            _copy(conn, "optout_objectionstate", STATE_COLUMNS, states)

        bare = "CREATE TEMP TABLE bare_events (LIKE optout_objectionevent INCLUDING DEFAULTS) ON COMMIT DROP"
        # The foreign-key checks are "system" triggers: all off, then the ledger's own back on.
        no_fk = [
            "ALTER TABLE optout_objectionevent DISABLE TRIGGER ALL",
            "ALTER TABLE optout_objectionevent ENABLE TRIGGER USER",
        ]
        collate = [
            "DROP INDEX optout_event_subject",
            'ALTER TABLE optout_objectionevent ALTER subject_id TYPE varchar(128) COLLATE "C"',
            "CREATE INDEX optout_event_subject ON optout_objectionevent (subject_id, purpose_id, id)",
        ]
        steps = [
            ("events and states, as the import writes them", [], both),
            ("  events alone", [], events_in()),
            ("  states alone", [], lambda: _copy(conn, "optout_objectionstate", STATE_COLUMNS, states)),
            ("  events, bare table (no index or trigger)", [bare], events_in("bare_events")),
            ("  events without the foreign-key checks", no_fk, events_in()),
            (
                "  events without the unique uuid index",
                ["ALTER TABLE optout_objectionevent DROP CONSTRAINT optout_objectionevent_uuid_key"],
                events_in(),
            ),
            ('  events with subject_id COLLATE "C"', collate, events_in()),
        ]
        figures = []
        for label, setup, load in steps:
            wall, cpu = timed(conn, pid, setup, load, args.repeats)
            figures.append((label, args.rows / wall, "rows/s"))
            print(f"  {label:<48} {wall:6.2f} s wall, {cpu:6.2f} s database CPU", flush=True)
    empty_ledger(url)
    report(
        "Writing precomputed rows into the ledger's tables (rows/s, median; higher is better)",
        [("psql \\copy of the CSV into a bare table", args.rows / statistics.median(copies), "rows/s"), *figures],
        baseline="psql \\copy of the CSV into a bare table",
    )


if __name__ == "__main__":
    main()
