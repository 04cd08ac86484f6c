"""Dialogue names, splits and sentiment for an imported pickle.

Dev split, first rule that applies (the prepare report records which):
  file             the file has its own dev list (COSMIC's validIds);
  iemocap-packaged IEMOCAP: the training dialogues on the packaged IEMOCAP-6 dev list (iemocap_splits.json);
  meld-official    MELD with the published numbering (one range over all splits: train d, dev 1039 + d, test
                   1153 + d; ranges from the official CSVs in meld_splits.json): the training dialogues in the
                   dev range are the official dev dialogues;
  held-out         otherwise DEV_FRACTION of the training dialogues, drawn with random.Random(DEV_SEED) from
                   the training ids sorted as strings.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Hashable
from functools import lru_cache
from importlib import resources
from typing import Any

from mer_pipe.common.errors import ManifestError

from .layouts import Conversations

DEV_FRACTION = 0.1
DEV_SEED = 0
SPLITS = ("train", "dev", "test")
# MELD emotions whose sentiment is fixed (surprise carries either polarity)
FIXED_SENTIMENT = {"neutral": "neutral", "joy": "positive", "anger": "negative", "disgust": "negative",
                   "fear": "negative", "sadness": "negative"}
SENTIMENT_IDS = {"neutral": 0, "positive": 1, "negative": 2}  # the DialogueRNN MELD loaders' order


@lru_cache(maxsize=1)
def meld_splits() -> dict[str, Any]:
    """The packaged official MELD dialogue ids per split and the published numbering offsets."""
    path = resources.files("mer_pipe.pipeline.corpus.recipes").joinpath("meld_splits.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _spans() -> dict[str, tuple[int, int]]:
    """split -> [first, end) of its range in the published numbering (train 0..1038, dev 1039..1152, ...)."""
    m = meld_splits()
    return {s: (m["offsets"][s], m["offsets"][s] + max(m[s]) + 1) for s in SPLITS}


def meld_global_id(split: str, dialogue: int) -> int | None:
    """The published id of MELD dialogue `dialogue` of `split`, or None when it falls outside that split's range."""
    lo, hi = _spans()[split]
    return lo + dialogue if 0 <= dialogue < hi - lo else None


def meld_names(conv: Conversations) -> dict[Hashable, str] | None:
    """key -> 'train/dia5' | 'dev/dia3' | 'test/dia7' when every key lies in the published MELD numbering and
    the split lists agree with it (train list: train or dev range, test list: test range); else None."""
    spans = _spans()
    placed: dict[Hashable, tuple[str, int]] = {}
    for d in conv.dialogues:
        split = next((s for s, (lo, hi) in spans.items() if isinstance(d.key, int) and lo <= d.key < hi), None)
        if split is None:
            return None
        placed[d.key] = (split, d.key - spans[split][0])
    allowed = {"train": ("train", "dev"), "test": ("test",), "dev": ("dev",)}
    for split, keys in conv.splits.items():
        if any(k in placed and placed[k][0] not in allowed[split] for k in keys or ()):
            return None
    return {k: f"{s}/dia{n}" for k, (s, n) in placed.items()}


def _dev_rule(conv: Conversations, train: list[Hashable], names: dict[Hashable, str] | None) -> tuple[list, dict]:
    if conv.layout.variant == "iemocap":
        from mer_pipe.pipeline.corpus.recipes.iemocap import load_splits

        packaged = set(load_splits()["dev"])
        moved = [k for k in train if k in packaged]
        if moved:
            return moved, {"rule": "iemocap-packaged", "detail": f"{len(moved)} training dialogues are on the "
                           "packaged IEMOCAP-6 dev list (pipeline/corpus/recipes/iemocap_splits.json)"}
    if conv.layout.variant == "meld" and names:
        moved = [k for k in train if names[k].startswith("dev/")]
        if moved:
            lo, hi = _spans()["dev"]
            return moved, {"rule": "meld-official", "detail": f"{len(moved)} training dialogues carry ids of the "
                           f"official MELD dev range {lo}..{hi - 1} (pipeline/corpus/recipes/meld_splits.json)"}
    pool = sorted(train, key=str)
    n = max(1, round(DEV_FRACTION * len(pool))) if len(pool) >= 2 else 0
    moved = random.Random(DEV_SEED).sample(pool, n)
    return moved, {"rule": "held-out", "detail": f"{n} of {len(pool)} training dialogues held out as dev "
                   f"(fraction {DEV_FRACTION}, random.Random({DEV_SEED}).sample over the ids sorted as strings)"}


def assign_splits(conv: Conversations, names: dict[Hashable, str] | None) -> tuple[dict[Hashable, str], dict]:
    """(dialogue key -> train|dev|test, {"rule", "detail"}). Keys in no split list are left out."""
    lay = conv.layout
    split_of: dict[Hashable, str] = {}
    for split in ("train", "test", "dev"):
        for k in conv.splits.get(split) or ():
            if k in split_of and split_of[k] != split:
                raise ManifestError(f"dialogue {k!r} is listed in both {split_of[k]} and {split} of the "
                                    f"{lay.name} file; the file is inconsistent")
            split_of[k] = split
    if conv.splits.get("dev"):
        return split_of, {"rule": "file", "detail": f"the file's own {lay.names[lay.roles.index('dev')]} list"}
    present = {d.key for d in conv.dialogues}
    train = [k for k in conv.splits["train"] if k in present]
    moved, rule = _dev_rule(conv, train, names)
    for k in moved:
        split_of[k] = "dev"
    return split_of, rule


def sentiment_names(conv: Conversations, label_names: tuple[str, ...]) -> tuple[dict[int, str] | None, str]:
    """Which sentiment id means what, inferred from the emotions it co-occurs with (joy is positive, neutral is
    neutral, anger is negative, ...). None when the file has no sentiment or the ids do not fit MELD."""
    votes: dict[int, Counter] = {}
    for d in conv.dialogues:
        for s, y in zip(d.sentiment or (), d.labels):
            name = label_names[y] if 0 <= y < len(label_names) else None
            if name in FIXED_SENTIMENT:
                votes.setdefault(s, Counter())[FIXED_SENTIMENT[name]] += 1
    if not votes:
        return None, "no sentiment ids in the file"
    mapping = {s: c.most_common(1)[0][0] for s, c in votes.items()}
    disagree = sum(n for s, c in votes.items() for p, n in c.items() if p != mapping[s])
    if len(set(mapping.values())) != len(mapping) or disagree:
        return None, f"sentiment ids do not match the emotions ({disagree} disagreements); sentiment left null"
    return mapping, "sentiment ids read as " + ", ".join(f"{s}={p}" for s, p in sorted(mapping.items()))
