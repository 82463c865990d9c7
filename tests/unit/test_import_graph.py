"""The layering of the code, checked on its import graph (every import, lazy ones included).

serving/ (the runtime) imports nothing of cluster/ (spec, sizing, rendering, operations) or
govllm/ (the command line); cluster/ imports nothing of govllm/; and no module, no package
and no sub-package is part of an import cycle. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serving", "cluster", "govllm", "loadtest")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


@functools.cache
def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:  # the module an imported name lives in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {owner(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                for alias in node.names:  # `from pkg import module` imports the module
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in mods else owner(base))
        graph[mod] = {t for t in targets if t and t != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _collapse(graph: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The graph between packages: each module stands for its package `depth` levels deep."""
    def pkg(mod: str) -> str:
        return ".".join(mod.split(".")[:depth])

    out: dict[str, set[str]] = defaultdict(set)
    for mod, targets in graph.items():
        out[pkg(mod)] |= {pkg(t) for t in targets if pkg(t) != pkg(mod)}
    return dict(out)


def test_the_graph_is_read_at_all():
    graph = _graph()
    assert "serving.router.request_path" in graph["serving.router.deployment"]
    assert "serving.request" in graph["serving.tenancy.quota"]


def test_no_module_is_part_of_an_import_cycle():
    assert _cycles(_graph()) == []


def test_no_package_or_subpackage_is_part_of_an_import_cycle():
    graph = _graph()
    for depth in (1, 2):
        assert _cycles(_collapse(graph, depth)) == [], f"cycle between packages at depth {depth}"


def test_serving_imports_neither_cluster_nor_the_command_line():
    graph = _graph()
    wrong = sorted((m, t) for m, ts in graph.items() if m.startswith("serving")
                   for t in ts if t.split(".")[0] in ("cluster", "govllm", "loadtest"))
    assert wrong == []


def test_cluster_does_not_import_the_command_line():
    graph = _graph()
    wrong = sorted((m, t) for m, ts in graph.items() if m.startswith("cluster")
                   for t in ts if t.split(".")[0] in ("govllm", "loadtest"))
    assert wrong == []


def test_the_request_contract_is_a_leaf_of_serving():
    """serving/request.py: tenancy, audit, the PII guard and vendor links import it, and it
    imports nothing of the router (nor anything else of serving but its config types)."""
    graph = _graph()
    assert {t for t in graph["serving.request"] if t.startswith("serving")} <= {"serving.config"}
    for mod, targets in graph.items():
        if mod.startswith(("serving.tenancy", "serving.audit", "serving.pii", "serving.vendor")):
            assert not {t for t in targets if t.startswith("serving.router")}, mod
