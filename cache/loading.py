"""Follow a dataset's lock to one feature set and assemble its shards into a FeatureTable."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mer_pipe.common.errors import CacheError, CorruptShard, FeaturesMissing

from .integrity import forget
from .shard import Shard, first_duplicate, read_shard
from .store import LOCK_FIELDS, FeatureStore, FeatureTable


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
                             "verify the cache, delete the set and re-extract it")
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


def load_table(store: FeatureStore, dataset: str, slot: str, manifest_digest: str | None = None,
               lock: Mapping[str, Any] | None = None) -> FeatureTable:
    """The locked features of `slot`: every shard, in manifest order, values as float32.

    manifest_digest: the dataset's current digest; a feature set extracted from another manifest is
    refused. Anything that makes the slot unusable raises FeaturesMissing (the caller names the command
    that rebuilds it); a shard that cannot be read or fails its checksum raises CorruptShard. `lock`: the
    dataset's lock.json when the caller has read it already.
    """
    lock = store.read_lock(dataset) if lock is None else lock
    if slot not in lock:
        locked = ", ".join(sorted(lock)) or "none"
        raise FeaturesMissing(dataset, slot, f"no features are locked for slot {slot!r} of dataset {dataset!r} "
                                             f"(locked slots: {locked})")
    entry = lock[slot]
    missing_fields = [f for f in LOCK_FIELDS if f not in entry]
    if missing_fields:
        raise FeaturesMissing(dataset, slot, f"lock entry {slot!r} of {store.lock_path(dataset)} lacks {missing_fields}")
    extractor, key, dim = str(entry["extractor"]), str(entry["key"]), int(entry["dim"])
    where = f"feature set {dataset}/{extractor}/{key} (slot {slot!r})"

    def gone(detail: str) -> FeaturesMissing:
        return FeaturesMissing(dataset, slot, f"{where} {detail}")

    fdir = store.feature_dir(dataset, extractor, key)
    if not fdir.is_dir():
        raise gone(f"is locked but {fdir} does not exist (deleted?)")
    try:
        spec = store.read_spec(dataset, extractor, key)
    except CacheError as exc:
        raise gone(f"cannot be used: {exc}") from None
    n = spec.get("n_shards")
    if not isinstance(n, int) or n < 1:
        raise gone(f"has no valid n_shards in spec.json ({n!r})")
    missing = sorted(set(range(n)) - store.existing_shards(dataset, extractor, key, n))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise gone(f"is incomplete: {len(missing)} of {n} shards missing (index {shown})")
    if manifest_digest and spec.get("manifest_digest") and spec["manifest_digest"] != manifest_digest:
        raise gone(f"was extracted from another manifest (digest {spec['manifest_digest'][:12]} vs current "
                   f"{manifest_digest[:12]}): the dataset was re-prepared")
    shards = []
    for i in range(n):
        path = store.shard_path(dataset, extractor, key, i, n)
        try:
            shards.append(read_shard(path, verify=True))
        except CorruptShard:
            forget(path)  # so the next feature run checks it again and recomputes it
            raise

    for s in shards:
        if s.key is not None and s.key != key:
            raise gone(f"holds shard {s.path} of key {s.key!r}")
    ids = [uid for s in shards for uid in s.ids]
    dup = first_duplicate(ids)
    if dup is not None:
        raise gone(f"has utterance {dup!r} in two shards")
    layout, values = _assemble(shards, dim, where)
    valid = np.concatenate([s.valid for s in shards]) if shards else np.zeros(0, np.bool_)
    reasons = {uid: r for s in shards for uid, r in s.reasons.items()}
    return FeatureTable(dataset=dataset, slot=slot, extractor=extractor, key=key, dim=dim, layout=layout,
                        ids=ids, values=values, valid=valid, reasons=reasons, spec=spec)
