"""`mer-pipe cache export`: a prepared dataset's locked features in the tuple layouts the ERC repos load.

  --format mmgcn, IEMOCAP variant: the 9-tuple of IEMOCAP_features.pkl, read unchanged by MMGCN's,
      DialogueRNN's and DialogueGCN's `dataloader.IEMOCAPDataset` (speakers 'M'/'F').
  --format mmgcn, MELD variant: the 10-tuple of MELD_features_raw1.pkl, read unchanged by MMGCN's
      `dataloader.MELDDataset` (one-hot speakers; the 10th element holds the sentiment ids, which that
      loader ignores).
  --format cosmic: COSMIC's `iemocap_features_roberta.pkl` 10-tuple / `meld_features_roberta.pkl` 11-tuple,
      read by `IEMOCAPRobertaCometDataset` / `MELDRobertaCometDataset` (roberta1..4 = slots t, t_r2..t_r4).
The variant follows the dataset's labels (IEMOCAP-6 or MELD-7) unless --variant says otherwise.

MMGCN files have no dev list: dev dialogues go at the end of trainVid, as in the published files. MELD
dialogues named as the meld recipe names them (within the official ranges) get the published numbering (train d, dev 1039 + d, test
1153 + d), so `prepare pickle` finds the dev split again; IEMOCAP dev comes back from the packaged list.
A locked slot that is missing is written as zero-width rows ([] per utterance) and reported; COSMIC layers
t_r2..t_r4 that are not locked repeat t. Arrays are float32 [n, D] per dialogue, pickled so that NumPy 1.x
loads them (pickles.dump_pickle).
"""
from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mer_pipe.common.commands import features_command
from mer_pipe.common.errors import CacheError, ConfigError, FeaturesMissing, ManifestError

from .splits import FIXED_SENTIMENT, SENTIMENT_IDS, meld_global_id

FORMATS = {"mmgcn": {"iemocap": ("t", "a", "v"), "meld": ("t", "a", "v")},
           "cosmic": {"iemocap": ("t", "t_r2", "t_r3", "t_r4"), "meld": ("t", "t_r2", "t_r3", "t_r4")}}
LOADERS = {("mmgcn", "iemocap"): "MMGCN / DialogueRNN / DialogueGCN dataloader.IEMOCAPDataset",
           ("mmgcn", "meld"): "MMGCN dataloader.MELDDataset",
           ("cosmic", "iemocap"): "COSMIC erc-training/dataloader.IEMOCAPRobertaCometDataset",
           ("cosmic", "meld"): "COSMIC erc-training/dataloader.MELDRobertaCometDataset"}
_MELD_ID = re.compile(r"^(train|dev|test)/dia(\d+)$")
ONE_HOT_WIDTH = 9  # MELD's most speakers in one dialogue


@dataclass
class ExportResult:
    path: Path
    fmt: str
    variant: str
    loader: str
    dialogues: dict[str, int]
    slots: dict[str, int]  # slot -> dim written
    warnings: list[str] = field(default_factory=list)


def _variant(info: dict[str, Any], variant: str | None) -> str:
    from .importer import label_names

    if variant is not None:
        if variant not in ("iemocap", "meld"):
            raise ConfigError(f"--variant {variant!r}: choose iemocap or meld")
        return variant
    labels = tuple(info.get("label_names") or ())
    for v in ("iemocap", "meld"):
        if labels == label_names(v):
            return v
    raise ConfigError(f"dataset {info.get('name')!r} has labels {list(labels)}, neither IEMOCAP-6 nor MELD-7; "
                      "pass --variant iemocap or --variant meld")


def _features(store, dataset: str, slot: str, ids: list[str], digest: str) -> np.ndarray | None:
    """[N, D] float32 in manifest order (sequences mean-pooled, failed rows zero), or None when not locked."""
    from mer_pipe.cache.loading import load_table

    if slot not in store.read_lock(dataset):
        return None
    try:
        table = load_table(store, dataset, slot, digest)
    except FeaturesMissing as exc:
        raise CacheError(f"{exc.detail}; rebuild it with `{features_command(dataset, slot)}`") from None
    if isinstance(table.values, np.ndarray):
        vals = table.values if table.values.ndim == 2 else table.values.mean(axis=1)
    else:
        vals = np.stack([v.mean(axis=0) if len(v) else np.zeros(table.dim, np.float32) for v in table.values])
    pos = table.index()
    missing = [u for u in ids if u not in pos]
    if missing:
        raise CacheError(f"slot {slot!r} of {dataset!r} has no row for {missing[0]!r}; rebuild it with "
                         f"`{features_command(dataset, slot)}`")
    return np.ascontiguousarray(vals[[pos[u] for u in ids]], dtype=np.float32)


def _dialogue_keys(utts, variant: str) -> dict[str, Hashable]:
    dids = list(dict.fromkeys(u.dialogue_id for u in utts))
    if variant == "meld":
        matches = [_MELD_ID.match(d) for d in dids]
        ints = [meld_global_id(m.group(1), int(m.group(2))) if m else None for m in matches]
        if all(i is not None for i in ints):
            return dict(zip(dids, ints))
    return {d: d for d in dids}


def _speakers(us, variant: str, warnings: list[str]) -> list[Any]:
    if variant == "iemocap":
        out = [u.speaker[-1] if u.speaker[-1:] in ("M", "F") else ("M" if u.speaker_idx == 0 else "F") for u in us]
        if max(u.speaker_idx for u in us) > 1:
            warnings.append(f"dialogue {us[0].dialogue_id!r} has more than two speakers; 'M'/'F' keeps only two")
        return out
    width = max(ONE_HOT_WIDTH, max(u.speaker_idx for u in us) + 1)
    return [[1 if i == u.speaker_idx else 0 for i in range(width)] for u in us]


def _sentiment_id(u, derive: bool) -> int:
    """The DialogueRNN MELD sentiment id; with `derive`, an unknown sentiment follows the emotion where that fixes
    it (COSMIC's MELD layout needs one per utterance). -1 = unknown."""
    name = u.sentiment or (FIXED_SENTIMENT.get(u.label or "") if derive else None)
    return SENTIMENT_IDS.get(name or "", -1)


def build_tuple(fmt: str, variant: str, utts, feats: dict[str, np.ndarray | None], warnings: list[str]) -> tuple:
    """The layout's tuple: per-dialogue dicts in manifest order, then the split lists."""
    keys = _dialogue_keys(utts, variant)
    by_dia: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_dia.setdefault(u.dialogue_id, []).append(i)
    spk, lab, sent, sents, ids, f = {}, {}, {}, {}, {}, {s: {} for s in feats}
    split_keys: dict[str, list[Hashable]] = {"train": [], "dev": [], "test": []}
    for did, rows in by_dia.items():
        us = sorted((utts[i] for i in rows), key=lambda u: u.index)
        order = sorted(rows, key=lambda i: utts[i].index)
        k = keys[did]
        unlabelled = next((u.id for u in us if u.label_id is None), None)
        if unlabelled:
            raise ManifestError(f"utterance {unlabelled!r} has no label; the {fmt} layout needs one per utterance")
        spk[k], lab[k] = _speakers(us, variant, warnings), [int(u.label_id) for u in us]
        sent[k] = [_sentiment_id(u, fmt == "cosmic") for u in us]
        sents[k], ids[k] = [u.text for u in us], [u.id for u in us]
        for slot, arr in feats.items():
            f[slot][k] = arr[order] if arr is not None else [[] for _ in us]
        split_keys[us[0].split].append(k)
    train, dev, test = split_keys["train"], split_keys["dev"], split_keys["test"]
    known = all(x >= 0 for xs in sent.values() for x in xs)
    if fmt == "cosmic":
        if variant == "meld" and not known:
            warnings.append("some utterances have no sentiment: their sentiment_labels entry is -1")
        t1, t2, t3, t4 = (f[s] for s in FORMATS["cosmic"][variant])
        head = (spk, lab, sent) if variant == "meld" else (spk, lab)
        return (*head, t1, t2, t3, t4, sents, train, test, dev)
    t, a, v = (f[s] for s in ("t", "a", "v"))
    if variant == "iemocap":
        return ids, spk, lab, t, a, v, sents, train + dev, test
    return ids, spk, lab, t, a, v, sents, train + dev, test, sent if known else None


def check_out(out: str | Path, root: Path, overwrite: bool = False) -> Path:
    """The export target, refused before any work when it is a folder, lies inside the cache (a lock or
    shard must never be overwritten by an export), or exists and `overwrite` is off."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give the pickle file to write, e.g. --out {path / 'features.pkl'}")
    real, croot = path.resolve(), root.expanduser().resolve()
    if real == croot or real.is_relative_to(croot):
        raise ConfigError(f"--out {path} lies inside the cache {croot}; the cache holds only what the store writes, "
                          "so write the export elsewhere")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ConfigError(f"--out {path} already exists; pass --overwrite to replace it, or choose another file")
    return path


def export_dataset(dataset: str, fmt: str, out: str | Path, cache_dir: str | Path | None = None,
                   variant: str | None = None, overwrite: bool = False) -> ExportResult:
    """Write `dataset`'s locked features as a `fmt` pickle at `out` (atomically; see `check_out`)."""
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.pipeline.corpus.manifest import cache_root, load_dataset

    from .pickles import dump_pickle

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = check_out(out, cache_root(cache_dir), overwrite)
    info, utts = load_dataset(dataset, cache_dir)
    variant = _variant(info, variant)
    store = FeatureStore(cache_root(cache_dir))
    ids = [u.id for u in utts]
    slots = FORMATS[fmt][variant]
    feats = {s: _features(store, dataset, s, ids, info["manifest_digest"]) for s in slots}
    warnings: list[str] = []
    if all(v is None for v in feats.values()) or (fmt == "cosmic" and feats["t"] is None):
        have = ", ".join(sorted(store.read_lock(dataset))) or "none"
        raise CacheError(f"dataset {dataset!r} has no features for the {fmt} layout (needs slot "
                         f"{'t' if fmt == 'cosmic' else 't, a or v'}; locked: {have}); run "
                         f"`{features_command(dataset, 't')}` first")
    for s, arr in feats.items():
        if arr is None:
            fill = "repeats t" if fmt == "cosmic" else "holds zero-width rows"
            warnings.append(f"slot {s} is not locked: its element {fill}")
            if fmt == "cosmic":
                feats[s] = feats["t"]
    obj = build_tuple(fmt, variant, utts, feats, warnings)
    path = dump_pickle(obj, out)
    counts = {s: len({u.dialogue_id for u in utts if u.split == s}) for s in ("train", "dev", "test")}
    return ExportResult(path=path, fmt=fmt, variant=variant, loader=LOADERS[(fmt, variant)], dialogues=counts,
                        slots={s: int(a.shape[1]) for s, a in feats.items() if a is not None}, warnings=warnings)
