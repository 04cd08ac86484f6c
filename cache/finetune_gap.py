"""What a fine-tuned feature set's encoder scores on the rows a downstream model trains on, next to dev.

A fine-tuned encoder has seen the labels of the training utterances; evaluated on them (eval mode, with the
weights that were kept) it separates the classes far better than on dev. Its features carry that: a downstream
model trained on them learns to trust features that are better on train than they will ever be on dev or test
(issue 19). The fine-tune stage records the scores in the checkpoint's finetune.json (`scores`, and the dialogues
the encoder trained on / held out in `dialogues`); this module reads them for one locked slot:

* plain fine-tune: train rows come from the all-train encoder, so the gap is its train W-F1 - dev W-F1;
* cross-fitted (`finetune_keys` in the spec): train rows come from the fold encoders that did not see them, so the
  gap is their out-of-fold W-F1 (mean over folds, weighted by held-out utterances) - the all-train dev W-F1.

Plain data only (the pipeline words the messages and owns the threshold: pipeline/corpus/leak.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from mer_pipe.common.errors import CacheError

from .checkpoints import META_FILE, EncoderScores, checkpoint_dir, scores_of
from .store import FeatureStore, read_json


@dataclass(frozen=True)
class SlotFinetune:
    """The fine-tune behind one locked slot: the all-train encoder and, when cross-fitted, the fold encoders."""

    slot: str
    extractor: str
    feature_key: str
    all: EncoderScores | None
    folds: tuple[EncoderScores, ...] = ()
    n_folds: int = 0  # cross-fit folds the spec names (0: a plain fine-tune)
    missing: tuple[str, ...] = ()  # checkpoint keys whose record is gone (the features still load)

    @property
    def crossfit(self) -> int:
        return self.n_folds

    @property
    def train_rows(self) -> float | None:
        """W-F1 of the encoder(s) that made the training rows, on those rows."""
        if not self.crossfit:
            return self.all.train if self.all else None
        pairs = [(f.heldout, f.n_heldout) for f in self.folds]
        if len(pairs) != self.n_folds or any(v is None or n <= 0 for v, n in pairs):
            return None
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)

    @property
    def dev(self) -> float | None:
        return self.all.dev if self.all else None

    @property
    def gap(self) -> float | None:
        """train rows' W-F1 - dev W-F1 (fractions); None when a score is not recorded."""
        tr, dev = self.train_rows, self.dev
        return None if tr is None or dev is None else tr - dev


def _meta(store: FeatureStore, dataset: str, key: str) -> dict[str, Any] | None:
    try:
        meta = read_json(checkpoint_dir(store, dataset, key) / META_FILE, "fine-tune record")
    except (FileNotFoundError, CacheError):
        return None
    return meta if isinstance(meta, dict) else None


def slot_finetune(store: FeatureStore, dataset: str, slot: str,
                  lock: Mapping[str, Any] | None = None) -> SlotFinetune | None:
    """The fine-tune behind the feature set locked to `slot` (None: no such slot, or frozen features). `lock`: the
    dataset's lock.json when the caller has read it already."""
    try:
        entry = (store.read_lock(dataset) if lock is None else lock).get(slot)
    except CacheError:
        return None
    if not isinstance(entry, Mapping):
        return None
    ex, key = str(entry.get("extractor")), str(entry.get("key"))
    try:
        spec = store.read_spec(dataset, ex, key)
    except (CacheError, FileNotFoundError):
        return None
    keys = list(spec.get("finetune_keys") or []) or ([spec["upstream"]] if spec.get("upstream") else [])
    if not keys:
        return None
    metas = {k: _meta(store, dataset, str(k)) for k in keys}
    scores = {k: scores_of(m) for k, m in metas.items() if m is not None}
    return SlotFinetune(slot=slot, extractor=ex, feature_key=key, all=scores.get(keys[0]),
                        folds=tuple(scores[k] for k in keys[1:] if k in scores), n_folds=len(keys) - 1,
                        missing=tuple(str(k) for k, m in metas.items() if m is None))


__all__ = ["EncoderScores", "SlotFinetune", "scores_of", "slot_finetune"]  # the first two re-exported
