"""Selection by cross-validation over the training dialogues (`mer-pipe sweep ... --select-on cv5`; issue 19).

A small dev set (IEMOCAP: 647 utterances in 12 dialogues) is a noisy judge of which features or settings win.
`cvK` deals the labelled TRAINING dialogues into K folds (seeded, fixed: every config of a sweep sees the same
folds, so configs are compared pair-wise), fits the model K times on K-1 folds, picks each fit's epoch on its
held-out fold and scores it there; the selection signal is the mean held-out weighted F1 over folds (and seeds).

Dev and test are untouched: before any fit the labels (and polarities) of every dev and test utterance are
blanked in the corpus the folds are cut from, so neither selection nor feature standardisation nor class weights
can read them (tests/test_cvselect.py scrambles them and gets bit-identical scores). Dialogues are never split
across folds, so a context model's held-out dialogue is unseen as a whole.

Caveat that the numbers show (README): with PLAIN fine-tuned features the held-out folds' features come from an
encoder trained on their labels, so their CV score is optimistic, exactly like their training rows; compare
feature sets by CV only among frozen and cross-fitted ones. `cv_notes` names such slots (sweep.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mer_pipe.common.errors import ConfigError
from mer_pipe.pipeline.corpus import folds

from mer_pipe.pipeline.train.data import Corpus, make_view
from mer_pipe.pipeline.train.protocols import Fold

CV_SEED = 0
CV_FILE = "cv.json"
DEFAULT_FOLDS = 5
_CV_RE = re.compile(r"^cv(\d*)$")
Log = Callable[[str], None]


def parse_select_on(value: str | None) -> tuple[str | None, int]:
    """'cv5' -> (None, 5), 'cv' -> (None, 5); 'dev' / 'test' / None -> (value, 0). The first item is what the
    run config's select_on becomes (None: unchanged, i.e. dev for the standard runs of a CV sweep)."""
    if value is None or not isinstance(value, str):
        return value, 0
    m = _CV_RE.match(value.strip().lower())
    if not m:
        return value, 0
    k = int(m.group(1)) if m.group(1) else DEFAULT_FOLDS
    if k < 2:
        raise ConfigError(f"--select-on {value}: cross-validation needs at least 2 folds, e.g. --select-on cv5")
    return None, k


def train_only(corpus: Corpus) -> Corpus:
    """The corpus with every non-training label and polarity blanked (-1): CV cannot read dev or test labels."""
    import torch

    train = torch.from_numpy(np.append(corpus.splits == "train", False))
    minus = torch.full_like(corpus.label, -1)
    return dataclasses.replace(corpus, label=torch.where(train, corpus.label, minus),
                               polarity=torch.where(train, corpus.polarity, torch.full_like(corpus.polarity, -1)))


def dialogue_folds(dialogue_ids: Sequence[str], n_folds: int, seed: int = CV_SEED) -> dict[str, int]:
    """Dialogue id -> fold (`corpus.folds`, the rule cross-fitted fine-tunes use too)."""
    n = len(set(dialogue_ids))
    return folds.dialogue_folds(dialogue_ids, n_folds, seed, option=f"--select-on cv{n_folds}",
                                fix=f"use --select-on cv{max(2, n)} or dev")


def cv_folds(corpus: Corpus, dialogue_of: dict[str, str], n_folds: int, unit: str,
             seed: int = CV_SEED) -> tuple[list[Fold], dict[str, int]]:
    """K Folds over the labelled training dialogues of a train-only corpus: train = the other folds, dev = test =
    the held-out fold (epoch picked and scored there). Returns (folds, dialogue -> fold)."""
    labels = corpus.label[:-1].numpy()
    train_utts = np.flatnonzero((corpus.splits == "train") & (labels >= 0))
    fold_of = dialogue_folds([dialogue_of[corpus.ids[i]] for i in train_utts], n_folds, seed)
    fold = np.full(corpus.n, -1, dtype=np.int64)
    for i in train_utts:
        fold[i] = fold_of[dialogue_of[corpus.ids[i]]]
    out = []
    for k in range(n_folds):
        held = make_view(corpus, fold == k, unit)
        out.append(Fold(f"cv{k}", make_view(corpus, (fold >= 0) & (fold != k), unit), held, held, "dev"))
    return out, fold_of


def cross_validate(cfg: Any, n_folds: int, cache_dir: str | Path, *, device: str = "cpu", seed: int = CV_SEED,
                   log: Log = lambda s: None, lock: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mean held-out weighted F1 of `cfg` (a RunConfig) over K folds of the training dialogues, per seed and over
    seeds. Never reads a dev or test label (see the module docstring). `lock`: the dataset's lock.json, when read."""
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    from mer_pipe.pipeline.train.data import load_corpus
    from mer_pipe.pipeline.train.loop import fit
    from mer_pipe.pipeline.train.metrics import aggregate

    t0 = time.perf_counter()
    corpus = train_only(load_corpus(cfg.dataset, cfg.modalities, cache_dir, cfg.slots, lock=lock))
    _, utts = load_dataset(cfg.dataset, cache_dir)
    dialogue_of = {u.id: u.dialogue_id for u in utts}
    folds, fold_of = cv_folds(corpus, dialogue_of, n_folds, cfg.trainer.unit, seed)
    per_fold, per_seed = [], {}
    for s in cfg.seeds:
        scores = []
        for f in folds:
            res = fit(cfg.model, cfg.model_config, corpus, cfg.modalities, f, cfg.trainer, s, device)
            per_fold.append({"seed": s, "fold": f.name, "n_train": f.train.n_labelled, "n_heldout": f.dev.n_labelled,
                             "weighted_f1": res.dev["weighted_f1"], "accuracy": res.dev["accuracy"],
                             "macro_f1": res.dev["macro_f1"], "best_epoch": res.best_epoch + 1,
                             "seconds": res.seconds})
            scores.append(res.dev["weighted_f1"])
            log(f"cv seed {s} {f.name}: held-out W-F1 {res.dev['weighted_f1']:.4f} ({res.seconds:.1f}s)")
        per_seed[str(s)] = float(np.mean(scores))
    ident = "\n".join(f"{d}\t{k}" for d, k in sorted(fold_of.items()))
    return {"folds": n_folds, "fold_seed": seed, "unit": "training dialogues",
            "fold_dialogues_sha256": hashlib.sha256(ident.encode()).hexdigest(),
            "fold_sizes": [int(sum(1 for k in fold_of.values() if k == j)) for j in range(n_folds)],
            "features": corpus.features, "per_fold": per_fold, "per_seed": per_seed,
            "weighted_f1": aggregate(list(per_seed.values())), "seconds": time.perf_counter() - t0}


def write_cv(out: Path, task_key: str, cfg: Any, n_folds: int, cache_dir: Path, device: str,
             lock: dict[str, Any] | None = None) -> None:
    """A sweep task's CV record: `out/cv.json` = cross_validate(...) plus the task key it belongs to."""
    from mer_pipe.common.files import write_json_atomic

    rec = cross_validate(cfg, n_folds, cache_dir, device=device, lock=lock)
    write_json_atomic(out / CV_FILE, {"task_key": task_key, **rec}, sort_keys=False)


def cv_notes(dataset: str, n_folds: int, reports: Sequence[Any], cache_dir: str | Path | None) -> list[str]:
    """Before a CV sweep writes anything: refuse K folds when the dataset has fewer labelled training dialogues;
    return a note for every fine-tuned slot among `reports` (corpus.leak.slot_reports of the sweep's slots, made
    once per sweep) holding plain (not cross-fitted) features, whose CV score is optimistic."""
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    _, utts = load_dataset(dataset, cache_dir)
    dialogue_folds([u.dialogue_id for u in utts if u.split == "train" and u.label_id is not None], n_folds)
    return [f"NOTE: slot {sf.slot} holds fine-tuned features that were not cross-fitted: the encoder trained on the "
            "labels of every training dialogue, so the held-out CV folds' features are memorised too and its CV score "
            f"is optimistic; compare feature sets by CV among frozen and cross-fitted ones (--set "
            f"{sf.slot}.finetune.crossfit=5)"
            for sf in reports if not sf.crossfit]


__all__ = ["CV_FILE", "CV_SEED", "cross_validate", "cv_folds", "cv_notes", "dialogue_folds", "parse_select_on",
           "train_only", "write_cv"]
