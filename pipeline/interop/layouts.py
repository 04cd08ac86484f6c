"""The published ERC feature-pickle layouts, how to recognise them, and how to read one into plain dialogues.

Every layout is a tuple (or list) of per-dialogue dicts keyed by dialogue id plus lists of dialogue ids
per split. The loaders that read them (the repos' `dataloader.py`) fix the element order:

  mmgcn-iemocap     9: videoIDs, videoSpeakers ('M'/'F'), videoLabels, videoText, videoAudio, videoVisual,
                       videoSentence, trainVid, testVid          (IEMOCAP_features.pkl: MMGCN, DialogueRNN,
                                                                  DialogueGCN, M3Net IEMOCAPDataset)
  mmgcn-meld       10: the same with one-hot speaker rows, then an unused 10th element
                                                                 (MELD_features_raw1.pkl: MMGCN MELDDataset)
  dialoguernn-meld  9: videoIDs, videoSpeakers (one-hot), videoLabels, videoText, videoAudio, videoSentence,
                       trainVid, testVid, sentiment labels      (MELD_features_raw.pkl: DialogueRNN MELDDataset)
  cosmic-iemocap   10: speakers ('M'/'F'), labels, roberta1..4, sentences, trainIds, testIds, validIds
                                                                 (COSMIC IEMOCAPRobertaCometDataset)
  cosmic-meld      11: speakers (one-hot), emotion_labels, sentiment_labels, roberta1..4, sentences,
                       trainIds, testIds, validIds              (COSMIC MELDRobertaCometDataset)
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mer_pipe.common.errors import ManifestError

PER_DIALOGUE = ("ids", "speakers", "labels", "sentiment", "text", "audio", "visual", "roberta1", "roberta2",
                "roberta3", "roberta4", "sentences")
SPLIT_ROLES = {"train": "train", "test": "test", "dev": "dev"}
# feature role -> lock slot (COSMIC's four RoBERTa layers: the last one is `t`, the others extra slots)
FEATURE_SLOTS = {"text": "t", "audio": "a", "visual": "v", "roberta1": "t", "roberta2": "t_r2",
                 "roberta3": "t_r3", "roberta4": "t_r4"}
_WANT = {"speakers": None, "labels": "ints", "sentiment": "ints", "sentences": "strs", "ids": "any",
         "train": "keys", "test": "keys", "dev": "keys", "extra": "any"}
_MAX_ONE_HOT = 32


@dataclass(frozen=True)
class Layout:
    name: str
    variant: str  # label set and speaker encoding: "iemocap" ('M'/'F') or "meld" (one-hot rows)
    roles: tuple[str, ...]
    names: tuple[str, ...]  # what the loader calls each element
    loader: str

    def signature(self) -> str:
        return f"{self.name} ({len(self.roles)}: {', '.join(self.names)})"


_MM = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence",
       "trainVid", "testVid")
_MM_ROLES = ("ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train", "test")
_RB = ("roberta1", "roberta2", "roberta3", "roberta4")
LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (
    Layout("mmgcn-iemocap", "iemocap", _MM_ROLES, _MM,
           "MMGCN / DialogueRNN / DialogueGCN dataloader.IEMOCAPDataset (IEMOCAP_features.pkl)"),
    Layout("mmgcn-meld", "meld", _MM_ROLES + ("extra",), _MM + ("_",),
           "MMGCN dataloader.MELDDataset (MELD_features_raw1.pkl)"),
    Layout("dialoguernn-meld", "meld",
           ("ids", "speakers", "labels", "text", "audio", "sentences", "train", "test", "sentiment"),
           ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoSentence", "trainVid",
            "testVid", "videoLabels (sentiment)"),
           "DialogueRNN dataloader.MELDDataset (MELD_features_raw.pkl)"),
    Layout("cosmic-iemocap", "iemocap", ("speakers", "labels") + _RB + ("sentences", "train", "test", "dev"),
           ("speakers", "labels") + _RB + ("sentences", "trainIds", "testIds", "validIds"),
           "COSMIC erc-training/dataloader.IEMOCAPRobertaCometDataset (iemocap_features_roberta.pkl)"),
    Layout("cosmic-meld", "meld", ("speakers", "labels", "sentiment") + _RB + ("sentences", "train", "test", "dev"),
           ("speakers", "emotion_labels", "sentiment_labels") + _RB + ("sentences", "trainIds", "testIds", "validIds"),
           "COSMIC erc-training/dataloader.MELDRobertaCometDataset (meld_features_roberta.pkl)"),
)}


@dataclass
class Dialogue:
    """One dialogue as read: n utterances; speakers are 'M'/'F' strings (iemocap) or one-hot indices (meld)."""

    key: Hashable
    labels: list[int]
    speakers: list[Any]
    sentences: list[str]
    utt_ids: list[Any] | None = None
    sentiment: list[int] | None = None
    feats: dict[str, np.ndarray] = field(default_factory=dict)  # feature role -> [n, D] float32

    @property
    def n(self) -> int:
        return len(self.labels)


@dataclass
class Conversations:
    """A whole file: dialogues in file order, split lists (dev None when the file has none)."""

    layout: Layout
    dialogues: list[Dialogue]
    splits: dict[str, list[Hashable] | None]
    feature_roles: tuple[str, ...]
    notes: list[str] = field(default_factory=list)


def text(s: Any) -> str:
    """A sentence or key as str. Python 2 `str` arrive latin1-decoded; undo that when they were UTF-8."""
    if isinstance(s, (bytes, bytearray)):
        s = bytes(s).decode("latin1")
    s = str(s)
    if any(ord(c) >= 0x80 for c in s) and all(ord(c) < 0x100 for c in s):
        try:
            return s.encode("latin1").decode("utf-8")
        except UnicodeDecodeError:
            return s  # genuine latin-1 text
    return s


def norm_key(k: Any) -> Hashable:
    if isinstance(k, (bytes, bytearray, str)):
        return text(k)
    if isinstance(k, np.integer):
        return int(k)
    return k


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (str, bytes, int, np.integer, np.str_))


def _is_int(x: Any) -> bool:
    return (isinstance(x, (int, np.integer)) and not isinstance(x, bool)) or (
        isinstance(x, (float, np.floating)) and float(x).is_integer())


def _row_kind(row: Any) -> str:
    vals = np.asarray(row).reshape(-1)
    if vals.dtype.kind in "biuf" and 0 < vals.size <= _MAX_ONE_HOT and set(np.unique(vals).tolist()) <= {0, 1} \
            and int(vals.sum()) == 1:
        return "onehot"
    return "vectors"


def kind(obj: Any) -> str:
    """A short description of an element: 'keys(120)', 'dict->strs', 'dict->vectors[100]', ..."""
    if isinstance(obj, (list, tuple, set, frozenset)) and all(_is_scalar(x) for x in obj):
        return f"keys({len(obj)})"
    if not isinstance(obj, dict):
        return type(obj).__name__
    if not obj:
        return "dict(empty)"
    v = next(iter(obj.values()))
    if isinstance(v, np.ndarray):
        if v.ndim == 2:
            return f"dict->vectors[{v.shape[1]}]"
        v = list(v)
    if not isinstance(v, (list, tuple)):
        return f"dict->{type(v).__name__}"
    if not v:
        return "dict->empty"
    e = v[0]
    if isinstance(e, (str, bytes, np.str_)):
        return "dict->strs"
    if _is_int(e) and not isinstance(e, (float, np.floating)):
        return "dict->ints"
    if isinstance(e, (list, tuple, np.ndarray)):
        k = _row_kind(e) if len(e) else "vectors"
        return f"dict->{k}" + (f"[{len(e)}]" if k == "vectors" else "")
    return f"dict->{type(e).__name__}"


def _fits(role: str, variant: str, k: str) -> bool:
    if role in FEATURE_SLOTS:
        return k.startswith("dict->vectors")
    want = _WANT[role] if role != "speakers" else ("strs" if variant == "iemocap" else "onehot")
    if want == "any":
        return role == "extra" or k.startswith("dict")
    if want == "keys":
        return k.startswith("keys(")
    return k == f"dict->{want}" or k in ("dict->empty", "dict(empty)")


def detect(obj: Any, source: str, forced: str | None = None) -> Layout:
    """The layout of a loaded pickle; ManifestError (one line, naming what was found) otherwise."""
    if forced is not None and forced not in LAYOUTS:
        raise ManifestError(f"--layout {forced!r} is not known; choose one of: {', '.join(LAYOUTS)} (or leave it "
                            "out to detect it)")
    expected = "; ".join(lay.signature() for lay in LAYOUTS.values())
    if not isinstance(obj, (tuple, list)):
        found = f"a {type(obj).__name__}" + (f" with keys {list(obj)[:6]}" if isinstance(obj, dict) else "")
        raise ManifestError(f"{source}: unknown feature-pickle layout: found {found}; expected a tuple of one of "
                            f"{expected}")
    kinds = [kind(x) for x in obj]
    found = f"a {type(obj).__name__} of {len(obj)}: " + ", ".join(f"{i}={k}" for i, k in enumerate(kinds))
    candidates = [LAYOUTS[forced]] if forced else list(LAYOUTS.values())
    for lay in candidates:
        bad = [] if len(lay.roles) == len(obj) else [f"it has {len(obj)} elements, not {len(lay.roles)}"]
        if not bad:
            bad = [f"element {i} ({lay.names[i]}) is {kinds[i]}" for i, role in enumerate(lay.roles)
                   if not _fits(role, lay.variant, kinds[i])]
        if not bad:
            return lay
        if forced:
            raise ManifestError(f"{source} is not a {forced} pickle: {'; '.join(bad[:3])}; found {found}")
    raise ManifestError(f"{source}: unknown feature-pickle layout: found {found}; expected one of {expected}")
