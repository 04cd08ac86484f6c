"""The commands quoted in error messages, in one place so every hint is a command that works as written
(tests run each one). `cache_dir` is added whenever the failing command had one."""
from __future__ import annotations

from pathlib import Path


def _cd(cache_dir: str | Path | None) -> str:
    return f" --cache-dir {cache_dir}" if cache_dir is not None else ""


def features_command(dataset: str, slot: str | None = None, cache_dir: str | Path | None = None) -> str:
    """The command that (re)builds the features of a slot (only missing shards are computed)."""
    only = f" --only {slot}" if slot else ""
    return f"mer-pipe features --dataset {dataset}{only}{_cd(cache_dir)}"


def prepare_command(dataset: str, recipe: str | None = None, cache_dir: str | Path | None = None,
                    root: str | Path | None = None) -> str:
    """The command that prepares a dataset; ROOT stays a placeholder when the corpus location is unknown."""
    recipe = recipe or (dataset if dataset in ("meld", "iemocap") else "RECIPE")
    return f"mer-pipe prepare {recipe} --root {root or 'CORPUS_DIR'} --name {dataset}{_cd(cache_dir)}"
