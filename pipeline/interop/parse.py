"""A detected feature pickle -> `Conversations`: plain per-dialogue lists and [n, D] float32 arrays, checked.

Every per-dialogue element must hold the same dialogues with the same number of utterances as the label
dict; a mismatch is a ManifestError naming the file, the dialogue and the element.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
from mer_pipe.common.errors import ManifestError

from .layouts import FEATURE_SLOTS, PER_DIALOGUE, Conversations, Dialogue, Layout, norm_key, text


def _ints(values: Any, where: str) -> list[int]:
    out = []
    for x in (values.tolist() if isinstance(values, np.ndarray) else values):
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not float(x).is_integer():
            raise ManifestError(f"{where}: {x!r} is not an integer class id; is this the right element?")
        out.append(int(x))
    return out


def _matrix(values: Any, n: int, where: str) -> np.ndarray:
    if isinstance(values, (list, tuple)) and values and all(
            isinstance(v, (list, tuple, np.ndarray)) and len(v) == 0 for v in values):
        return np.zeros((len(values), 0), np.float32)  # zero-width rows: a modality the file does not carry
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"{where}: rows are not one numeric matrix ({exc}); every utterance needs a vector "
                            "of the same length") from None
    if arr.ndim == 3 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ManifestError(f"{where}: shape {arr.shape}, expected [{n}, D] (one vector per utterance)")
    if not np.isfinite(arr).all():
        raise ManifestError(f"{where}: holds NaN or infinite values; the file is damaged")
    return arr


def _speakers(values: Any, variant: str, where: str) -> list[Any]:
    if variant == "iemocap":
        return [text(s) for s in values]
    out = []
    for row in values:
        r = np.asarray(row).reshape(-1)
        out.append(int(r.argmax()) if r.size and r.max() > 0 else -1)
    return out


def _get(element: dict, key: Hashable, raw_key: Any, name: str, source: str) -> Any:
    if raw_key in element:
        return element[raw_key]
    if key in element:
        return element[key]
    raise ManifestError(f"{source}: dialogue {key!r} has labels but no entry in {name}; the file is inconsistent")


def _dialogue(obj: Any, layout: Layout, raw_key: Any, source: str) -> Dialogue:
    key = norm_key(raw_key)
    li = layout.roles.index("labels")
    labels = _ints(obj[li][raw_key], f"{source}: {layout.names[li]}[{key!r}]")
    d = Dialogue(key=key, labels=labels, speakers=[], sentences=[])
    for i, role in enumerate(layout.roles):
        if role not in PER_DIALOGUE or role == "labels":
            continue
        where = f"{source}: {layout.names[i]}[{key!r}]"
        v = _get(obj[i], key, raw_key, layout.names[i], source)
        if role in FEATURE_SLOTS:
            d.feats[role] = _matrix(v, d.n, where)
            continue
        if len(v) != d.n:
            raise ManifestError(f"{where} has {len(v)} entries but the dialogue has {d.n} labels; the file is "
                                "inconsistent")
        if role == "speakers":
            d.speakers = _speakers(v, layout.variant, where)
        elif role == "sentences":
            d.sentences = [text(s) for s in v]
        elif role == "sentiment":
            d.sentiment = _ints(v, where)
        elif role == "ids":
            d.utt_ids = [norm_key(u) for u in (v.tolist() if isinstance(v, np.ndarray) else v)]
    return d


def _extra_sentiment(obj: Any, layout: Layout, dialogues: list[Dialogue]) -> bool:
    """MMGCN MELD's unused 10th element: taken as sentiment ids when it is int lists shaped like the labels."""
    if "extra" not in layout.roles:
        return False
    extra = obj[layout.roles.index("extra")]
    if not isinstance(extra, dict):
        return False
    keyed = {norm_key(k): v for k, v in extra.items()}
    try:
        sent = [_ints(keyed[d.key], "") for d in dialogues]
    except (KeyError, TypeError, ManifestError):
        return False
    if any(len(s) != d.n for s, d in zip(sent, dialogues)):
        return False
    for s, d in zip(sent, dialogues):
        d.sentiment = s
    return True


def read_conversations(obj: Any, layout: Layout, source: str) -> Conversations:
    """Dialogues in the order of the label dict; split lists as normalised keys."""
    li = layout.roles.index("labels")
    dialogues = [_dialogue(obj, layout, raw, source) for raw in obj[li]]
    if not dialogues:
        raise ManifestError(f"{source}: {layout.names[li]} holds no dialogues")
    roles = tuple(r for r in layout.roles if r in FEATURE_SLOTS)
    for role in roles:
        dims = {d.feats[role].shape[1] for d in dialogues}
        if len(dims) > 1:
            raise ManifestError(f"{source}: {layout.names[layout.roles.index(role)]} mixes vector sizes "
                                f"{sorted(dims)}; every utterance needs the same dimension")
    splits: dict[str, list[Hashable] | None] = {"dev": None}
    for split in ("train", "test", "dev"):
        if split in layout.roles:
            splits[split] = [norm_key(k) for k in obj[layout.roles.index(split)]]
    notes = []
    if "extra" in layout.roles:
        used = _extra_sentiment(obj, layout, dialogues)
        notes.append("element 9 (`_`) read as sentiment ids" if used else "element 9 (`_`) ignored (not per-dialogue ids)")
    return Conversations(layout=layout, dialogues=dialogues, splits=splits, feature_roles=roles, notes=notes)
