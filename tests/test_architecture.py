"""The layering of the package, read from the source: every import, at module level or
inside a function, points down, along an allowed edge.

    cli -> bench / experiments -> train -> models -> modules -> ops -> backends -> core
    tasks: data generators (used by train, bench and experiments); report: figures and
    tables; serialization: the classes torch.load may build (modules and models)

Each part names the parts it may import (ALLOWED); every other direction is forbidden, the
allowed edges form no cycle, ops import only the backend registry (never a concrete
backend), and the reference backend imports no other backend.
"""

from __future__ import annotations

import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fusedrnn")

# What each part of the package may import besides itself ("" is the package's __init__, "_C"
# the compiled library).  Everything else is forbidden.
ALLOWED = {
    "core": set(),
    "backends": {"core", "_C"},
    "ops": {"core", "backends"},
    "modules": {"core", "ops"},
    "models": {"modules"},
    "serialization": {"modules", "models"},
    "tasks": set(),
    "report": set(),
    "train": {"models", "tasks", "report"},
    "bench": {"core", "ops", "backends", "modules", "models", "train", "tasks", "report"},
    "experiments": {"core", "ops", "modules", "models", "train", "tasks", "report", "bench"},
    "cli": {"bench", "experiments", "train", "ops"},
    "__main__": {"cli"},
    "": {"core", "ops", "modules", "serialization"},
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


def _targets(path: str, name: str) -> set[str]:
    """The fusedrnn modules ``path`` imports, without the bare package that ``from .. import x``
    names as its base (x itself is listed)."""
    return {imp for imp in _imports(path, name) if imp != "fusedrnn"}


MODULES = sorted(_modules(), key=lambda m: m[1])


@pytest.mark.parametrize("path,name", MODULES, ids=[m[1] for m in MODULES])
def test_imports_point_down(path, name):
    part = _part(name)
    assert part in ALLOWED, f"{name}: a new part of the package; give it its place in ALLOWED"
    for imp in _targets(path, name):
        target = _part(imp)
        if target == part:
            continue
        assert target in ALLOWED[part], f"{name} imports {imp}: {part or 'fusedrnn'} -> {target or 'fusedrnn'} " \
                                        "is not an allowed direction"
        if part == "ops" and target == "backends":
            sub = imp.split(".")[2] if imp.count(".") >= 2 else ""
            assert sub not in CONCRETE_BACKENDS, f"{name} imports the concrete backend {imp} (only the registry)"
        if name.startswith("fusedrnn.backends.reference"):
            assert target != "backends", f"the reference backend imports {imp}"
    if part == "backends" and name.startswith("fusedrnn.backends.reference"):
        assert not any(i.startswith("fusedrnn.backends.") for i in _targets(path, name))


def test_allowed_edges_form_no_cycle():
    seen, done = set(), set()

    def visit(p, chain):
        assert p not in seen or p in done, f"cycle: {' -> '.join(chain + [p])}"
        if p in done:
            return
        seen.add(p)
        for q in ALLOWED.get(p, ()):
            visit(q, chain + [p])
        done.add(p)

    for p in ALLOWED:
        visit(p, [])


def test_the_checks_see_imports():
    """The walk finds relative and function-level imports (so the test above can fail)."""
    explain = os.path.join(PKG, "modules", "explain.py")
    got = _imports(explain, "fusedrnn.modules.explain")
    assert "fusedrnn.ops.decision" in got and "fusedrnn.modules.rnn" in got
    cli = os.path.join(PKG, "bench", "cli.py")  # imports inside functions
    assert "fusedrnn.ops.decision" in _imports(cli, "fusedrnn.bench.cli")
    assert len(MODULES) > 50


def test_architecture_doc_lists_the_files_that_exist():
    """docs/ARCHITECTURE.md's file list names every file of the layers below the models (core,
    ops, backends, modules, csrc) and every folder above them, and nothing that is gone."""
    import re
    import subprocess

    root = os.path.dirname(PKG)
    text = open(os.path.join(root, "docs", "ARCHITECTURE.md")).read()
    listed = set(re.findall(r"`((?:fusedrnn|csrc)/[\w/.]*)`", text.split("## Files", 1)[1]))
    missing_on_disk = sorted(p for p in listed if not os.path.exists(os.path.join(root, p)))
    assert not missing_on_disk, f"ARCHITECTURE.md names what does not exist: {missing_on_disk}"
    tracked = subprocess.run(["git", "ls-files", "fusedrnn", "csrc"], cwd=root, capture_output=True,
                             text=True).stdout.split() or [
        os.path.relpath(os.path.join(d, f), root) for top in ("fusedrnn", "csrc")
        for d, _, fs in os.walk(os.path.join(root, top)) for f in fs if not f.endswith((".pyc", ".so"))]
    lower = ("fusedrnn/core/", "fusedrnn/ops/", "fusedrnn/backends/", "fusedrnn/modules/", "csrc/")
    unlisted = sorted(f for f in tracked if f.startswith(lower) and f not in listed)
    assert not unlisted, f"ARCHITECTURE.md does not list: {unlisted}"
    folders = {f.split("/")[1] for f in tracked if f.startswith("fusedrnn/") and f.count("/") >= 2}
    assert {f"fusedrnn/{d}/" for d in folders} - {"fusedrnn/" + f.split("/")[1] + "/" for f in listed} == set()
