"""The commands quoted in error messages, in one place so every hint is a command that works as written
(tests run each one). `cache_dir` is added whenever the failing command had one. The command strings themselves
are built by `mer_pipe.common.commands` (re-exported here; `cache/` and `common/` use it directly); this module
adds the hints that know the corpus: `prepare_command` and the dataset-name rule."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from mer_pipe.common.commands import PROG, command, features_command
from mer_pipe.common.errors import ConfigError

__all__ = ["PROG", "command", "features_command", "prepare_command", "corpus_recipes", "check_dataset_name",
           "dataset_name_problem", "DATASET_NAME_RULE"]

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


def corpus_recipes() -> list[str]:
    """The recipes that read a corpus of their own and fix its label order (meld, iemocap; not the user's
    `manifest`), from the recipe registry: a dataset named like one was most likely prepared by it.
    The registry is looked up by name when a hint is built, not imported with this module: the recipes build
    manifest rows, and the manifest module quotes these hints."""
    recipes = importlib.import_module("mer_pipe.pipeline.corpus.recipes").RECIPES
    return [name for name in recipes.names() if recipes.get(name).labels]


def prepare_command(dataset: str, recipe: str | None = None, cache_dir: str | Path | None = None,
                    root: str | Path | None = None) -> str:
    """The command that prepares a dataset; ROOT stays a placeholder when the corpus location is unknown, and
    NAME when `dataset` is not a name prepare accepts (a path given to -d), so the hint is never refused itself."""
    recipe = recipe or (dataset if dataset in corpus_recipes() else "RECIPE")
    name = "NAME" if dataset_name_problem(dataset) else dataset
    return command("prepare", recipe, root=root or "CORPUS_DIR", name=name, cache_dir=cache_dir)
