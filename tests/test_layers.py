"""The layers ARCHITECTURE.md promises, checked on the source (by AST, every import statement,
module level and inside functions alike):

    kernel  ->  fraud  ->  ledger  ->  notify  ->  gateway  ->  quickpay  ->  loadtest  ->  quickpay.cli
    (quickpay_sdk stands apart: partners install it alone, so it imports nothing of ours)

A module may import a module of a lower layer, or of its own package; never one of a higher
layer (an upward import), and no chain of imports may come back to where it started (a
circle). The kernel imports no other package of ours and no I/O library; the decision code
does no I/O; the gateway has no database driver.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("kernel", "quickpay", "ledger", "gateway", "fraud", "loadtest", "notify", "quickpay_sdk")

# Lowest first. A module's layer is that of the longest prefix listed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kernel",),
    ("fraud",),
    ("ledger",),
    ("notify",),
    ("gateway",),
    ("quickpay",),  # process orchestration: state directory, supervisor, PostgreSQL, HA
    ("loadtest",),  # bench, soak, Locust: drive a stack that quickpay/ starts
    ("quickpay.cli",),  # the command line, on top of everything
)
STANDALONE = ("quickpay_sdk", "kernel")

# What the kernel may import: the standard library's pure parts and msgspec (structs, no I/O).
KERNEL_ALLOWED = {
    "__future__",
    "collections",
    "contextvars",
    "dataclasses",
    "datetime",
    "enum",
    "hashlib",
    "math",
    "msgspec",
    "re",
    "secrets",
    "typing",
    "zlib",
}
IO_LIBRARIES = {
    "asyncpg",
    "aiohttp",
    "socket",
    "asyncio",
    "locust",
    "subprocess",
    "os",
    "pathlib",
    "httpx",
    "urllib",
    "psycopg",
    "io",
    "tempfile",
    "shutil",
    "signal",
    "logging",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path], *, module_level_only: bool) -> set[str]:
    """Modules of ours that `name` imports (at module level only, or anywhere)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        # A module's own ancestors are always imported before it (`from . import x` names its
        # package only to reach x): not an edge.
        out.update(t for t in targets if t in known and t != name and not name.startswith(t + "."))
    return out


def _external_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    return rank


def _package(module: str) -> str:
    return module.split(".")[0]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, or out of a standalone package."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if _package(module) in STANDALONE and _package(target) != _package(module):
                found.append(f"{module} -> {target} (a standalone package imports nothing of ours)")
            elif _package(target) == "quickpay_sdk":
                continue  # anyone may use the SDK (the notifier signs with it)
            elif layer_of(target) > layer_of(module):
                found.append(f"{module} -> {target} (upward: layer {layer_of(module)} -> {layer_of(target)})")
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _graph(*, module_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules, module_level_only=module_level_only) for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    modules = _modules()
    assert len(modules) > 50
    assert [m for m in modules if layer_of(m) < 0 and _package(m) != "quickpay_sdk"] == []


def test_no_module_imports_upward() -> None:
    violations = layer_violations(_graph(module_level_only=False))
    assert not violations, "\n".join(violations)


def test_no_import_circles_not_even_through_function_level_imports() -> None:
    cycles = circles(_graph(module_level_only=False))
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_catch_what_they_forbid() -> None:
    """The checker itself, on made-up graphs: an upward import, a standalone package reaching
    out, and a circle are each reported; a downward import is not."""
    assert layer_violations({"ledger.worker": {"gateway.app"}}) == [
        "ledger.worker -> gateway.app (upward: layer 2 -> 4)"
    ]
    assert layer_violations({"kernel.ids": {"fraud.engine"}})
    assert layer_violations({"quickpay.ha": {"quickpay.cli"}})
    assert layer_violations({"gateway.app": {"ledger.client", "kernel.ids"}, "quickpay.cli": {"loadtest.soak"}}) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_kernel_is_pure() -> None:
    for path in (ROOT / "kernel").rglob("*.py"):
        imported = _external_imports(path) - {"kernel"}
        assert imported <= KERNEL_ALLOWED, (path, imported - KERNEL_ALLOWED)


def test_decision_code_does_no_io_and_the_gateway_has_no_database_driver() -> None:
    pure = [
        ROOT / "ledger" / "state.py",
        # ShardState's parts (issue 18 split it by concern): all of them decide without I/O.
        ROOT / "ledger" / "balance_state.py",
        ROOT / "ledger" / "agreement_state.py",
        ROOT / "ledger" / "partner_state.py",
        ROOT / "ledger" / "transfer_cache.py",
        ROOT / "ledger" / "writeset.py",
        ROOT / "ledger" / "undo.py",
        ROOT / "ledger" / "model.py",
        ROOT / "ledger" / "idfilter.py",
        ROOT / "loadtest" / "targets.py",
        ROOT / "ledger" / "agreements.py",
        ROOT / "gateway" / "ratelimit.py",
        ROOT / "notify" / "events.py",
        ROOT / "notify" / "delivery.py",
        *(ROOT / "kernel").rglob("*.py"),
    ]
    for path in pure:
        assert not _external_imports(path) & IO_LIBRARIES, path
    for path in (ROOT / "gateway").rglob("*.py"):
        assert "asyncpg" not in _external_imports(path), path
