"""Cached features -> dialogue batches. The only place the trainer touches the feature store.

`load_corpus` reads a prepared dataset's manifest and the feature sets its lock names (once), aligns
them to manifest order and keeps them as tensors with one extra all-zero row used for padding.
`iter_batches` then builds `DialogueBatch`es by gathering rows, so a batch costs one index per modality.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mer_pipe.common.commands import command
from mer_pipe.common.errors import CacheError, ConfigError, FeaturesMissing
from mer_pipe.common.modalities import MODALITIES, MODALITY_NAMES
from mer_pipe.pipeline.corpus.hints import features_command, prepare_command
from mer_pipe.pipeline.corpus.recipes.base import POLARITY_IDS


@dataclass
class Corpus:
    """One prepared dataset with its cached features, aligned to manifest order (U utterances).

    feats: modality -> [U+1, D] float32 (last row zeros, for padding); frames: modality -> [U+1, F, D];
    present: modality -> [U+1] bool; label/polarity/speaker: [U+1] long (padding row -1/-1/0).
    """

    name: str
    class_names: tuple[str, ...]
    ids: list[str]
    splits: np.ndarray  # [U] str
    dialogues: list[np.ndarray]  # utterance indices per dialogue, in dialogue order
    label: Any
    polarity: Any
    speaker: Any
    feats: dict[str, Any]
    frames: dict[str, Any] = field(default_factory=dict)
    present: dict[str, Any] = field(default_factory=dict)
    features: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> slot/extractor/key/dim
    task: Any = None  # models.batch.TaskInfo
    manifest_digest: str = ""

    @property
    def n(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.ids)}


def parse_slots(modalities: Sequence[str], slot_overrides: dict[str, str] | None = None) -> dict[str, str]:
    """modality -> lock slot. Default slot name = the modality letter; `--slot a=a_w2v` picks another."""
    slots = {m: m for m in modalities}
    for m, s in (slot_overrides or {}).items():
        if m not in MODALITIES:
            raise ConfigError(f"--slot {m}={s}: {m!r} is not a modality; use one of {', '.join(MODALITIES)} (e.g. --slot a=a_w2v)")
        if m in slots:
            slots[m] = s
    return slots


def _polarities(utts, class_names: Sequence[str], label_polarity: dict[str, tuple[int, ...]]
                ) -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    """Per-utterance polarity ([U] int, -1 unknown) and per-class polarity sets for TaskInfo; `label_polarity`
    is the recipe's (label name -> polarity ids, corpus.recipes.label_polarity)."""
    pol = np.full(len(utts), -1, dtype=np.int64)
    seen: list[set[int]] = [set() for _ in class_names]
    for i, u in enumerate(utts):
        if u.sentiment is not None:  # MELD ships it: use it directly (models.md §2.4)
            pol[i] = POLARITY_IDS[u.sentiment]
        elif u.label is not None and len(label_polarity.get(u.label, ())) == 1:
            pol[i] = label_polarity[u.label][0]
        if pol[i] >= 0 and u.label_id is not None and u.label_id < len(seen):
            seen[u.label_id].add(int(pol[i]))
    class_pols = []
    for c, name in enumerate(class_names):
        # Known emotion names use the fixed map; other label sets fall back to what the data shows.
        pols = label_polarity.get(name) or tuple(sorted(seen[c])) or (0, 1, 2)
        class_pols.append(tuple(pols))
    return pol, tuple(class_pols)


def _table_array(table, where: str) -> tuple[np.ndarray, np.ndarray]:
    """FeatureTable values -> dense float32 [n, D] or [n, T, D] (zeros where invalid), valid [n] bool.

    Ragged sequences (length varies per utterance) are mean-pooled to [D]: the trainer's models take a
    pooled vector or a fixed number of frames.
    """
    valid = np.asarray(table.valid, dtype=bool).copy()
    vals = table.values
    if isinstance(vals, np.ndarray):
        arr = np.array(vals, dtype=np.float32)
    else:
        arr = np.zeros((len(vals), int(table.dim)), dtype=np.float32)
        for i, v in enumerate(vals):
            v = np.asarray(v, dtype=np.float32).reshape(-1, int(table.dim))
            if valid[i] and len(v):
                arr[i] = v.mean(axis=0)
            else:
                valid[i] = False
    if not valid.any():
        raise CacheError(f"{where}: every utterance failed extraction; nothing to train on (see `{command('cache', 'ls')}`)")
    arr[~valid] = 0.0
    return arr, valid


def _lock_entry(dataset: str, m: str, slot: str, lock: dict, slots: dict[str, str], expected_key: str | None,
                cache_dir: str | Path | None) -> dict:
    """The lock entry serving modality `m`, or CacheError with the command that makes it (or the usable subset)."""
    if slot not in lock:
        have = ", ".join(f"{s}={v.get('extractor')}" for s, v in sorted(lock.items())) or "none"
        usable = ",".join(k for k, v in slots.items() if v in lock)
        if slot != m:  # a --slot override: the slot name may be a typo, so no `features --only` that may be refused
            raise CacheError(
                f"--slot {m}={slot}: dataset {dataset!r} has no lock slot {slot!r} (lock has: {have}); choose one of "
                f"those, e.g. --slot {m}={next(iter(sorted(lock)), m)}, or extract it first with "
                f"`{features_command(dataset, None, cache_dir)} --set {slot}.extractor=NAME`")
        raise CacheError(
            f"dataset {dataset!r} has no {MODALITY_NAMES[m]} features in lock slot {slot!r} (lock has: {have}); "
            f"run `{features_command(dataset, slot, cache_dir)}` first"
            + (f", or train with --modalities {usable}" if usable else "")
        )
    entry = lock[slot]
    if expected_key is not None and entry.get("key") != expected_key:
        raise CacheError(
            f"modality {m!r}: the checkpoint was trained on feature key {expected_key} but lock slot "
            f"{slot!r} of dataset {dataset!r} now serves key {entry.get('key')} ({entry.get('extractor')}); "
            f"re-run `{features_command(dataset, slot, cache_dir)}` with the run's feature config so the lock "
            f"serves {expected_key} again, or retrain with `{command('train')}`"
        )
    return entry


def _modality_tensors(store, dataset: str, slot: str, entry: dict, ids: list[str], digest: str | None,
                      cache_dir: str | Path | None, lock: dict[str, Any]):
    """(pooled [n+1, D], frames [n+1, F, D] or None, present [n+1]) in manifest order; the extra last row is
    the padding row (zeros, absent) that batches index for empty positions."""
    import torch

    from mer_pipe.cache.loading import load_table

    try:
        table = load_table(store, dataset, slot, digest, lock=lock)
    except FeaturesMissing as exc:
        raise CacheError(f"{exc.detail}; run `{features_command(dataset, slot, cache_dir)}`") from None
    where = f"dataset {dataset!r} slot {slot!r} ({entry.get('extractor')} key {str(entry.get('key'))[:12]})"
    arr, valid = _table_array(table, where)
    tpos = table.index()
    missing = [u for u in ids if u not in tpos]
    if missing:
        raise CacheError(f"{where}: no rows for {len(missing)} utterances (e.g. {missing[0]!r}); "
                         f"run `{features_command(dataset, slot, cache_dir)}` to complete the feature set")
    order = np.array([tpos[u] for u in ids], dtype=np.int64)
    arr, valid = arr[order], valid[order]
    full = torch.from_numpy(np.concatenate([arr, np.zeros((1, *arr.shape[1:]), dtype=np.float32)]))
    present = torch.from_numpy(np.concatenate([valid, [False]]))
    if full.dim() == 3:  # sequence features ([F, D] per utterance, e.g. 15 Swin frames)
        pooled = full[:len(ids)].mean(dim=1)
        return torch.cat([pooled, torch.zeros(1, pooled.shape[1])]), full, present
    if full.dim() == 2:
        return full, None, present
    raise CacheError(f"{where}: unexpected per-utterance shape {tuple(arr.shape[1:])}; expected [D] or [T, D]")


def load_corpus(dataset: str, modalities: Sequence[str], cache_dir: str | Path | None = None,
                slot_overrides: dict[str, str] | None = None, expected_keys: dict[str, str] | None = None,
                lock: dict[str, dict[str, Any]] | None = None) -> Corpus:
    """Load a prepared dataset and the features its lock serves for each modality.

    expected_keys: modality -> feature key a checkpoint was trained on; a different key in the lock
    is refused (CacheError naming both keys and the fix). lock: the dataset's lock.json when the caller has
    read it already (runner.run_training reads it once per run).
    """
    import torch

    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.models.batch import TaskInfo

    from mer_pipe.pipeline.corpus.manifest import cache_root, load_dataset, manifest_digest

    info, utts = load_dataset(dataset, cache_dir)
    class_names = tuple(info.get("label_names") or [])
    if not class_names:
        raise CacheError(f"dataset {dataset!r}: dataset.json lists no label_names; rerun `{prepare_command(dataset, cache_dir=cache_dir)}`")
    store = FeatureStore(cache_root(cache_dir))
    lock = store.read_lock(dataset) if lock is None else lock  # read once; load_table is handed it
    slots = parse_slots(modalities, slot_overrides)
    ids = [u.id for u in utts]
    feats, frames, present, features = {}, {}, {}, {}
    for m, slot in slots.items():
        entry = _lock_entry(dataset, m, slot, lock, slots, (expected_keys or {}).get(m), cache_dir)
        feats[m], seq, present[m] = _modality_tensors(store, dataset, slot, entry, ids, info.get("manifest_digest"), cache_dir,
                                                        lock)
        if seq is not None:
            frames[m] = seq
        features[m] = {"slot": slot, "extractor": entry.get("extractor"), "key": entry.get("key"),
                       "dim": int(feats[m].shape[1])}

    label = np.array([-1 if u.label_id is None else u.label_id for u in utts] + [-1], dtype=np.int64)
    from mer_pipe.pipeline.corpus.recipes import label_polarity

    pol, class_pols = _polarities(utts, class_names, label_polarity(info.get("recipe")))
    speaker = np.array([u.speaker_idx for u in utts] + [0], dtype=np.int64)
    by_dia: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_dia.setdefault(u.dialogue_id, []).append(i)
    dialogues = [np.array(sorted(ix, key=lambda i: utts[i].index), dtype=np.int64) for ix in by_dia.values()]
    task = TaskInfo(
        n_classes=len(class_names), class_names=class_names,
        in_dims={m: int(t.shape[1]) for m, t in feats.items()},
        frame_shapes={m: (int(t.shape[1]), int(t.shape[2])) for m, t in frames.items()},
        max_speakers=max(2, int(speaker.max()) + 1), class_polarities=class_pols,
    )
    return Corpus(
        name=dataset, class_names=class_names, ids=ids, splits=np.array([u.split for u in utts]),
        dialogues=dialogues, label=torch.from_numpy(label), polarity=torch.from_numpy(np.append(pol, -1)),
        speaker=torch.from_numpy(speaker), feats=feats, frames=frames, present=present, features=features,
        task=task, manifest_digest=info.get("manifest_digest") or manifest_digest(utts),
    )


@dataclass(frozen=True)
class View:
    """Which utterances a phase sees: units (dialogues, or single utterances for utterance-level models)
    and keep [U] bool, the utterances whose labels count (others in a unit are context, label -1)."""

    units: tuple[np.ndarray, ...]
    keep: np.ndarray

    @property
    def n_labelled(self) -> int:
        return int(self.keep.sum())


def make_view(corpus: Corpus, keep: np.ndarray, unit: str) -> View:
    """Units covering every kept utterance: whole dialogues (context kept) or single utterances."""
    keep = np.asarray(keep, dtype=bool) & (corpus.label[:-1].numpy() >= 0)
    if unit == "utterance":
        units = tuple(np.array([i]) for i in np.flatnonzero(keep))
    elif unit == "dialogue":
        units = tuple(d for d in corpus.dialogues if keep[d].any())
    else:
        raise ConfigError(f"trainer unit {unit!r}: choose dialogue or utterance")
    return View(units=units, keep=keep)


def feature_stats(corpus: Corpus, keep: np.ndarray, eps: float = 1e-5) -> dict[str, Any]:
    """Per-dimension mean and std ([2, D] tensors) of the kept utterances whose media decoded.

    Keys "feats.m" and "frames.m". Computed on the training utterances only and stored with the
    weights: cached features come in wildly different scales (openSMILE functionals reach 1e4, MiniLM
    stays below 1), and unscaled they drown each other when concatenated. eps keeps near-constant
    dimensions from being blown up into noise.
    """
    import torch

    stats = {}
    k = torch.from_numpy(np.append(np.asarray(keep, dtype=bool), False))
    for kind, table in (("feats", corpus.feats), ("frames", corpus.frames)):
        for m, t in table.items():
            rows = t[k & corpus.present[m]].double()
            rows = rows.reshape(-1, rows.shape[-1])
            if len(rows) == 0:
                continue
            mean, var = rows.mean(0), rows.var(0, unbiased=False)
            stats[f"{kind}.{m}"] = torch.stack([mean, (var + eps).sqrt()]).float()
    return stats


def _normalise(x, stats, key: str, present):
    s = stats.get(key) if stats else None
    if s is None:
        return x
    y = (x - s[0]) / s[1]
    p = present.reshape(*present.shape, *([1] * (y.dim() - present.dim()))).to(y.dtype)
    return y * p  # failed / padded utterances stay exact zeros


def iter_batches(corpus: Corpus, view: View, batch_size: int, shuffle: bool = False,
                 generator=None, stats: dict[str, Any] | None = None) -> Iterator:
    """Yield (DialogueBatch [B, N], idx [B, N] utterance indices, padding = U), N = longest unit.

    Labels and polarities outside view.keep are -1: context utterances of a held-out fold never leak
    their targets into training. stats (feature_stats) standardises every feature dimension.
    """
    import torch

    from mer_pipe.models.batch import DialogueBatch

    order = np.arange(len(view.units))
    if shuffle:
        order = torch.randperm(len(view.units), generator=generator).numpy()
    pad = corpus.n  # index of the all-zero padding row
    keep = torch.from_numpy(np.append(view.keep, False))
    for s in range(0, len(order), batch_size):
        units = [view.units[j] for j in order[s:s + batch_size]]
        width = max(len(u) for u in units)
        idx = torch.full((len(units), width), pad, dtype=torch.long)
        for b, u in enumerate(units):
            idx[b, : len(u)] = torch.from_numpy(u)
        mask = idx != pad
        kept = keep[idx]
        label = torch.where(kept, corpus.label[idx], torch.full_like(idx, -1))
        polarity = torch.where(kept, corpus.polarity[idx], torch.full_like(idx, -1))
        present = {m: t[idx] for m, t in corpus.present.items()}
        yield DialogueBatch(
            feats={m: _normalise(t[idx], stats, f"feats.{m}", present[m]) for m, t in corpus.feats.items()},
            frames={m: _normalise(t[idx], stats, f"frames.{m}", present[m]) for m, t in corpus.frames.items()},
            present=present,
            mask=mask, speaker=corpus.speaker[idx], label=label, polarity=polarity,
        ), idx
