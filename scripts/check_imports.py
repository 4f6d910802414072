"""Check that Demur's imports run one way: no import circle, and no package importing one
above it.

The layers, lowest first (README, "Where things live"):

    core       shared infrastructure: countries, the API's base and error shape, CSV
               reading, the audit log, metrics counters, the request id
    optout     the objection ledger, its pages and its API
    campaigns  audience, notices, deliveries; uses the ledger
    config     the project: settings, URLs, the Celery app, health and /metrics

A module may import its own package and the packages below it, never one above. Every
import counts, at module level or inside a function: a function-level import that closes
a circle is still a circle, only a hidden one. Migrations are left out (Django loads them
by name). Exits 1 and names each finding; CI runs it.

    .venv/bin/python scripts/check_imports.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["core", "optout", "campaigns", "config"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_party_modules() -> dict[str, Path]:
    modules = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The first-party modules that `module` imports (a name imported from a package
    counts as its submodule when one of that name exists)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    known = first_party_modules()
    graph = {module: imported(module, path, known) for module, path in known.items()}
    problems = []
    rank = {package: position for position, package in enumerate(LAYERS)}
    for module in sorted(graph):
        for target in sorted(graph[module]):
            if rank[target.split(".")[0]] > rank[module.split(".")[0]]:
                problems.append(f"{module} imports {target}, a layer above it")
    for component in cycles(graph):
        problems.append("import circle: " + " <-> ".join(component))
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"imports run one way: {len(graph)} modules, layers {' < '.join(LAYERS)}, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
