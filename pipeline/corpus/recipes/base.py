"""What a recipe is: a name, its label order, the polarity of its labels, the folder layout it expects, and a
`collect` function."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..manifest import SENTIMENTS, Utterance

# polarity ids (models/batch.py: 0 negative, 1 neutral, 2 positive; -1 unknown) = positions in SENTIMENTS
NEGATIVE, NEUTRAL, POSITIVE = (SENTIMENTS.index(s) for s in ("negative", "neutral", "positive"))
POLARITY_IDS = {s: i for i, s in enumerate(SENTIMENTS)}


@dataclass(frozen=True)
class Recipe:
    """`collect(root, report, probe=..., manifest_file=...) -> list[Utterance]` records problems in `report`."""

    name: str
    labels: tuple[str, ...]  # label-id order; empty = taken from the manifest (user recipe)
    layout: str  # what the corpus folder must look like, quoted in error messages
    collect: Callable[..., list[Utterance]]
    # label name -> the polarity ids it can carry (models.md §2.4; MELD surprise carries both negative and
    # positive: its per-utterance polarity comes from the shipped sentiment)
    polarity: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
