"""The import graph: package rules from docs/contracts.md, wings import downward only, and no cycles."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"common": "common", "cache": "cache", "extractors": "extractors", "models": "models", "pipeline": "pipeline"}
# what each top-level package may import (besides itself)
ALLOWED = {
    "common": set(),
    "cache": {"common"},
    "extractors": {"common"},
    "models": {"common"},
}
# pipeline wings: what each may import besides common/cache/extractors/models and itself
WINGS = {
    "corpus": set(),
    "executors": set(),
    "extract": {"corpus", "executors"},
    "train": {"corpus", "executors"},  # never experiments: one run knows nothing of sweeps or run tables
    "experiments": {"corpus", "executors", "train"},
    "interop": {"corpus"},
    "api": {"corpus", "executors", "extract", "train", "experiments", "interop"},
    "cli": {"api"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in FOLDERS.items():
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT / folder).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    """mer_pipe-relative module names imported anywhere in the file (function-level imports included)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name[len("mer_pipe."):] for a in node.names if a.name.startswith("mer_pipe.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("mer_pipe."):
                mod = node.module[len("mer_pipe."):]
            else:
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: {m for m in _imports(n, p) if m in mods and m != n} for n, p in mods.items()}


def _wing(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def test_packages_import_only_what_contracts_allow(graph):
    bad = []
    for mod, deps in graph.items():
        top = mod.split(".")[0]
        for d in deps:
            dtop = d.split(".")[0]
            if dtop == top:
                continue
            if top in ALLOWED and dtop not in ALLOWED[top]:
                bad.append(f"{mod} -> {d}")
    assert not bad, bad


def test_pipeline_wings_import_downward_only(graph):
    bad = []
    for mod, deps in graph.items():
        wing = _wing(mod)
        if wing is None or wing not in WINGS:
            continue
        for d in deps:
            dw = _wing(d)
            if dw is not None and dw != wing and dw not in WINGS[wing]:
                bad.append(f"{mod} -> {d}")
    assert not bad, bad


def test_no_import_cycles(graph):
    # strongly connected components with more than one module (Tarjan)
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not sccs, sccs


def test_cli_help_imports_no_torch():
    """`mer-pipe --help` and argument errors stay fast: torch is imported only after validation."""
    import subprocess
    import sys

    code = ("import sys\nfrom mer_pipe.pipeline.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n"
            "    pass\nassert 'torch' not in sys.modules, 'torch imported by train --help'\n"
            "try:\n    main(['train'])\nexcept SystemExit as e:\n    assert e.code == 2, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported before --model was checked'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dask_is_imported_in_one_module_only():
    """pipeline/executors.py is the executor layer: nothing else imports dask or distributed."""
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n.split(".")[0] in ("dask", "distributed") for n in names):
                found.append(name)
    assert sorted(set(found)) == ["pipeline.executors"], sorted(set(found))


def test_train_wing_holds_training_only():
    """pipeline/train/ is one run (at most 11 modules); sweeps, run tables, compare, the cross-run figure and the
    reference scores are pipeline/experiments/, which imports train, never the reverse (WINGS)."""
    mods = sorted(p.stem for p in (ROOT / "pipeline" / "train").glob("*.py") if p.stem != "__init__")
    assert len(mods) <= 11, mods
    assert "train" in WINGS["experiments"] and "experiments" not in WINGS["train"]
