"""Write imported feature arrays into the store exactly as a feature run leaves them.

`<root>/<dataset>/pickle/<key>/spec.json` + `shard-0000i-of-0000n.h5` (contiguous manifest slices, pooled
[N, D] float32) and a lock entry per slot. key = feature_key("pickle", IMPORT_VERSION, {layout, element,
file_sha256}, manifest digest): importing the same file twice writes nothing new.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
from mer_pipe.cache import featureset
from mer_pipe.cache.keys import feature_key
from mer_pipe.cache.shard import basic_provenance
from mer_pipe.cache.store import FeatureStore

from .layouts import FEATURE_SLOTS, Conversations

EXTRACTOR = "pickle"
IMPORT_VERSION = "1"
SHARD_SIZE = featureset.DEFAULT_SHARD_SIZE
MODALITY = {"t": "text", "a": "audio", "v": "video"}


def write_set(store: FeatureStore, dataset: str, config: dict[str, Any], modality: str, ids: list[str],
              values: np.ndarray, digest: str) -> dict[str, Any]:
    """One complete feature set (skipped when already complete); returns its lock entry."""
    key = feature_key(EXTRACTOR, IMPORT_VERSION, config, digest)
    n, dim = values.shape
    prov = {**basic_provenance(), "source": "mer-pipe prepare pickle"}
    spec = featureset.set_spec(dataset, EXTRACTOR, key, version=IMPORT_VERSION, modality=modality, config=config,
                               manifest_digest=digest, n_utterances=n, shard_size=SHARD_SIZE, dim=dim,
                               layout="pooled", failures={}, n_failed=0, complete=True, provenance=prov)
    if featureset.is_complete(store, dataset, EXTRACTOR, key, spec["n_shards"]):
        return featureset.lock_entry(spec)
    return featureset.write_set(store, spec, ids, values, {}, dim=dim, layout="pooled", provenance=prov)


def write_imported_sets(store: FeatureStore, dataset: str, conv: Conversations, kept: list[Hashable],
                        ids: list[str], sha: str, digest: str, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Every feature element of `conv` (dialogues `kept`, manifest order) as a locked slot; returns slot -> entry.

    Zero-width elements (a modality an export did not carry) and COSMIC layers identical to roberta1 are
    skipped with a note; slots an earlier import of this dataset locked and this one does not are unlocked.
    """
    lay = conv.layout
    by_key = {d.key: d for d in conv.dialogues}
    slots: dict[str, dict[str, Any]] = {}
    first: np.ndarray | None = None
    for role in conv.feature_roles:
        element = lay.names[lay.roles.index(role)]
        values = np.concatenate([by_key[k].feats[role] for k in kept]).astype(np.float32, copy=False)
        if values.shape[1] == 0:
            notes.append(f"{element} holds no features (zero-width rows); slot {FEATURE_SLOTS[role]} not written")
            continue
        if role == "roberta1":
            first = values
        elif first is not None and role.startswith("roberta") and np.array_equal(values, first):
            notes.append(f"{element} equals roberta1; slot {FEATURE_SLOTS[role]} not written")
            continue
        slot = FEATURE_SLOTS[role]
        config = {"layout": lay.name, "element": element, "file_sha256": sha}
        entry = write_set(store, dataset, config, MODALITY[slot[0]], ids, values, digest)
        store.set_lock(dataset, slot, entry)
        slots[slot] = {**entry, "element": element}
    for slot, entry in store.read_lock(dataset).items():
        if entry.get("extractor") == EXTRACTOR and slot not in slots:
            store.unset_lock(dataset, slot)
    return slots
