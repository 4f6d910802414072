"""Tiny helpers shared by the benchmarks: repeat, take medians, print with a baseline.

Machines here are shared and noisy, so every figure is the median of several runs and is
printed beside a baseline measured in the same run on the same machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(
    run: Callable[[], None], *, repeats: int, before: Callable[[], None] | None = None
) -> tuple[float, list[float]]:
    """Run `before` (untimed) then `run` (timed) `repeats` times; the median and all times."""
    times = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def report(title: str, rows: list[tuple[str, float, str]], *, baseline: str) -> None:
    """Print `rows` of (label, value, unit) with each value's ratio to the baseline row."""
    base = next(value for label, value, _ in rows if label == baseline)
    print(f"\n{title}")
    width = max(len(label) for label, _, _ in rows)
    for label, value, unit in rows:
        ratio = value / base if base else float("nan")
        print(f"  {label:<{width}}  {value:>14,.0f} {unit:<10} {ratio:6.2f}x {baseline}")


def django_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, DATABASE_URL=database_url, DEBUG="true", DJANGO_SETTINGS_MODULE="config.settings")
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode:
        sys.exit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def psql(database_url: str, sql: str) -> str:
    return subprocess.run(["psql", "-qAt", database_url, "-c", sql], check=True, capture_output=True, text=True).stdout


def ensure_database(database_url: str) -> None:
    """Create the benchmark database if missing (never touches any other database)."""
    name = database_url.rsplit("/", 1)[1]
    server = database_url.rsplit("/", 1)[0] + "/postgres"
    exists = psql(server, f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()
    if not exists:
        psql(server, f'CREATE DATABASE "{name}"')


def bench_database_url(default_name: str) -> str:
    """DATABASE_URL (or a local database of the given name), which must be PostgreSQL,
    created if missing."""
    url = os.environ.get("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{default_name}")
    if not url.startswith("postgres"):
        sys.exit("This benchmark needs DATABASE_URL=postgres://...")
    ensure_database(url)
    return url
