"""What a recipe is: a name, its label order, the folder layout it expects, and a `collect` function."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..manifest import Utterance


@dataclass(frozen=True)
class Recipe:
    """`collect(root, report, probe=..., manifest_file=...) -> list[Utterance]` records problems in `report`."""

    name: str
    labels: tuple[str, ...]  # label-id order; empty = taken from the manifest (user recipe)
    layout: str  # what the corpus folder must look like, quoted in error messages
    collect: Callable[..., list[Utterance]]
