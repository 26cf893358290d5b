"""Imports among shufflenet's own modules flow one way: no module imports, even lazily, one that imports it back.

The graph is read from the source with ``ast`` (nothing is imported). ``from package import name`` is an edge
to the module that defines ``name``: a package ``__init__`` that only re-exports is looked through, so importing
``create_model`` from ``shufflenet.models`` depends on ``shufflenet.models.registry``. A constant assigned in an
``__init__`` itself (``__version__``) is a leaf. Importing ``a.b.c`` also runs ``a`` and ``a.b`` first; those
implicit parent imports are not edges (they are how packages work, not a design dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "shufflenet"


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


FILES = module_files()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in FILES.items()}


def is_package(name: str) -> bool:
    return FILES[name].name == "__init__.py"


def absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from ... import`` in ``module`` (resolves relative imports)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports(module: str, lazy: bool) -> list[tuple[str, str | None]]:
    """(module, imported name or None) pairs of ``module``; function bodies only with ``lazy``.

    ``if TYPE_CHECKING:`` blocks are skipped: they never run.
    """
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not lazy:
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, None) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.extend((absolute(module, child), alias.name) for alias in child.names)
            visit(child)

    visit(TREES[module])
    return found


def defining_module(package: str, name: str, seen: frozenset[str] = frozenset()) -> str:
    """Where ``name`` imported from ``package`` really comes from (looking through re-exports)."""
    if f"{package}.{name}" in FILES:
        return f"{package}.{name}"
    if package not in FILES or not is_package(package) or package in seen:
        return package
    for source, imported in imports(package, lazy=False):
        if imported is not None and source.startswith(ROOT) and imported == name:
            return defining_module(source, name, seen | {package})
    for node in TREES[package].body:
        if not isinstance(node, ast.Assign | ast.AnnAssign) or not isinstance(node.value, ast.Constant):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return f"{package}:{name}"  # a constant of the __init__ itself: a leaf
    return package


def graph(lazy: bool) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in FILES}
    for module in FILES:
        for source, name in imports(module, lazy):
            if source != ROOT and not source.startswith(ROOT + "."):
                continue
            target = source if name is None else defining_module(source, name)
            if target != module:
                edges[module].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-lazy-imports"])
def test_shufflenet_modules_import_each_other_without_cycles(lazy: bool) -> None:
    cycle = find_cycle(graph(lazy))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_models_import_no_checkpoint_code() -> None:
    edges = graph(lazy=True)
    for module in (m for m in FILES if m.startswith("shufflenet.models")):
        bad = sorted(t for t in edges[module] if t.split(".")[1] == "checkpoints")
        assert not bad, f"{module} imports {bad}; checkpoint code depends on models, never the reverse"


def test_the_graph_sees_re_exports_and_lazy_imports() -> None:
    """The reader itself: a re-exported name leads to its module, and lazy imports are edges only with lazy."""
    assert defining_module("shufflenet.models", "create_model") == "shufflenet.models.registry"
    assert defining_module("shufflenet", "load_model") == "shufflenet.checkpoints.loading"
    assert defining_module("shufflenet", "__version__") == "shufflenet:__version__"
    assert "shufflenet.models.registry" in graph(lazy=False)["shufflenet.checkpoints.loading"]
    lazy_only = {(m, t) for m, ts in graph(lazy=True).items() for t in ts} - {
        (m, t) for m, ts in graph(lazy=False).items() for t in ts
    }
    assert lazy_only, "no lazy import found; the reader no longer looks into function bodies"
