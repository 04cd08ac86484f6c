"""The one writer of a feature set's bookkeeping: the spec schema, the shard bounds and attributes, and
"complete and lock". Extraction (pipeline/extract), cross-fitting and the importers (pipeline/interop) all
write their sets through these functions, so every set looks the same to loading, recovery and `cache verify`.

A set `<root>/<dataset>/<extractor>/<key>/` holds `spec.json` and contiguous manifest slices
`shard-0000i-of-0000n.h5` (`shard_bounds`). spec.json (`set_spec`) fixes the sharding before any shard exists;
each shard's attributes (`shard_attrs`) repeat key, sharding and `start`, so a lost spec can be rebuilt from the
shards (cache/recovery.py). A set is complete when its spec says so (`complete_spec`: dim, layout and failures
counted over every shard); a slot then points at it in lock.json (`lock_entry`, `lock_slots`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mer_pipe.common.errors import CacheError

from .shard import read_shard, write_shard
from .store import SPEC_FILE, FeatureStore

DEFAULT_SHARD_SIZE = 256


def shard_bounds(n_items: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, end) of each contiguous shard; the last one may be shorter (one empty shard for no items)."""
    n_shards = max(1, math.ceil(n_items / shard_size))
    return [(i * shard_size, min((i + 1) * shard_size, n_items)) for i in range(n_shards)]


def set_spec(dataset: str, extractor: str, key: str, *, version: str, modality: str, config: Mapping[str, Any],
             manifest_digest: str, n_utterances: int, shard_size: int, stage: str | None = None,
             upstream: str | None = None, inputs: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A set's spec.json content: what was extracted (stage, extractor, version, modality, config), from which
    manifest, and its sharding; `upstream`/`inputs` for an extraction built on a fine-tune; `extra` (dim, layout,
    failures, complete, provenance, ...) is appended as given."""
    spec = {"stage": stage or extractor, "extractor": extractor, "version": version, "modality": modality,
            "config": config, "manifest_digest": manifest_digest, "n_utterances": n_utterances,
            "shard_size": shard_size, "n_shards": len(shard_bounds(n_utterances, shard_size)), "dataset": dataset,
            "key": key}
    if upstream:
        spec.update(upstream=upstream, inputs=dict(inputs or {}))
    spec.update(extra)
    return spec


# what a set knows only once complete (or records about itself): never carried over to a set derived from it
_OWN_FIELDS = ("key", "created", "provenance", "dim", "layout", "failures", "n_failed", "complete")


def derive_spec(spec: Mapping[str, Any], key: str, **extra: Any) -> dict[str, Any]:
    """The spec of a set built from the set `spec` describes (same stage, config, manifest and sharding) under
    `key`, with `extra` fields (a cross-fitted set: its fine-tune keys)."""
    return {**{k: v for k, v in spec.items() if k not in _OWN_FIELDS}, "key": key, **extra}


def begin_set(store: FeatureStore, spec: Mapping[str, Any]) -> None:
    """Write the spec.json of a set about to be filled: it fixes the sharding before any shard exists. A feature
    run calls this only while it holds the set's run lock."""
    store.write_spec(spec["dataset"], spec["extractor"], spec["key"], spec)


def shard_attrs(spec: Mapping[str, Any], index: int, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The attributes of shard `index` of the set `spec` describes (what recovery reads back: key, shard_index,
    n_shards, start), plus `provenance` when given."""
    start = shard_bounds(int(spec["n_utterances"]), int(spec["shard_size"]))[index][0]
    attrs = {"key": spec["key"], "dataset": spec["dataset"], "extractor": spec["extractor"],
             "stage": spec.get("stage", spec["extractor"]), "version": spec["version"], "shard_index": index,
             "n_shards": spec["n_shards"], "start": start, "config": spec["config"]}
    if spec.get("upstream"):
        attrs["upstream"] = spec["upstream"]
    if provenance is not None:
        attrs["provenance"] = dict(provenance)
    return attrs


def read_spec_or_none(store: FeatureStore, dataset: str, extractor: str, key: str) -> dict[str, Any] | None:
    """spec.json read once: None when absent, unreadable, or without an integer sharding (then rebuilt from
    the shards, cache/recovery.py)."""
    try:
        spec = store.read_spec(dataset, extractor, key)
    except CacheError:
        return None
    usable = isinstance(spec, dict) and isinstance(spec.get("n_shards"), int) and isinstance(spec.get("shard_size"), int)
    return spec if usable else None


def is_complete(store: FeatureStore, dataset: str, extractor: str, key: str, n_shards: int | None = None) -> bool:
    """The set's spec says complete (and, given `n_shards`, all its shards are present)."""
    if not (store.feature_dir(dataset, extractor, key) / SPEC_FILE).is_file():
        return False
    if not store.read_spec(dataset, extractor, key).get("complete"):
        return False
    return n_shards is None or len(store.existing_shards(dataset, extractor, key, n_shards)) == n_shards


def count_shards(store: FeatureStore, spec: Mapping[str, Any],
                 categorize: Callable[[str], str] = str) -> dict[str, Any]:
    """dim, layout, failures (reason category -> count) and n_failed over every shard of the set (values are
    not read). A set whose shards differ in layout is "ragged"; one without a valid row "pooled"."""
    ds, ex, key, n = spec["dataset"], spec["extractor"], spec["key"], int(spec["n_shards"])
    failures: dict[str, int] = {}
    dims, layouts = set(), set()
    for i in range(n):
        sh = read_shard(store.shard_path(ds, ex, key, i, n), values=False)
        dims.add(sh.dim)
        if sh.valid.any():
            layouts.add(sh.layout)
        for reason in sh.reasons.values():
            cat = categorize(reason)
            failures[cat] = failures.get(cat, 0) + 1
    layout = "ragged" if len(layouts) > 1 else (layouts.pop() if layouts else "pooled")
    return {"dim": max(dims), "layout": layout, "failures": failures, "n_failed": sum(failures.values())}


def complete_spec(store: FeatureStore, spec: Mapping[str, Any], *, categorize: Callable[[str], str] = str,
                  provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """All shards exist: write spec.json once more with dim, layout, failures (counted over every shard) and
    `complete`; returns it."""
    done = {**spec, **count_shards(store, spec, categorize), "complete": True}
    if provenance:
        done["provenance"] = dict(provenance)
    store.write_spec(spec["dataset"], spec["extractor"], spec["key"], done)
    return done


def lock_entry(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What lock.json records for a slot served by the (complete) set `spec` describes."""
    return {"extractor": spec["extractor"], "key": spec["key"], "dim": int(spec["dim"]), "layout": spec.get("layout")}


def lock_slots(store: FeatureStore, spec: Mapping[str, Any], slots: Iterable[str]) -> dict[str, Any]:
    """Point every slot at the complete set `spec` describes; returns the lock entry."""
    entry = lock_entry(spec)
    for slot in slots:
        store.set_lock(spec["dataset"], slot, entry)
    return entry


def write_set(store: FeatureStore, spec: Mapping[str, Any], ids: Sequence[str], arrays: Sequence[Any],
              reasons: Mapping[str, str], *, dim: int, layout: str | None = None,
              provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A whole set from rows in memory (manifest order, float32): every shard, then spec.json as given by
    the caller (dim, layout, failures and `complete` included). Returns the lock entry."""
    n = int(spec["n_shards"])
    ds, ex, key = spec["dataset"], spec["extractor"], spec["key"]
    for i, (lo, hi) in enumerate(shard_bounds(len(ids), int(spec["shard_size"]))):
        part = ids[lo:hi]
        write_shard(store.shard_path(ds, ex, key, i, n), part, list(arrays[lo:hi]),
                    {u: reasons[u] for u in part if u in reasons}, dtype="float32",
                    attrs=shard_attrs(spec, i, provenance), layout=layout, dim=dim)
    store.write_spec(ds, ex, key, spec)
    return lock_entry(spec)


__all__ = ["DEFAULT_SHARD_SIZE", "begin_set", "complete_spec", "count_shards", "derive_spec", "is_complete",
           "lock_entry", "lock_slots", "read_spec_or_none", "set_spec", "shard_attrs", "shard_bounds", "write_set"]
