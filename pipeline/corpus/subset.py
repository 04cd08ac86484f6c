"""A seeded subset of the training dialogues (`prepare ... --train-utterances N --subset-seed S`).

To measure how a setting behaves on a smaller corpus with the same dev and test sets (issue 19: fine-tuning on
an IEMOCAP-sized corpus), the training split is cut to about N utterances made of WHOLE dialogues, so every
kept dialogue still has its full context. Dev and test are never touched.

Rule (deterministic, recorded in dataset.json and prepare_report.json so anyone can rerun it): the training
dialogues, sorted by id, are permuted with `numpy.random.default_rng(seed)`; the subset is the shortest prefix
of that order whose utterance count is closest to N (ties: the smaller one). A prefix of a random order is an
unbiased sample of dialogues (no preference for short ones), and the count lands within half a dialogue of N.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

from mer_pipe.common.errors import ConfigError

from .manifest import Utterance

SUBSET_RULE = ("training dialogues sorted by id, permuted by numpy.random.default_rng(seed); the shortest prefix "
               "whose utterance count is closest to N (ties: the smaller); dev and test untouched")


def subset_train(utts: Sequence[Utterance], n: int, seed: int = 0) -> tuple[list[Utterance], dict[str, Any]]:
    """(kept utterances in manifest order, record): about `n` training utterances in whole dialogues.

    The record holds the request (n, seed, rule), what was kept (dialogues, utterances, a sha256 of the kept
    dialogue ids) and the size of the full training split."""
    import numpy as np

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--train-utterances {n!r}: give a positive number of training utterances, e.g. 5000")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--subset-seed {seed!r}: give an integer >= 0, e.g. --subset-seed 0")
    sizes: dict[str, int] = {}
    for u in utts:
        if u.split == "train":
            sizes[u.dialogue_id] = sizes.get(u.dialogue_id, 0) + 1
    if not sizes:
        raise ConfigError("--train-utterances: the corpus has no training utterances to subset; drop the option")
    dias = sorted(sizes)
    order = [dias[i] for i in np.random.default_rng(seed).permutation(len(dias))]
    total, best_len, best_err = 0, 0, n  # an empty prefix is |0 - n| away
    for i, d in enumerate(order, start=1):
        total += sizes[d]
        err = abs(total - n)
        if err < best_err:
            best_len, best_err = i, err
        if total >= n:
            break
    kept = set(order[:max(1, best_len)])
    out = [u for u in utts if u.split != "train" or u.dialogue_id in kept]
    n_kept = sum(sizes[d] for d in kept)
    record = {
        "train_utterances": n, "seed": seed, "rule": SUBSET_RULE,
        "kept_dialogues": len(kept), "kept_utterances": n_kept,
        "full_train_dialogues": len(dias), "full_train_utterances": sum(sizes.values()),
        "kept_dialogues_sha256": hashlib.sha256("\n".join(sorted(kept)).encode()).hexdigest(),
    }
    return out, record


def subset_note(record: dict[str, Any]) -> str:
    return (f"training split subset: {record['kept_utterances']} of {record['full_train_utterances']} utterances in "
            f"{record['kept_dialogues']} of {record['full_train_dialogues']} whole dialogues (asked for "
            f"{record['train_utterances']}, --subset-seed {record['seed']}); dev and test are complete")


__all__ = ["SUBSET_RULE", "subset_note", "subset_train"]
