"""Corpus recipes: each turns a raw corpus folder into manifest rows (see pipeline/prepare.py).

`RECIPES` maps the recipe name to a `Recipe`; `get_recipe(name)` raises ConfigError listing the choices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from mer_pipe.common.registry import Registry

if TYPE_CHECKING:
    from ..manifest import Utterance


@dataclass(frozen=True)
class Recipe:
    """`collect(root, report, probe=..., manifest_file=...) -> list[Utterance]` records problems in `report`."""

    name: str
    labels: tuple[str, ...]  # label-id order; empty = taken from the manifest (user recipe)
    layout: str  # what the corpus folder must look like, quoted in error messages
    collect: Callable[..., list["Utterance"]]


RECIPES: Registry[Recipe] = Registry("recipe")


def get_recipe(name: str) -> Recipe:
    return RECIPES.get(name)


def _register_builtin() -> None:
    from . import iemocap, manifest, meld

    for mod in (meld, iemocap, manifest):
        RECIPES.register(mod.RECIPE.name)(mod.RECIPE)


_register_builtin()
