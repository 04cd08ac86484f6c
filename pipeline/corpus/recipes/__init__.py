"""Corpus recipes: each turns a raw corpus folder into manifest rows (see corpus/prepare.py).

`RECIPES` maps the recipe name to a `Recipe`; `get_recipe(name)` raises ConfigError listing the choices.
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
