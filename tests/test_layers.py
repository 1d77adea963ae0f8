"""The package shows its layers: every import in src/msa runs down the layer order, never up, and
nothing imports in a circle.

Layer order (each layer imports only those before it; packages of one layer do not import each other):

    msa.functional -> msa.kernels -> msa.model -> msa.memory -> msa.engine
        -> msa.parallel | msa.train | msa.eval -> msa.server | msa.cli | msa.demo | msa.__main__ | msa

Base modules: ``msa.config``, ``msa.prompt``, ``msa.tokenizer`` and ``msa.data`` import no layer (only
each other); every layer but ``msa.functional`` may import them. ``msa.functional`` is pure math and
imports nothing else from msa. The top layer holds the entry points and the package's facade
(``msa/__init__.py``); they may import each other. A bare ``import msa`` (the package root, e.g. for
``msa.__version__``) is allowed anywhere: Python imports the root before any submodule anyway.

Imports are read with ``ast`` from every file: module level, inside functions and under
``TYPE_CHECKING`` all count for the layer order and for cycles between packages (``from msa import
Name`` of a name the facade re-exports counts as an import of the facade). Cycles between single
modules are checked on the imports that run when a module is imported (module level, not
``TYPE_CHECKING``; the root package aside), since a function-level import between two modules of one
package is how a package breaks such a cycle on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
BASE = ("msa.config", "msa.prompt", "msa.tokenizer", "msa.data")
LAYERS = (
    ("msa.functional",),
    ("msa.kernels",),
    ("msa.model",),
    ("msa.memory",),
    ("msa.engine",),
    ("msa.parallel", "msa.train", "msa.eval"),
    ("msa.server", "msa.cli", "msa.demo", "msa.__main__", "msa"),
)
TOP = len(LAYERS) - 1
RANK = {pkg: rank for rank, pkgs in enumerate(LAYERS) for pkg in pkgs}
# The engine's unused Engine(distributed=...) path imports Memory Parallel (issue 19, item 1: the lead
# removes it). The only edge this test knows to be wrong; see test_engine_does_not_import_parallel.
KNOWN: set[tuple[str, str]] = set()  # known upward edges still to remove (none left)
FACADE = "msa.__init__"  # ``from msa import Name``: the names msa/__init__.py re-exports (top layer)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package(module: str) -> str:
    """The layer unit of a module: ``msa`` itself (its facade included), or the first component under it."""
    return "msa" if module == FACADE else ".".join(module.split(".")[:2])


def _imports(tree: ast.Module):
    """(node, runs_at_import) for every import statement of a module."""

    def visit(body, runs):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node, runs
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        yield sub, False
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from visit(node.body, False)
                yield from visit(node.orelse, runs)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    sub = getattr(node, field, None)
                    if isinstance(sub, list):
                        yield from visit(sub, runs)

    yield from visit(tree.body, True)


def scan() -> tuple[set[str], list[tuple[str, str, bool]]]:
    """All modules of src/msa and every import edge (importer, imported module, runs at import)."""
    files = {module_name(p): p for p in (SRC / "msa").rglob("*.py")}
    edges = []
    for mod, path in files.items():
        for node, runs in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                if node.level:
                    raise AssertionError(f"{mod}: relative import (use absolute msa.* imports)")
                base = node.module or ""
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else FACADE if base == "msa" else base
                         for a in node.names]  # fmt: skip
            edges += [(mod, n, runs) for n in names if (n == "msa" or n.startswith("msa.")) and n != mod]
    return set(files), edges


def layer_violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (None: allowed)."""
    a, b = package(importer), package(imported)
    if a == b or imported == "msa":
        return None
    if a == "msa.functional":
        return "msa.functional imports no other msa package"
    if a in BASE:
        return None if b in BASE else f"base module {a} imports the layer {b}"
    if b in BASE:
        return None
    for pkg in (a, b):
        if pkg not in RANK:
            return f"{pkg} has no place in the layer order (add it to LAYERS in tests/test_layers.py)"
    if RANK[b] < RANK[a] or RANK[a] == RANK[b] == TOP:
        return None
    if RANK[a] == RANK[b]:
        return f"{a} and {b} are one layer and do not import each other"
    return f"{a} (layer {RANK[a]}) imports {b} (layer {RANK[b]}): up the layer order"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as [n0, n1, ..., n0], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _graph(edges, key) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if key(a) != key(b):
            graph.setdefault(key(a), set()).add(key(b))
    return graph


def _known(a: str, b: str) -> bool:
    return (a, package(b) if b.count(".") > 1 else b) in KNOWN


MODULES, EDGES = scan()


def test_every_import_runs_down_the_layer_order():
    bad = sorted({f"{a} -> {b}: {why}" for a, b, _ in EDGES if not _known(a, b) and (why := layer_violation(a, b))})
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_functional_is_pure():
    other = sorted({b for a, b, _ in EDGES if package(a) == "msa.functional" and package(b) != "msa.functional"})
    assert not other, f"msa.functional imports {other}"


def test_no_import_cycle_between_packages():
    edges = [(a, b) for a, b, _ in EDGES if b != "msa" and not _known(a, b)]
    cycle = find_cycle(_graph(edges, package))
    assert cycle is None, "packages import in a circle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_modules_at_import_time():
    edges = [(a, b) for a, b, runs in EDGES if runs and b in MODULES and b != "msa"]
    cycle = find_cycle(_graph(edges, lambda m: m))
    assert cycle is None, "modules import each other at import time: " + " -> ".join(cycle or [])


def test_engine_does_not_import_parallel():
    known = sorted(f"{a} -> {b}" for a, b, _ in EDGES if _known(a, b))
    assert not known, f"known edges still there: {known}"
    edges = [(a, b) for a, b, _ in EDGES if b != "msa"]
    assert find_cycle(_graph(edges, package)) is None


def test_the_checks_can_fail():
    """The rules themselves: an upward import, a sibling import, an unplaced package and a circle are caught."""
    assert layer_violation("msa.functional.routing", "msa.kernels") is not None
    assert layer_violation("msa.functional.routing", "msa.config") is not None
    assert layer_violation("msa.kernels.dispatch", "msa.model.memory") is not None
    assert layer_violation("msa.model.modeling", "msa.engine") is not None
    assert layer_violation("msa.train.loop", "msa.eval.metrics") is not None
    assert layer_violation("msa.config", "msa.model") is not None
    assert "no place" in (layer_violation("msa.model.x", "msa.newpkg") or "")
    assert layer_violation("msa.server.app", "msa.engine") is None
    assert layer_violation("msa.cli", "msa.demo") is None
    assert layer_violation("msa.eval.scaling", "msa") is None
    assert layer_violation("msa.model.modeling", FACADE) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
    assert len(MODULES) > 50 and any(package(a) == "msa.kernels" for a, _, _ in EDGES)


def test_routing_backend_is_chosen_in_one_place():
    """MSA_FORCE_REFERENCE and the probe for triton are read by msa.kernels.dispatch alone."""
    for needle in ('"MSA_FORCE_REFERENCE"', 'find_spec("triton")'):
        readers = sorted(str(p.relative_to(SRC)) for p in (SRC / "msa").rglob("*.py") if needle in p.read_text())
        assert readers == ["msa/kernels/dispatch.py"], f"{needle} read in {readers}"
