"""No module of floors 1-2 imports a module that imports it back.

Imports are read with ``ast`` from every module of ``sandbox_agents/`` and ``coordinator/``,
at any depth: an import inside a function still runs, so it still counts. Only the bodies of
``if TYPE_CHECKING:`` are left out, since they never run (a module may name a sibling's class
in its annotations that way).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sandbox_agents", "coordinator")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package ``__init__``)."""
    found: dict[str, tuple[Path, bool]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[".".join(parts)] = (path, is_package)
    return found


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module except those under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _imported(name: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The modules of ours one import statement loads (``from pkg import mod`` names ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return {f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix for alias in node.names}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports when it runs."""
    modules = _modules()
    names = set(modules)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        deps: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            deps |= _imported(name, is_package, node, names)
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def mutual_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of modules that import each other."""
    return sorted({(min(a, b), max(a, b)) for a, deps in graph.items() for b in deps if a in graph.get(b, ())})


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    graph = import_graph()
    assert len(graph) > 50, "the walk found too few modules to mean anything"
    assert mutual_imports(graph) == []


def test_the_check_sees_imports_inside_functions() -> None:
    tree = ast.parse("def f():\n    from coordinator.bus import models\n")
    (node,) = _runtime_imports(tree)
    assert _imported("coordinator.x", False, node, {"coordinator.bus.models"}) == {"coordinator.bus.models"}


def test_the_check_skips_type_checking_blocks() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import coordinator.bus\n")
    assert [ast.unparse(n) for n in _runtime_imports(tree)] == ["from typing import TYPE_CHECKING"]
