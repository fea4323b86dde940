"""Imports point one way (docs/architecture.md): leaf modules < store < core < adapters < app < cli."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dcmnode"

# What each part of the package may import from dcmnode (its own part is always allowed).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "model": {"errors"},
    "store": {"errors", "model"},
    "imaging": {"errors"},
    "part10": {"errors"},
    "core": {"errors", "model", "config", "store", "imaging", "part10"},
    "sr": {"errors", "model", "config", "store", "imaging", "core"},
    "dimse": {"errors", "model", "config", "core"},
    "dicomweb": {"errors", "model", "config", "core", "part10"},
    "api": {"errors", "model", "config", "core", "sr"},
    "upload": {"errors", "model", "config", "core"},
    "worker": {"errors", "model", "config", "store", "core", "sr", "dimse"},
    "app": {"errors", "model", "config", "store", "core", "sr", "dimse", "dicomweb", "api", "upload"},
    "cli": {"errors", "model", "config", "store", "imaging", "core", "sr", "worker", "app", "server", "__version__"},
    "server": {"errors", "model", "config", "dimse", "app", "worker", "__version__"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Third-party packages confined to the layer that adapts them.
CONFINED = {
    "pynetdicom": {"dimse", "app"},
    "highdicom": {"sr"},
    "starlette": {"dicomweb", "api", "upload", "app"},
    "uvicorn": {"server"},
    "torch": {"sr"},
}


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
