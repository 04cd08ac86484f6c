"""Folds of training dialogues: one rule for cross-fitted fine-tunes and cross-validated selection.

Sorted dialogue ids, a seeded permutation, dealt round-robin: fold sizes differ by at most one dialogue and
the same (ids, folds, seed) always give the same folds.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mer_pipe.common.errors import ConfigError


def dialogue_folds(dialogue_ids: Sequence[str], n_folds: int, seed: int, *, option: str, fix: str) -> dict[str, int]:
    """Dialogue id -> fold in 0..n_folds-1. Fewer dialogues than folds is a ConfigError naming `option`
    (the setting that asked for the folds) and `fix`."""
    dias = sorted(set(dialogue_ids))
    if len(dias) < n_folds:
        raise ConfigError(f"{option}: only {len(dias)} labelled training dialogues; {fix}")
    order = np.random.default_rng(seed).permutation(len(dias))
    return {dias[j]: pos % n_folds for pos, j in enumerate(order)}
