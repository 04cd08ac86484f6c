"""Evaluation protocols (models.md §1.4): which utterances train, select and report.

* `standard` (default): the dataset's train / dev / test split, model selection on dev.
* `--select-on test`: the papers' habit (best test epoch). Every output carries SELECT_ON_TEST_WARNING.
* `kfold10-utterance`: DeepMSI's protocol, `KFold(10, shuffle=True, random_state=42)` over the pooled
  labelled utterances of all splits. Selection on the held-out fold with `--select-on test` (as the
  paper does); with the default `dev`, a ninth of each training fold is held out for selection instead.
  Numbers from it are not comparable with standard-split numbers (dialogues leak across folds).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mer_pipe.common.errors import ConfigError

from .data import Corpus, View, make_view

PROTOCOLS = ("standard", "kfold10-utterance")
SELECT_ON = ("dev", "test")
KFOLD_SEED = 42
SELECT_ON_TEST_WARNING = (
    "WARNING: model selection on the TEST set (--select-on test, the papers' habit); the reported test "
    "numbers are optimistically biased and not an honest estimate"
)
KFOLD_WARNING = (
    "NOTE: kfold10-utterance pools train/dev/test utterances (DeepMSI protocol); utterances of one dialogue "
    "and speaker appear in both training and evaluation folds, so numbers are not comparable with the standard split"
)


@dataclass(frozen=True)
class Fold:
    """One train / select / report partition. `name` is 'split' or 'fold3'."""

    name: str
    train: View
    dev: View
    test: View
    select_on: str


def _check(protocol: str, select_on: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if select_on not in SELECT_ON:
        raise ConfigError(f"--select-on {select_on!r}: choose one of {', '.join(SELECT_ON)}")


def standard_split(corpus: Corpus, select_on: str, unit: str) -> list[Fold]:
    """The dataset's own split; with select_on='test' the dev view is the test view."""
    train = make_view(corpus, corpus.splits == "train", unit)
    test = make_view(corpus, corpus.splits == "test", unit)
    dev = test if select_on == "test" else make_view(corpus, corpus.splits == "dev", unit)
    for name, v in (("train", train), ("test", test), ("dev", dev)):
        if v.n_labelled == 0:
            fix = " or pass --select-on test (flagged as biased)" if name == "dev" else ""
            raise ConfigError(f"dataset {corpus.name!r} has no labelled {name} utterances; prepare it with a "
                              f"{name} split, use --protocol kfold10-utterance{fix}")
    return [Fold("split", train, dev, test, select_on)]


def kfold_utterance(corpus: Corpus, select_on: str, unit: str, n_splits: int = 10, seed: int = KFOLD_SEED) -> list[Fold]:
    """KFold over pooled labelled utterances; dialogue-level models see whole dialogues as context with
    only the fold's utterances labelled."""
    from sklearn.model_selection import KFold

    labelled = np.flatnonzero(corpus.label[:-1].numpy() >= 0)
    if len(labelled) < n_splits:
        raise ConfigError(f"dataset {corpus.name!r} has {len(labelled)} labelled utterances; {n_splits}-fold CV needs at least {n_splits}")
    folds = []
    for k, (tr, te) in enumerate(KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(labelled)):
        tr_idx, te_idx = labelled[tr], labelled[te]
        if select_on == "dev":
            # Deterministic per fold: hold out a ninth of the training fold for model selection.
            perm = np.random.RandomState(seed + k).permutation(len(tr_idx))
            n_dev = max(1, len(tr_idx) // 9)
            dev_idx, tr_idx = tr_idx[perm[:n_dev]], tr_idx[perm[n_dev:]]
        mask = lambda ix: np.isin(np.arange(corpus.n), ix)  # noqa: E731
        test = make_view(corpus, mask(te_idx), unit)
        dev = test if select_on == "test" else make_view(corpus, mask(dev_idx), unit)
        folds.append(Fold(f"fold{k}", make_view(corpus, mask(tr_idx), unit), dev, test, select_on))
    return folds


def make_folds(corpus: Corpus, protocol: str, select_on: str, unit: str) -> list[Fold]:
    """Folds for a protocol name (see PROTOCOLS)."""
    _check(protocol, select_on)
    if protocol == "standard":
        return standard_split(corpus, select_on, unit)
    return kfold_utterance(corpus, select_on, unit)


def protocol_notes(protocol: str, select_on: str) -> list[str]:
    """Warnings that must accompany every number a protocol produced."""
    notes = []
    if select_on == "test":
        notes.append(SELECT_ON_TEST_WARNING)
    if protocol == "kfold10-utterance":
        notes.append(KFOLD_WARNING)
    return notes


@dataclass
class RunRecord:
    """One fitted model: which seed and fold, its FitResult and the fold's test utterance ids."""

    seed: int
    fold: str
    result: object  # train.FitResult
    test_ids: list[str]
