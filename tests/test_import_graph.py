"""The fpolar modules import each other in one direction: the module graph has no cycle.

The graph is read from the source with ``ast`` (every ``import`` statement, also those inside functions
or ``if TYPE_CHECKING:``, which would still be a circle a reader has to untangle). An edge goes from a
module to each fpolar module it names: ``from .x import y`` → ``x`` (or ``x.y`` when ``y`` is a
submodule). Importing a submodule runs its parent packages' ``__init__`` too, but that is not counted
as an edge: the package imports its children, not the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(package_dir: Path) -> Dict[str, Path]:
    """``{"fpolar.optim.base": path, "fpolar.optim": path/__init__.py, …}`` for every .py under it."""
    out = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: Set[str]) -> Set[str]:
    """The modules of ``modules`` that ``name`` (at ``path``) imports."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for t in targets:
            # "import fpolar.optim.base" names the deepest module that exists
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as a path ``[a, b, …, a]``, or None when it is acyclic (depth-first search)."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def fpolar_import_graph() -> Dict[str, Set[str]]:
    modules = module_names(ROOT / "fpolar")
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_of_reads_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub import b\nfrom . import c\ndef f():\n    from .sub.b import g\n")
    (pkg / "c.py").write_text("import pkg.sub.b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")
    modules = module_names(pkg)
    graph = {n: imports_of(n, p, set(modules)) for n, p in modules.items()}
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.sub.b", "pkg.c"}
    assert graph["pkg.c"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.c", "pkg.sub.b", "pkg.a"]


def test_fpolar_has_no_import_cycle():
    graph = fpolar_import_graph()
    assert "fpolar.optim.checkpoint" in graph and "fpolar.optim.base" in graph["fpolar.optim"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("library", ["fpolar", "fpolar.optim", "fpolar.compile"])
def test_the_library_does_not_import_the_apps(library):
    """``fpolar.apps`` (CLI, demo, bench, paper runs) sits on top: nothing below it imports it."""
    graph = fpolar_import_graph()
    seen, todo = set(), [library]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert not [m for m in seen if m.startswith("fpolar.apps")]
