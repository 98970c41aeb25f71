"""The house (issue 23): no import cycle between the package's modules at import time, and no logic in a package's
``__init__.py`` (a docstring, imports, ``__all__`` and lazy-name tables, PEP 562 ``__getattr__``/``__dir__``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fpt_monai"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports_at_import_time(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports at module level (imports inside functions run later)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        for stmt in node.body if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(stmt, ast.Import):
                found |= {a.name for a in stmt.names}
            elif isinstance(stmt, ast.ImportFrom):
                base = stmt.module or ""
                if stmt.level:
                    parent = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in stmt.names}
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {name: _imports_at_import_time(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 50  # the graph was read (a parser that finds nothing would pass)
    assert _cycles(graph) == []
    # the detector finds a cycle when there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_package_init_files_hold_no_logic():
    allowed_functions = {"__getattr__", "__dir__"}
    for path in PACKAGE.rglob("__init__.py"):
        for node in ast.parse(path.read_text()).body:
            ok = isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign)) or (
                isinstance(node, ast.FunctionDef) and node.name in allowed_functions
            )
            is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            # the root package installs the warning filters before anything else is imported (fpt_monai.utils.quiet)
            is_quiet_call = path.parent == PACKAGE and ast.unparse(node) == "quiet.quiet_third_party()"
            assert ok or is_docstring or is_quiet_call, f"{path}: logic in a package's __init__: {ast.unparse(node)}"
