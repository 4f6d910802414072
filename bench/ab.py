"""One benchmark in two worktrees, A and B, run alternately: the medians of each figure,
B/A, and each side's ratio to the baseline it printed in the same run.

    .venv/bin/python bench/ab.py --a /tmp/bench-base --b /tmp/bench-after --db feed --rounds 3 \\
        -- .venv/bin/python bench/api_feed.py --events 200000 --repeats 1

The command after `--` runs from each worktree's root (relative paths resolve there, so
each side runs its own bench file on its own code and venv; --b-command gives B another
command when a bench changed its options). Rounds alternate which side goes first (A B,
B A, A B, ...) so both see the same drift of a shared machine. Each side has its own
database, postgres://postgres@127.0.0.1:5432/demur_ab_<db>_a and ..._b (created by the
bench, migrated by its own side's code; --fresh drops both first), and its own database
numbers of a private redis-server on a free port (CACHE_URL, BENCH_CACHE_URL,
BENCH_BROKER_URL), stopped at the end; BENCH_SMTP_PORT is a free port.

Figures are read from what the benches already print, nothing added to them: every row
of bench/_harness.py's report(), and the benches' own summary lines (LINES below). As
report() rounds to whole units (12 ms), `python bench/x.py` is started through SHIM, which
has report() also print its rows unrounded as JSON. A figure is "worse" by its unit: rates
(.../s) and ratios (x) should rise, ms, s and MB fall; one worse in B by more than
--threshold (10 %) is flagged. Run A against A first to see how far a figure moves by
itself on this machine. Every run's output is kept in --log-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

SERVER = "postgres://postgres@127.0.0.1:5432"

# Runs `python bench/x.py ARGS` with report() also printing its rows unrounded.
SHIM = """
import json, runpy, sys
sys.argv = sys.argv[1:]
import bench._harness as harness
plain = harness.report
def report(title, rows, *, baseline):
    plain(title, rows, baseline=baseline)
    print("ab-report " + json.dumps([title, baseline, rows]), flush=True)
harness.report = report
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# (pattern, figure name, unit, baseline figure or None) for lines report() does not print.
LINES = [
    # notice_render.py
    (r"^  (?P<l>.+?)\s+(?P<v>[\d,]+) messages/s", "{l}", "messages/s", "bare Jinja2 render"),
    # api_check.py
    (r"^  (?P<l>HTTP|bare SQL|selector)\s+p50\s+(?P<v>[\d.]+) ms", "check {l} p50", "ms", "check bare SQL p50"),
    (r"^  (?P<l>HTTP|bare SQL|selector)\s+p50.*?p99\s+(?P<v>[\d.]+) ms", "check {l} p99", "ms", "check bare SQL p99"),
    # api_feed.py
    (r"^  (?P<l>HTTP[^/]*?) / COPY: (?P<v>[\d.]+)x", "{l} / COPY", "x", None),
    # dashboard.py
    (r"^  (?P<l>.+?)\s+n=\d+\s+median\s+(?P<v>[\d.]+)", "{l} median", "ms", "admin index page (baseline) median"),
    (
        r"^  (?P<l>.+?)\s+n=\d+\s+median\s+[\d.]+\s+p95\s+(?P<v>[\d.]+)",
        "{l} p95",
        "ms",
        "admin index page (baseline) p95",
    ),
    # optout_pages.py
    (
        r"^  baseline \(insert one row\):\s+(?P<v>[\d.]+) req/s",
        "max, insert-one-row view",
        "req/s",
        "max, insert-one-row view",
    ),
    (r"^  objection POST:\s+(?P<v>[\d.]+) req/s", "max, objection POST", "req/s", "max, insert-one-row view"),
    (
        r"^  CPU per request, (?P<l>\w+)\s*: gunicorn (?P<v>[\d.]+) ms",
        "CPU/request gunicorn, {l}",
        "ms",
        "CPU/request gunicorn, baseline",
    ),
    (
        r"^  CPU per request, (?P<l>\w+)\s*: .* postgres (?P<v>[\d.]+) ms",
        "CPU/request postgres, {l}",
        "ms",
        "CPU/request postgres, baseline",
    ),
    (
        r"^  (?P<l>baseline|objection)\s+at\s+[\d.]+/s: p50\s+(?P<v>[\d.]+) ms",
        "half load {l} p50",
        "ms",
        "half load baseline p50",
    ),
    (
        r"^  (?P<l>baseline|objection)\s+at\s+[\d.]+/s: .*p99\s+(?P<v>[\d.]+) ms",
        "half load {l} p99",
        "ms",
        "half load baseline p99",
    ),
    (r"^  p50 (?P<v>[\d.]+) ms, p99 [\d.]+ ms, never seen", "POST to visible in feed p50", "ms", None),
    (r"^  p50 [\d.]+ ms, p99 (?P<v>[\d.]+) ms, never seen", "POST to visible in feed p99", "ms", None),
    # campaign_send.py
    (r"^  worker peak RSS \(MB\): (?P<v>[\d.]+)", "worker 1 peak RSS", "MB", None),
    (r"^  worker peak RSS \(MB\): [\d.]+, (?P<v>[\d.]+)", "worker 2 peak RSS", "MB", None),
    # audience_import.py's stages, campaign_launch.py's seconds
    (r"^  (?P<l>[A-Za-z][^:]+?)\s+[\d.]+ s\s+(?P<v>[\d,]+) rows/s$", "stage: {l}", "rows/s", None),
    (r"^  campaign_launch median: (?P<v>[\d.]+) s", "campaign_launch median", "s", None),
    # import_objections_steps.py and import_objections_floor.py: database CPU per step
    (r"^[\d,]+ rows; psql \\copy into a bare table: (?P<v>[\d.]+) s", "psql \\copy", "s", None),
    (r"^\s+(?P<l>\S.+?)\s+[\d.]+ s wall\s+(?P<v>[\d.]+) s database CPU", "database CPU: {l}", "s", None),
    (r"^\s+(?P<l>\S.+?)\s+[\d.]+ s wall, +(?P<v>[\d.]+) s database CPU", "database CPU: {l}", "s", None),
]


def figures(output: str) -> dict[str, tuple[float, str, str | None]]:
    """{figure: (value, unit, baseline figure)} from one run's stdout."""
    found = {}
    for line in output.splitlines():
        if line.startswith("ab-report "):
            _title, baseline, rows = json.loads(line.removeprefix("ab-report "))
            for label, value, unit in rows:
                found[label.strip()] = (float(value), unit.strip(), baseline.strip())
            continue
        for pattern, name, unit, baseline in LINES:
            if match := re.search(pattern, line):
                label = match.groupdict().get("l", "")
                found[name.format(l=label)] = (float(match["v"].replace(",", "")), unit, baseline)
    return found


def higher_is_better(unit: str) -> bool:
    return unit.endswith("/s") or unit == "x"


def num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_shim(command: list[str]) -> list[str]:
    """`python bench/x.py ...` becomes `python -c SHIM bench/x.py ...`; other commands stay."""
    for i, word in enumerate(command[1:], 1):
        if word.endswith(".py") and "python" in Path(command[i - 1]).name:
            return [*command[:i], "-c", SHIM, *command[i:]]
    return command


def psql(sql: str) -> None:
    subprocess.run(["psql", "-qAt", f"{SERVER}/postgres", "-c", sql], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, type=Path, help="worktree A (before)")
    parser.add_argument("--b", required=True, type=Path, help="worktree B (after)")
    parser.add_argument("--db", help="databases demur_ab_<db>_a and demur_ab_<db>_b (none: DATABASE_URL unset)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="drop both databases before the first round")
    parser.add_argument("--b-command", help="B's command, if it differs (one shell-quoted string)")
    parser.add_argument("--threshold", type=float, default=0.10, help="flag B worse than A by more than this")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench-ab-logs"))
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the bench command, run in each worktree")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the bench command after --")
    commands = {"A": command, "B": shlex.split(args.b_command) if args.b_command else command}
    roots = {"A": args.a.resolve(), "B": args.b.resolve()}
    names = {side: f"demur_ab_{args.db}_{side.lower()}" for side in roots} if args.db else {}
    if args.fresh:
        for name in names.values():
            psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    args.log_dir.mkdir(parents=True, exist_ok=True)
    bench_name = next((Path(w).stem for w in command if w.endswith(".py")), "bench")

    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    try:
        time.sleep(0.5)
        for round_no in range(args.rounds):
            order = ("A", "B") if round_no % 2 == 0 else ("B", "A")
            for side in order:
                first = 0 if side == "A" else 3  # each side its own redis database numbers
                env = dict(
                    os.environ,
                    CACHE_URL=f"redis://127.0.0.1:{redis_port}/{first}",
                    BENCH_CACHE_URL=f"redis://127.0.0.1:{redis_port}/{first + 1}",
                    BENCH_BROKER_URL=f"redis://127.0.0.1:{redis_port}/{first + 2}",
                    BENCH_SMTP_PORT=str(free_port()),
                )
                env.pop("DATABASE_URL", None)
                if names:
                    env["DATABASE_URL"] = f"{SERVER}/{names[side]}"
                load = os.getloadavg()[0]
                started = time.monotonic()
                done = subprocess.run(
                    with_shim(commands[side]), cwd=roots[side], env=env, capture_output=True, text=True
                )
                seconds = time.monotonic() - started
                log = args.log_dir / f"{bench_name}-{args.db or 'nodb'}-r{round_no + 1}-{side}.log"
                log.write_text(
                    f"$ (cd {roots[side]} && {shlex.join(commands[side])})\n{done.stdout}\n--- stderr\n{done.stderr}"
                )
                print(
                    f"round {round_no + 1} {side}: {seconds:5.0f} s, load {load:.1f} before, exit {done.returncode}, log {log}",
                    flush=True,
                )
                if done.returncode:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                runs[side].append(figures(done.stdout))
    finally:
        redis.terminate()
        redis.wait(10)

    print(f"\n{bench_name}: {args.rounds} rounds, medians; A = {roots['A']}, B = {roots['B']}")
    print("| figure | unit | A | B | B/A | paired B/A | A / its baseline | B / its baseline | baseline |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    flagged = []
    for name in dict.fromkeys(k for run in runs["A"] + runs["B"] for k in run):
        values = {side: [run[name][0] for run in runs[side] if name in run] for side in runs}
        if not values["A"] or not values["B"]:
            print(f"| {name} | | {'only in B' if not values['A'] else 'only in A'} | | | | | | |")
            continue
        unit, baseline = next(run[name][1:] for run in runs["A"] if name in run)
        ratios = defaultdict(list)
        for side in runs:
            for run in runs[side]:
                if baseline and baseline != name and name in run and baseline in run and run[baseline][0]:
                    ratios[side].append(run[name][0] / run[baseline][0])
        a, b = statistics.median(values["A"]), statistics.median(values["B"])
        paired = [vb / va for va, vb in zip(values["A"], values["B"], strict=False) if va] or [float("nan")]
        change = b / a if a else float("nan")
        worse = (1 - change) if higher_is_better(unit) else (change - 1)
        flag = " **worse by %.0f %%**" % (worse * 100) if worse > args.threshold else ""
        if flag:
            flagged.append(name)
        cells = [f"{statistics.median(ratios[side]):.3g}x" if ratios[side] else "" for side in runs]
        print(
            f"| {name} | {unit} | {num(a)} | {num(b)} | {change:.3f}{flag} | "
            f"{statistics.median(paired):.3f} | {cells[0]} | {cells[1]} | {baseline if cells[0] else ''} |"
        )
    print(f"\nworse by more than {args.threshold:.0%} in B: {', '.join(flagged) if flagged else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
