"""The import graph: layers, a headless engine, and no cycles (docs/architecture.md).

The contracts are in pyproject.toml ([tool.importlinter]); `lint-imports` checks them.
The cycle check is here: a cycle inside one layer (two modules of a package importing
each other, even lazily inside functions or under TYPE_CHECKING) breaks no layer, but
still means neither module can be understood, tested or moved without the other.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from itertools import pairwise
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    """Analyse this checkout (not an installed copy), with plain, unwrapped output."""
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    fallback = "from importlinter.cli import lint_imports_command as c; c()"
    command = [str(lint)] if lint.exists() else [sys.executable, "-c", fallback]
    proc = subprocess.run([*command, "--no-cache", "--no-logo", "pyproject.toml"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, (
        f"import contracts broken (pyproject.toml [tool.importlinter], docs/architecture.md):\n"
        f"{proc.stdout}{proc.stderr}")


# -- cycles ---------------------------------------------------------------------------------


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), those of two modules or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return sorted(found)


def _shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """start -> … -> start, the fewest imports, through modules of one component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & within):
            if succ == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return [start, *reversed(chain[:-1]), start]
            if succ not in previous:
                previous[succ] = node
                queue.append(succ)
    raise AssertionError(f"{start} is in a cycle but none was found")


def _describe(graph: grimp.ImportGraph, chain: list[str]) -> str:
    lines = []
    for importer, imported in pairwise(chain):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = ", ".join(f"l.{d['line_number']}: {d['line_contents']}" for d in details[:2])
        lines.append(f"    {importer} -> {imported}  ({where})")
    return "\n".join(lines)


def find_cycles() -> list[str]:
    """Each import cycle among the engine's modules, as a chain with the importing lines.

    Module level: a package's __init__ is a module too, so a submodule importing the
    package that re-exports it is a cycle. Every import counts, as in the contracts:
    lazy ones inside functions and those under `if TYPE_CHECKING:`.
    """
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("engine", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    reports = []
    for component in _strongly_connected(imports):
        members = set(component)
        seen: set[tuple[str, ...]] = set()
        chains = []
        for module in component:  # the shortest cycle through each member, once each
            chain = _shortest_cycle(imports, module, members)
            key = tuple(sorted(chain[:-1]))
            if key not in seen:
                seen.add(key)
                chains.append(_describe(graph, chain))
        reports.append(f"cycle among {', '.join(component)}:\n" + "\n  and\n".join(chains))
    return reports


def test_no_import_cycles():
    cycles = find_cycles()
    assert not cycles, (
        f"{len(cycles)} import cycle(s) in engine; move what both modules need into a module "
        f"below both (docs/architecture.md):\n\n" + "\n\n".join(cycles))


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert _strongly_connected(graph) == [["a", "b", "c"], ["e", "f"]]
    assert _shortest_cycle(graph, "b", {"a", "b", "c"}) == ["b", "c", "a", "b"]
