"""The layers ARCHITECTURE.md promises: no import circles between modules, the decision code
free of I/O libraries, the gateway free of the database driver (module-level imports, by AST)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("quickpay", "ledger", "gateway", "fraud", "loadtest", "notify", "quickpay_sdk")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ours that `name` imports at module level (not inside functions)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _external_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert len(modules) > 50
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_decision_code_does_no_io_and_the_gateway_has_no_database_driver() -> None:
    pure = [ROOT / "ledger" / "state.py", ROOT / "ledger" / "model.py", ROOT / "ledger" / "idfilter.py",
            ROOT / "quickpay" / "money.py", ROOT / "quickpay" / "ids.py", ROOT / "loadtest" / "targets.py",
            ROOT / "ledger" / "agreements.py", ROOT / "gateway" / "ratelimit.py", ROOT / "gateway" / "resources.py",
            ROOT / "notify" / "events.py", ROOT / "notify" / "delivery.py"]
    for path in pure:
        assert not _external_imports(path) & {"asyncpg", "aiohttp", "socket", "asyncio", "locust"}, path
    for path in (ROOT / "gateway").rglob("*.py"):
        assert "asyncpg" not in _external_imports(path), path
