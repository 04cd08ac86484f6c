"""Corpus recipes: each turns a raw corpus folder into manifest rows (see corpus/prepare.py).

`RECIPES` maps the recipe name to a `Recipe`; `get_recipe(name)` raises ConfigError listing the choices;
`label_polarity(name)` is the polarity of the labels of a dataset prepared with that recipe.
"""
from __future__ import annotations

from mer_pipe.common.registry import Registry

from . import iemocap, manifest, meld
from .base import Recipe

RECIPES: Registry[Recipe] = Registry("recipe")
for _mod in (meld, iemocap, manifest):
    RECIPES.register(_mod.RECIPE.name)(_mod.RECIPE)


def get_recipe(name: str) -> Recipe:
    return RECIPES.get(name)


def label_polarity(recipe: str | None) -> dict[str, tuple[int, ...]]:
    """Label name -> polarity ids, from the recipe a dataset was prepared with (dataset.json `recipe`). A recipe
    without its own (the user manifest, pickle and Parquet imports, an older dataset.json) gets the union of
    every recipe's: such corpora mostly use the built-in label names; other names fall back to what the data
    shows (train/data.py)."""
    own = RECIPES.get(recipe).polarity if recipe in RECIPES else None
    if own:
        return dict(own)
    merged: dict[str, tuple[int, ...]] = {}
    for name in RECIPES.names():
        for label, pols in RECIPES.get(name).polarity.items():
            merged.setdefault(label, tuple(pols))
    return merged

