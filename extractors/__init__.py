"""Feature extractors: a registry of named extractors plus media decoding helpers.

Importing this package is cheap: each extractor module imports torch / transformers / opensmile
inside `setup` and `extract`.
"""
from __future__ import annotations

from typing import Any

from .base import EXTRACTORS, Extractor
from . import opensmile_fn, swin, text_hf, wav2vec2  # noqa: F401,E402  (register themselves)

__all__ = ["EXTRACTORS", "Extractor", "build_extractor"]


def build_extractor(name: str, config: dict[str, Any] | None = None) -> Extractor:
    """Instantiate a registered extractor; only validates the config (weights load in `setup`)."""
    return EXTRACTORS.get(name)(config)
