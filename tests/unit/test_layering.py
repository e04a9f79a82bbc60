"""The floor rule, read from the source with ``ast`` (nothing is imported).

Floors: ``sandbox_agents`` (1) < ``coordinator`` (2) < ``actors`` (3) < ``serve`` (4). A floor imports
only floors below it, ``ray`` is imported only from ``actors/`` up, and no module imports a module
that imports it back. Every import counts: module level, inside functions, under ``TYPE_CHECKING``
(a type-only import is still a dependency of the module's interface); relative imports are resolved.
``bench/`` and ``tests/`` may import anything and are not scanned.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"sandbox_agents": 1, "coordinator": 2, "actors": 3, "serve": 4}
RAY_FLOOR = FLOORS["actors"]


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to an absolute dotted name."""

    module: str  # the importing module, e.g. "coordinator.build.run"
    target: str  # what it imports, e.g. "coordinator.build.steps" or "ray.util"
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for pkg in FLOORS for p in (ROOT / pkg).rglob("*.py"))


def known_modules() -> set[str]:
    return {module_name(p) for p in source_files()}


def imports_of(path: Path, modules: set[str], source: str | None = None) -> list[Import]:
    """Every import in ``path``; ``from P import n`` names ``P.n`` when that is one of our modules."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, path, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(name, sub if sub in modules else base, path, node.lineno))
    return found


def all_imports() -> list[Import]:
    modules = known_modules()
    return [imp for path in source_files() for imp in imports_of(path, modules)]


def floor_of(dotted: str) -> int | None:
    return FLOORS.get(dotted.partition(".")[0])


def test_the_scanner_resolves_relative_and_function_level_imports() -> None:
    source = (
        "from . import codec\nfrom .models import X\nfrom ..store import store\n"
        "def f():\n    import ray.util\n    from sandbox_agents.errors import KriptikError\n"
    )
    probe = ROOT / "coordinator" / "bus" / "probe.py"  # never written: the source is given
    got = {(i.target, i.line) for i in imports_of(probe, known_modules(), source=source)}
    assert got == {
        ("coordinator.bus.codec", 1),
        ("coordinator.bus.models", 2),
        ("coordinator.store.store", 3),
        ("ray.util", 5),
        ("sandbox_agents.errors", 6),
    }


def test_ray_is_imported_only_from_the_actor_floor_up() -> None:
    offenders = [
        f"{imp.where()}: {imp.module} (floor {floor_of(imp.module)}) imports {imp.target}"
        for imp in all_imports()
        if imp.target.partition(".")[0] == "ray" and (floor_of(imp.module) or 0) < RAY_FLOOR
    ]
    assert not offenders, "ray below actors/ (floors 1-2 are plain Python):\n" + "\n".join(offenders)


def test_no_floor_imports_a_higher_floor() -> None:
    offenders = []
    for imp in all_imports():
        here, there = floor_of(imp.module), floor_of(imp.target)
        if here is not None and there is not None and there > here:
            offenders.append(f"{imp.where()}: {imp.module} (floor {here}) imports {imp.target} (floor {there})")
    order = " < ".join(FLOORS)
    assert not offenders, f"upward imports (the floors are {order}):\n" + "\n".join(offenders)


def test_no_two_modules_import_each_other() -> None:
    edges: dict[tuple[str, str], Import] = {}
    for imp in all_imports():
        if floor_of(imp.target) is not None and imp.target != imp.module:
            edges.setdefault((imp.module, imp.target), imp)
    cycles = sorted(
        f"{a} <-> {b}  ({edges[a, b].where()} and {edges[b, a].where()})"
        for (a, b) in edges
        if a < b and (b, a) in edges
    )
    assert not cycles, "modules that import each other (2-cycles):\n" + "\n".join(cycles)
