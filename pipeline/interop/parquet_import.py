"""`mer-pipe prepare parquet`: a `cache export --format parquet` file -> a prepared dataset with locked feature sets.

The manifest comes back exactly (its digest is checked against the file's metadata), so every slot is written
under the feature key it was exported with, with the exporter's spec (extractor config, weights identity,
provenance) plus `imported_from`; `train`, `evaluate` and `cache ls|verify|gc` work unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mer_pipe.common.errors import CacheError, ConfigError, ManifestError
from mer_pipe.common.files import write_json_atomic
from mer_pipe.pipeline.corpus.manifest import dataset_dir, manifest_digest, validate_utterances, write_manifest
from mer_pipe.pipeline.corpus.prepare import PrepareReport

from .importer import ImportResult, default_name


def _write_parquet_set(store: Any, name: str, slot: str, meta_slot: dict[str, Any], data: dict[str, Any],
                       ids: list[str], digest: str, source: dict[str, Any]) -> dict[str, Any]:
    """One feature set under the exported key (extractor/key/spec as the source store had them); skipped when
    already complete. Returns the lock entry."""
    from mer_pipe.cache import featureset

    from .featuresets import SHARD_SIZE

    lock, spec = meta_slot["lock"], dict(meta_slot["spec"])
    extractor, key, dim = str(lock["extractor"]), str(lock["key"]), int(lock["dim"])
    n = len(ids)
    failures: dict[str, int] = {}
    for reason in data["reasons"].values():
        failures[reason] = failures.get(reason, 0) + 1
    for field, value in (("key", key), ("extractor", extractor)):  # as store.write_spec checks them
        if spec.setdefault(field, value) != value:
            raise CacheError(f"spec {field} {spec[field]!r} does not match the feature set {name}/{extractor}/{key}")
    spec = {**spec, "dataset": name, "manifest_digest": digest, "n_utterances": n, "shard_size": SHARD_SIZE,
            "n_shards": len(featureset.shard_bounds(n, SHARD_SIZE)), "failures": spec.get("failures", failures),
            "n_failed": len(data["reasons"]), "complete": True, "imported_from": source}
    if featureset.is_complete(store, name, extractor, key, spec["n_shards"]):
        return dict(lock)
    featureset.write_set(store, spec, ids, data["arrays"], data["reasons"], dim=dim, layout=meta_slot["layout"],
                         provenance=spec.get("provenance") or {})
    return dict(lock)


def import_parquet(root: str | Path, name: str | None = None, cache_dir: str | Path | None = None) -> ImportResult:
    """A `mer-pipe cache export --format parquet` file (or a folder of its files) -> a prepared dataset whose slots
    are locked to feature sets under the exported keys, with their configs and provenance."""
    import hashlib

    from mer_pipe.cache.store import FeatureStore, check_name
    from mer_pipe.pipeline.corpus.manifest import _check, cache_root

    from .parquet import parquet_files, read_metadata, read_rows

    files = parquet_files(root)
    meta = read_metadata(files[0])
    rows, slot_data = read_rows(files, meta)
    path = files[0] if len(files) == 1 else files[0].parent
    name = name or default_name(Path(str(meta.get("dataset") or path.stem)))
    try:
        check_name("dataset", name)
    except ConfigError:
        raise ConfigError(f"--name {name!r} is not a usable dataset name; start with a letter or digit, then "
                          "letters, digits, '.', '_', '+', '=' or '-'") from None
    utts = [_check(r, f"{path} row {i}") for i, r in enumerate(rows)]
    if not utts:
        raise ManifestError(f"{path}: the file has no rows; nothing to import")
    validate_utterances(utts, f"parquet {path.name}")
    digest = manifest_digest(utts)
    if digest != meta["manifest_digest"]:
        raise ManifestError(f"{path}: the rows do not match the metadata's manifest digest ({digest[:12]} vs "
                            f"{meta['manifest_digest'][:12]}): rows were edited, filtered or reordered after export; "
                            "re-export the dataset")
    labels = list(meta["label_names"])
    bad = next((u for u in utts if u.label is not None and (u.label_id >= len(labels) or labels[u.label_id] != u.label)), None)
    if bad is not None:
        raise ManifestError(f"{path}: row {bad.id!r} has label {bad.label!r} / id {bad.label_id}, which the metadata's "
                            f"label names {labels} do not give; re-export the dataset")
    sha = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
    source = {"file": str(path), "sha256": sha.hexdigest(), "format": "parquet", "exported_dataset": meta.get("dataset"),
              "exported_recipe": meta.get("recipe")}
    report = PrepareReport(name=name, recipe="parquet", root=str(path.parent))
    report.count(utts)
    report.notes.append(f"imported from {path} (dataset {meta.get('dataset')!r} as exported); media are not carried")
    out = dataset_dir(name, cache_dir)
    if (out / "dataset.json").is_file():
        prior = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
        if prior.get("recipe") != "parquet":  # an earlier parquet import of that name is replaced, a corpus never
            raise ConfigError(f"--name {name!r}: the cache already holds a dataset of that name prepared by recipe "
                              f"{prior.get('recipe')!r}; choose another --name")
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "manifest.jsonl", utts)
    info = {"name": name, "recipe": "parquet", "root": str(path.parent), "label_names": labels,
            "manifest_digest": digest, "source": source}
    write_json_atomic(out / "dataset.json", info, indent=1, sort_keys=False)
    store = FeatureStore(cache_root(cache_dir))
    ids = [u.id for u in utts]
    slots = {}
    for slot, ms in meta["slots"].items():
        entry = _write_parquet_set(store, name, slot, ms, slot_data[slot], ids, digest, source)
        store.set_lock(name, slot, entry)
        slots[slot] = {**entry, "element": f"{slot} ({ms['spec'].get('extractor')})"}
    for slot in store.read_lock(name):
        if slot not in slots:
            store.unset_lock(name, slot)
    facts = {**source, "slots": {s: {k: e[k] for k in ("extractor", "key", "dim")} for s, e in slots.items()}}
    write_json_atomic(out / "prepare_report.json", {**report.to_dict(), "interop": facts}, indent=1, sort_keys=False)
    return ImportResult(report=report, info=info, slots=slots)
