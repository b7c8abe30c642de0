"""The package's layers stay one-way: no import cycle (function-local imports included), each layer
imports only the layers below it, and the report reads records without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "benchmark"

ALLOWED = {
    "core": {"core"},
    "data": {"core", "data", "registry"},
    "model": {"core", "model"},
    "adapt": {"core", "model", "adapt"},
    "registry": {"core", "registry"},
    "run": {"core", "data", "model", "adapt", "registry", "run"},
    "report": {"core", "report"},
    "cli": {"core", "data", "model", "adapt", "registry", "run", "report", "cli", "cli_parser"},
    "cli_parser": {"core", "data", "adapt", "registry", "run", "report", "cli_parser"},
    "tools": {"core", "data", "model", "tools"},
    "__init__": set(),
    "adapter": {"adapt"},
    "losses": {"adapt"},
}
"""Layer -> the layers its modules may import (``benchmark/__init__.py`` names its public imports
lazily, by string, and imports nothing; ``benchmark/adapter.py`` and ``benchmark/losses.py`` are the
README's old import paths, re-exporting the toolbox)."""


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every ``benchmark`` module ``path`` imports, anywhere in the file (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("benchmark") and name in known:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, known) - {name} for name, path in mods.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_only_what_they_may():
    wrong = [
        f"{m} -> {t}"
        for m, targets in graph().items()
        for t in sorted(targets)
        if layer(t) not in ALLOWED[layer(m)] and layer(t) != "__init__"
    ]
    assert wrong == []


@pytest.mark.parametrize("module", ["benchmark.report.build", "benchmark.core.records", "benchmark"])
def test_report_layer_imports_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_no_module_over_500_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}
