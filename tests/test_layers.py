"""Imports point one way (docs/architecture.md): leaves < store < part10, imaging, sr < core < adapters <
composition < cli; and no SQL outside store/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dcmnode"

# The layers, lowest first (docs/architecture.md): a part imports only from parts in lower layers, except the
# same-layer edges declared in SAME_LAYER.
LAYERS: list[set[str]] = [
    {"errors", "status", "config", "model", "__init__"},  # leaves
    {"store"},  # files + index, every SQL statement
    {"part10", "imaging", "sr", "deid"},  # bytes, pixels, the numerical SR library, de-identification
    {"core"},  # the services: ingest, query, retrieve, import, jobs, render
    {"dimse", "dicomweb", "nodeapi"},  # adapters
    {"app", "worker", "server"},  # composition: the node, the worker process, the processes of serve
    {"cli"},
    {"__main__"},
]
SAME_LAYER = {("status", "errors"), ("config", "errors"), ("model", "errors"), ("nodeapi", "dicomweb"),
              ("server", "app"), ("server", "worker"), ("deid", "part10"), ("deid", "imaging")}  # fmt: skip

# What each part may import from dcmnode (its own part is always allowed): narrower than the layers where a
# layer must not be reached through (adapters never touch the store; the SR library knows only errors).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "status": {"errors"},
    "config": {"errors"},
    "model": {"errors"},
    "store": {"errors", "model"},
    "part10": {"errors"},
    "imaging": {"errors"},
    "sr": {"errors"},
    "deid": {"errors", "part10", "imaging", "__version__"},  # __version__: De-identification Method names it
    "core": {"errors", "model", "config", "store", "part10", "imaging", "sr", "deid"},
    "dimse": {"errors", "model", "config", "status", "core"},
    "dicomweb": {"errors", "model", "config", "status", "core", "part10"},
    "nodeapi": {"errors", "model", "config", "core", "dicomweb"},
    "worker": {"errors", "model", "config", "core", "dimse"},
    "app": {"errors", "model", "config", "core", "dimse", "dicomweb", "nodeapi"},
    "server": {"errors", "model", "config", "core", "dimse", "app", "worker", "__version__"},
    "cli": {"errors", "model", "config", "imaging", "core", "worker", "server", "__version__"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Third-party packages confined to the layer that adapts them.
CONFINED = {
    "pynetdicom": {"dimse", "app"},
    "highdicom": {"core"},
    "starlette": {"dicomweb", "nodeapi", "app"},
    "uvicorn": {"server"},
    "torch": {"sr"},
}
# Words that only SQL text has; no module outside store/ may hold them or call execute().
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|PRAGMA)\b")


def part_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "dcmnode":
                names |= {f"dcmnode.{alias.name}" for alias in node.names}
    return names


def test_imports_point_one_way() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        part = part_of(path)
        for name in imports(path):
            top, _, rest = name.partition(".")
            if top == "dcmnode" and rest:
                target = rest.split(".")[0]
                if target != part and target not in ALLOWED[part]:
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
            elif top in CONFINED and part not in CONFINED[top]:
                problems.append(f"{path.relative_to(SRC)} imports {top} (only {sorted(CONFINED[top])} may)")
    assert problems == []


def test_every_module_is_known_to_the_rules() -> None:
    assert {part_of(p) for p in SRC.rglob("*.py")} <= set(ALLOWED)


def layer_of(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_the_rules_follow_the_layers() -> None:
    assert set(ALLOWED) == set().union(*LAYERS)
    upward = [
        (part, target)
        for part, targets in ALLOWED.items()
        for target in targets - {"__version__"}
        if layer_of(target) > layer_of(part)
        or (layer_of(target) == layer_of(part) and (part, target) not in SAME_LAYER)
    ]
    assert upward == []


def test_no_module_outside_store_runs_sql() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        if part_of(path) == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("execute", "executemany", "executescript", "connection"):
                    problems.append(f"{path.relative_to(SRC)}:{node.lineno} calls .{node.func.attr}()")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                problems.append(f"{path.relative_to(SRC)}:{node.lineno} holds SQL: {node.value[:60]!r}")
    assert problems == []


def test_no_module_docstring_keeps_a_hand_written_imports_line() -> None:
    """This file states and checks the imports; a copy in a docstring only drifts (seven had)."""
    stale = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "Imports:" in (ast.get_docstring(ast.parse(p.read_text())) or "")
    ]
    assert stale == []
