"""The commands quoted in error messages, in one place so every hint is a command that works as written
(tests run each one). `cache_dir` is added whenever the failing command had one."""
from __future__ import annotations

import re
from pathlib import Path

from mer_pipe.common.errors import ConfigError

# The feature store's path-part rule (cache/store.py) plus a length limit: a dataset name is a folder name, and
# 255 bytes is the usual file-name limit; 100 leaves room for temp suffixes and stays readable in tables.
DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
DATASET_NAME_MAX = 100
DATASET_NAME_RULE = (f"start with a letter or digit, then letters, digits, '.', '_', '+', '=' or '-', "
                     f"at most {DATASET_NAME_MAX} characters")


def dataset_name_problem(name: str) -> str | None:
    """Why `name` cannot be a dataset name (None when it can)."""
    if not isinstance(name, str) or not DATASET_NAME_RE.match(name):
        return "not a usable dataset name"
    if len(name) > DATASET_NAME_MAX:
        return f"{len(name)} characters long (at most {DATASET_NAME_MAX})"
    return None


def check_dataset_name(name: str, flag: str = "--name", hint: str = "") -> str:
    """`name`, or a ConfigError naming `flag`, what is wrong and the rule (`hint` adds the fix for that flag)."""
    problem = dataset_name_problem(name)
    if problem:
        shown = name if len(name) <= 60 else f"{name[:40]}...({len(name)} characters)"
        raise ConfigError(f"{flag} {shown!r} is {problem}{hint}; {DATASET_NAME_RULE}")
    return name


def _cd(cache_dir: str | Path | None) -> str:
    return f" --cache-dir {cache_dir}" if cache_dir is not None else ""


def features_command(dataset: str, slot: str | None = None, cache_dir: str | Path | None = None) -> str:
    """The command that (re)builds the features of a slot (only missing shards are computed)."""
    only = f" --only {slot}" if slot else ""
    return f"mer-pipe features --dataset {dataset}{only}{_cd(cache_dir)}"


def prepare_command(dataset: str, recipe: str | None = None, cache_dir: str | Path | None = None,
                    root: str | Path | None = None) -> str:
    """The command that prepares a dataset; ROOT stays a placeholder when the corpus location is unknown, and
    NAME when `dataset` is not a name prepare accepts (a path given to -d), so the hint is never refused itself."""
    recipe = recipe or (dataset if dataset in ("meld", "iemocap") else "RECIPE")
    name = "NAME" if dataset_name_problem(dataset) else dataset
    return f"mer-pipe prepare {recipe} --root {root or 'CORPUS_DIR'} --name {name}{_cd(cache_dir)}"
