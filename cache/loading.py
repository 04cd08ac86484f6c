"""Follow a dataset's lock to one feature set and assemble its shards into a FeatureTable."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mer_pipe.common.errors import CacheError

from .shard import Shard, read_shard
from .store import DATASET_FILE, FeatureTable, features_command, first_duplicate, read_json

if TYPE_CHECKING:
    from .store import FeatureStore


def _manifest_digest(store: FeatureStore, dataset: str) -> str | None:
    try:
        info = read_json(store.dataset_dir(dataset) / DATASET_FILE, "dataset file")
    except FileNotFoundError:
        return None
    return info.get("manifest_digest") if isinstance(info, dict) else None


def _assemble(shards: list[Shard], dim: int, where: str) -> tuple[str, np.ndarray | list[np.ndarray]]:
    """Concatenate shard values. A shard whose rows all failed carries no shape information, so it is
    filled with zeros shaped like the others; shards mixing sequence lengths fall back to ragged."""
    informative = [s for s in shards if s.valid.any()]
    kinds = {"pooled" if s.layout == "pooled" else "seq" for s in informative}
    if len(kinds) > 1:
        raise CacheError(f"{where} mixes pooled and sequence shards; delete the feature set and rerun the extraction")
    for s in informative:
        if s.dim != dim:
            raise CacheError(f"shard {s.path} has dim {s.dim} but the lock says {dim}; the feature set is inconsistent — "
                             "run `mer-pipe cache verify`, delete it and re-extract")
    if kinds == {"pooled"} or not informative and all(s.layout == "pooled" for s in shards):
        parts = [s.values if s.valid.any() else np.zeros((len(s), dim), np.float32) for s in shards]
        return "pooled", np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, dim), np.float32)
    lengths = {s.values.shape[1] for s in informative if s.layout == "sequence"}
    if informative and all(s.layout == "sequence" for s in informative) and len(lengths) == 1:
        t = lengths.pop()
        parts = [s.values if s.valid.any() else np.zeros((len(s), t, dim), np.float32) for s in shards]
        return "sequence", np.concatenate(parts).astype(np.float32, copy=False)
    out: list[np.ndarray] = []
    for s in shards:
        for i in range(len(s)):
            if not s.valid[i]:
                out.append(np.zeros((0, dim), np.float32))
            elif s.layout == "ragged":
                out.append(np.asarray(s.values[i], dtype=np.float32))
            else:
                out.append(np.asarray(s.values[i], dtype=np.float32).reshape(-1, dim))
    return "ragged", out


def load_table(store: FeatureStore, dataset: str, slot: str) -> FeatureTable:
    """See FeatureStore.load. Every failure names what is missing and the command that rebuilds it."""
    lock = store.read_lock(dataset)
    if slot not in lock:
        locked = ", ".join(sorted(lock)) or "none"
        raise CacheError(
            f"no features are locked for slot {slot!r} of dataset {dataset!r} (locked slots: {locked}); "
            f"run `{features_command(dataset, slot)}`"
        )
    entry = lock[slot]
    extractor, key, dim = str(entry["extractor"]), str(entry["key"]), int(entry["dim"])
    cmd = features_command(dataset, slot)
    where = f"feature set {dataset}/{extractor}/{key} (slot {slot!r})"
    fdir = store.feature_dir(dataset, extractor, key)
    if not fdir.is_dir():
        raise CacheError(f"{where} is locked but {fdir} does not exist (deleted?); run `{cmd}`")
    try:
        spec = store.read_spec(dataset, extractor, key)
    except CacheError as exc:
        raise CacheError(f"{exc}; for this slot run `{cmd}`") from None
    n = spec.get("n_shards")
    if not isinstance(n, int) or n < 1:
        raise CacheError(f"{where}: spec.json has no valid n_shards ({n!r}); delete {fdir} and run `{cmd}`")
    missing = sorted(set(range(n)) - store.existing_shards(dataset, extractor, key, n))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise CacheError(f"{where} is incomplete: {len(missing)} of {n} shards missing (index {shown}); "
                         f"run `{cmd}` to extract only the missing shards")
    current = _manifest_digest(store, dataset)
    if current and spec.get("manifest_digest") and spec["manifest_digest"] != current:
        raise CacheError(f"{where} was extracted from another manifest (digest {spec['manifest_digest']} vs current "
                         f"{current}); the dataset was re-prepared — run `{cmd}`")
    shards = [read_shard(store.shard_path(dataset, extractor, key, i, n)) for i in range(n)]
    for s in shards:
        if s.key is not None and s.key != key:
            raise CacheError(f"shard {s.path} belongs to key {s.key!r}, not {key!r}; delete it and run `{cmd}`")
    ids = [uid for s in shards for uid in s.ids]
    dup = first_duplicate(ids)
    if dup is not None:
        raise CacheError(f"{where}: utterance {dup!r} appears in two shards; delete {fdir} and run `{cmd}`")
    layout, values = _assemble(shards, dim, where)
    valid = np.concatenate([s.valid for s in shards]) if shards else np.zeros(0, np.bool_)
    reasons = {uid: r for s in shards for uid, r in s.reasons.items()}
    return FeatureTable(dataset=dataset, slot=slot, extractor=extractor, key=key, dim=dim, layout=layout,
                        ids=ids, values=values, valid=valid, reasons=reasons, spec=spec)
