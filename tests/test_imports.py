"""No import cycle among stackmapd's modules, however the import is spelled.

A cycle hidden behind a function-local import (or an ``if TYPE_CHECKING:``
block) still ties two modules together: neither can be read, tested or
changed without the other, and the import order decides what works.  This
test reads every ``stackmapd/*.py`` with ``ast`` and takes *every* import
statement into the graph -- module level, inside functions, under
``TYPE_CHECKING`` -- then fails naming each cycle it finds.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "stackmapd"


def module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path)
    package = this if path.stem == "__init__" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .x import y
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from stackmapd import snapshot` imports the submodule snapshot.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules and name != this)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = sorted((root / PACKAGE).glob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, modules) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_local_imports() -> None:
    """The walk itself: a cycle made only of function-local imports is found."""
    graph = {"stackmapd.a": {"stackmapd.b"}, "stackmapd.b": {"stackmapd.a"}, "stackmapd.c": set()}
    assert cycles(graph) == [["stackmapd.a", "stackmapd.b"]]


def test_function_local_import_is_an_edge(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from stackmapd.b import g\n    return g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(tmp_path)
    assert graph["stackmapd.a"] == {"stackmapd.b"}
    assert graph["stackmapd.b"] == {"stackmapd.a"}
    assert cycles(graph) == [["stackmapd.a", "stackmapd.b"]]


def test_stackmapd_has_no_import_cycle() -> None:
    graph = import_graph(REPO)
    assert len(graph) > 5, graph  # the package was found
    found = cycles(graph)
    assert not found, "import cycles among stackmapd's modules (every import counted, " \
                      f"function-local ones too): {found}"
