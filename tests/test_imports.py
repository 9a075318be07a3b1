"""The import graph of pruner's modules: acyclic, and no module reaches into another's private names.

Every ``import``/``from ... import`` is counted, including those inside functions (lazy imports still
tie two rooms together: a circle through a function-level import is a circle in the design) and a
module's import of its own package (``from pruner.unet import Plan`` inside ``pruner.unet.width`` runs
``pruner/unet/__init__.py``). Only imports under ``if TYPE_CHECKING:`` are left out: they never run.
Relative imports are resolved, and ``from pruner.x import y`` counts as an import of ``pruner.x.y``
when ``y`` is a submodule.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pruner

ROOT = Path(pruner.__file__).parent


@dataclass(frozen=True)
class ImportEdge:
    """One import of a pruner module by another: the names taken with ``from ... import``."""

    importer: str
    imported: str
    names: tuple[str, ...]
    line: int


def module_files() -> dict[str, Path]:
    """Every module under pruner/, by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def resolve_from(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name a ``from X import ...`` statement names (relative forms resolved)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` (or ``typing.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and is_type_checking(node.test):
            pending += node.orelse
        else:
            pending += ast.iter_child_nodes(node)
    return found


def edges_of(name: str, path: Path, modules: dict[str, Path]) -> list[ImportEdge]:
    """The imports of pruner modules in one file, wherever they sit in it."""
    edges = []
    is_package = path.name == "__init__.py"
    for node in import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges += [ImportEdge(name, a.name, (), node.lineno) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            target = resolve_from(name, is_package, node)
            names = tuple(a.name for a in node.names)
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            edges += [ImportEdge(name, sub, (), node.lineno) for sub in submodules]
            plain = tuple(n for n in names if f"{target}.{n}" not in modules)
            if target in modules and (plain or not submodules):
                edges.append(ImportEdge(name, target, plain, node.lineno))
    return edges


def all_edges() -> list[ImportEdge]:
    modules = module_files()
    return [edge for name, path in modules.items() for edge in edges_of(name, path, modules)]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of nodes (first == last), or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_edge_parser_sees_function_level_relative_and_submodule_imports(tmp_path: Path) -> None:
    modules = {name: tmp_path for name in ("pruner", "pruner.a", "pruner.a.b", "pruner.a.x", "pruner.c")}
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pruner import a\n"
        "def f():\n    from .b import _hidden\n    from . import b\n    from ..c import thing\n    import pruner.c\n"
    )
    (tmp_path / "x.py").write_text(source)
    edges = {(e.imported, e.names) for e in edges_of("pruner.a.x", tmp_path / "x.py", modules)}
    assert edges == {("pruner.a.b", ("_hidden",)), ("pruner.a.b", ()), ("pruner.c", ("thing",)), ("pruner.c", ())}


def test_the_cycle_finder_names_the_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_pruner_modules_import_no_circle() -> None:
    graph: dict[str, set[str]] = {}
    for edge in all_edges():
        if edge.importer != edge.imported:
            graph.setdefault(edge.importer, set()).add(edge.imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_module_imports_another_modules_private_name() -> None:
    offenders = [
        f"{edge.importer}:{edge.line} takes {name} from {edge.imported}"
        for edge in all_edges()
        for name in edge.names
        if name.startswith("_") and not name.startswith("__") and edge.imported != edge.importer
    ]
    assert not offenders, "\n".join(offenders)
