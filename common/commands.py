"""The command lines that messages quote, built in one place so each is a command that works as written
(tests run them). Every package may use it; `pipeline/corpus/hints.py` re-exports it and adds the hints that
need the corpus registries (`prepare_command`).

    command("cache", "gc", yes=True)                      -> "mer-pipe cache gc --yes"
    features_command("meld", "t", cache_dir="/c")         -> "mer-pipe features --dataset meld --only t --cache-dir /c"
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

PROG = "mer-pipe"


def command(*words: str | Path, **options: Any) -> str:
    """`mer-pipe WORDS... --option VALUE ...`, options in the order given: an option whose value is None or
    False is left out, True is a bare switch, and `cache_dir=D` is written `--cache-dir D`."""
    parts = [PROG, *(str(w) for w in words)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def features_command(dataset: str, slot: str | None = None, cache_dir: str | Path | None = None) -> str:
    """The command that (re)builds the features of a slot (only missing shards are computed)."""
    return command("features", dataset=dataset, only=slot or None, cache_dir=cache_dir)
