"""The layering of the package (DESIGN.md, "Layout"), read from the source: every import,
at module level or inside a function, points down.

    cli / bench / experiments  ->  train  ->  models  ->  modules  ->  ops  ->  backends
    tasks: data generators (used by train and experiments); report, serialization: leaves
"""

from __future__ import annotations

import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fusedrnn")

# what each part of the package must not import
FORBIDDEN = {
    "backends": ("modules", "models", "bench", "train", "experiments", "cli", "serialization", "tasks"),
    "ops": ("modules", "models", "bench", "train", "experiments", "cli", "serialization", "tasks"),
    "modules": ("models", "bench", "train", "experiments", "cli", "tasks"),
    "models": ("bench", "train", "experiments", "cli"),
    "tasks": ("modules", "models", "bench", "train", "experiments", "cli", "ops", "backends"),
    "train": ("bench", "experiments", "cli"),
    "report": ("ops", "backends", "modules", "models", "bench", "train", "experiments", "tasks"),
}
CONCRETE_BACKENDS = ("reference", "cpu", "cuda", "triton", "compiled")


def _modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                yield path, rel[:-9] if rel.endswith(".__init__") else rel


def _imports(path: str, name: str) -> set[str]:
    """Every fusedrnn module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fusedrnn")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("fusedrnn"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}  # from pkg import submodule
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = sorted(_modules(), key=lambda m: m[1])


@pytest.mark.parametrize("path,name", MODULES, ids=[m[1] for m in MODULES])
def test_imports_point_down(path, name):
    part = _part(name)
    imported = _imports(path, name)
    for imp in imported:
        target = _part(imp)
        assert target not in FORBIDDEN.get(part, ()), f"{name} imports {imp} ({part} -> {target} points up)"
        if part == "ops" and target == "backends":
            sub = imp.split(".")[2] if imp.count(".") >= 2 else ""
            assert sub not in CONCRETE_BACKENDS, f"{name} imports the concrete backend {imp} (only the registry)"
        if name.startswith("fusedrnn.backends.reference"):
            assert not (target == "backends" and imp != name), f"the reference backend imports {imp}"


def test_the_checks_see_imports():
    """The walk finds relative and function-level imports (so the test above can fail)."""
    lstm = os.path.join(PKG, "modules", "explain.py")
    got = _imports(lstm, "fusedrnn.modules.explain")
    assert "fusedrnn.ops.dispatch" in got and "fusedrnn.modules.lstm" in got
    assert len(MODULES) > 50
