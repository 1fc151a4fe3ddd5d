"""No import circles: between modules, and between the folders of a room (tasks/data ↔ tasks/train, say), counting
imports inside functions too (an import hidden in a function is still an edge)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("flows", "tasks", "registry", "infra")


def _modules() -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules ``module`` imports anywhere in its file (``from a import b`` counts ``a.b`` if a module)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != module}
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # a package's own __init__ re-exports are edges of the package, not of its parent
    return {m: {i for i in _imports(p, m, known) if not m.startswith(i + ".")} for m, p in modules.items()}


def _folder(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def test_no_module_imports_itself_back(graph: dict[str, set[str]]) -> None:
    assert _cycles(graph) == []


def test_no_two_folders_import_each_other(graph: dict[str, set[str]]) -> None:
    folders: dict[str, set[str]] = {}
    for module, imported in graph.items():
        folders.setdefault(_folder(module), set()).update(_folder(i) for i in imported if _folder(i) != _folder(module))
    # a room's own top-level modules (tasks/errors.py, tasks/records.py…) are its ground floor, under every folder
    inner = {f: {g for g in gs if "." in g and g.split(".")[0] == f.split(".")[0]}
             for f, gs in folders.items() if "." in f}
    assert _cycles(inner) == []


def test_the_checker_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
