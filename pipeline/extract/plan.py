"""Plan a feature run: one stage per distinct (extractor, resolved config); only missing shards become tasks.

A stage's key is `feature_key(extractor name, extractor version, resolved config, manifest digest)`.
Executor, worker count, device and batch size never enter it: they change how features are computed,
not which. Shards are fixed-size contiguous slices of the manifest (manifest order); the layout is
recorded in spec.json and reused by later runs, so a changed `--shard-size` cannot orphan a
half-built feature set. Tasks are plain picklable specs (paths, names, a config dict, ids and text):
workers build the heavy objects themselves.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from mer_pipe.cache.featureset import DEFAULT_SHARD_SIZE, set_spec, shard_attrs, shard_bounds
from mer_pipe.common.commands import command
from mer_pipe.common.errors import CacheError, ConfigError

from .presets import SlotSpec
from .stages import Plan, Prepared, ShardTask, Stage, load_prepared

MODALITY_FIELDS = {"audio": ("audio", "audio_segment"), "video": ("video", "video_segment")}


def _items(modality: str, utts: Sequence[Any], corpus_root: Path) -> list[dict[str, Any]]:
    if modality == "text":
        return [{"id": u.id, "text": u.text} for u in utts]
    if modality not in MODALITY_FIELDS:
        raise ConfigError(f"extractor modality {modality!r} is not one of text, audio, video")
    fpath, fseg = MODALITY_FIELDS[modality]
    out = []
    for u in utts:
        rel = getattr(u, fpath)
        seg = getattr(u, fseg)
        out.append({
            "id": u.id,
            "path": None if rel is None else str(corpus_root / rel),
            "segment": None if seg is None else [float(seg[0]), float(seg[1])],
        })
    return out


def set_items(modality: str, prepared: Prepared, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every utterance's task item in manifest order (text with its context turns for a context-K fine-tune)."""
    items = _items(modality, prepared.utts, prepared.corpus_root)
    if inputs:
        from .finetune import with_inputs  # context-K fine-tunes read "speaker: text" turns

        items = with_inputs(items, prepared.utts, inputs)
    return items


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _layout(store: Any, dataset: str, extractor: str, key: str, n_items: int, shard_size: int | None):
    """(spec.json as stored or None, (shard_size, n_shards), recovery or None). The spec is read once; without a
    usable one the shards' own sharding wins (cache/recovery.py, nothing deleted here), else `shard_size`."""
    from mer_pipe.cache.featureset import read_spec_or_none
    from mer_pipe.cache.recovery import find_layout

    spec = read_spec_or_none(store, dataset, extractor, key)
    if spec is not None:
        size, n = spec["shard_size"], spec["n_shards"]
        if size >= 1 and n == len(shard_bounds(n_items, size)):
            return spec, (size, n), None
        raise CacheError(
            f"{store.feature_dir(dataset, extractor, key) / 'spec.json'} records shard_size={size!r}, n_shards={n!r}, "
            f"which does not fit the {n_items} utterances of the manifest; delete that feature set folder (or run "
            f"`{command('cache', 'gc')}`) and rerun"
        )
    found = find_layout(store, dataset, extractor, key, n_items)  # checksums the shards of a lost spec
    if found.layout is not None:
        return None, found.layout, found
    size = DEFAULT_SHARD_SIZE if shard_size is None else int(shard_size)
    if size < 1:
        raise ConfigError(f"--shard-size {size} must be >= 1 (default {DEFAULT_SHARD_SIZE})")
    return None, (size, len(shard_bounds(n_items, size))), found


def make_plan(
    dataset: str,
    slots: Sequence[SlotSpec],
    *,
    cache_dir: str | Path | None = None,
    shard_size: int | None = None,
    retry_failed: bool = False,
    verify: bool = False,
    prepared: Prepared | None = None,
) -> Plan:
    """Resolve every slot's extractor, compute keys, fix shard layouts and list the missing shards.

    A present shard that cannot be opened or fails its checksum counts as missing (checked once per
    shard version, `cache/integrity.py`). `retry_failed`: sound shards that recorded failed utterances
    get a task that extracts those utterances again and keeps the other rows. `verify`: checksum every
    present shard again, even those recorded as checked (bit rot leaves size and mtime alone).
    `prepared`: the dataset as already loaded this run (else loaded here).

    Writes no spec.json and deletes nothing: a set seen for the first time (or whose spec was lost) gets
    `Stage.new_spec`, written by `write_new_specs` once the run holds the set's run lock. Raises ConfigError /
    ModelLoadError for bad slots, CacheError for an unprepared dataset.
    """
    from mer_pipe.cache.integrity import sound_shards
    from mer_pipe.cache.keys import feature_key
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.extractors import build_extractor
    from mer_pipe.pipeline.corpus.manifest import cache_root

    from .finetune import bind_finetune_slots, finetuned_configs

    if not slots:
        raise ConfigError("no feature slots selected; pick some with --only (e.g. --only t,a) or a --preset")
    root = cache_root(cache_dir)
    prepared = prepared or load_prepared(dataset, root)
    utts = prepared.utts
    if not utts:
        raise CacheError(f"dataset {dataset!r} has an empty manifest; rerun `{command('prepare')}` on a corpus with utterances")
    digest = prepared.digest
    # fine-tuned slots -> extraction keyed on the fine-tune (planning never trains)
    slots, finetunes, crossfit = bind_finetune_slots(dataset, slots, prepared, root, verify=verify)
    store = FeatureStore(root)

    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for spec in slots:
        ext = build_extractor(spec.extractor, dict(spec.config))
        if spec.upstream is None:
            resolved = ext.resolved_config()  # hashes local weights: ModelLoadError names a bad path
            key = feature_key(spec.extractor, ext.version, ext.key_config(), digest)
        else:
            resolved, key_cfg = finetuned_configs(ext, spec)
            key = feature_key(spec.extractor, ext.version, key_cfg, digest, upstream=spec.upstream)
        entry = by_key.setdefault((spec.extractor, key), {
            "slots": [], "modality": ext.modality, "version": ext.version, "config": resolved,
            "batch_size": spec.batch_size, "upstream": spec.upstream, "inputs": dict(spec.inputs),
        })
        entry["slots"].append(spec.slot)
        entry["batch_size"] = min(entry["batch_size"], spec.batch_size)

    stages = []
    for (name, key), e in by_key.items():
        stored, (size, n_shards), found = _layout(store, dataset, name, key, len(utts), shard_size)
        fresh = set_spec(dataset, name, key, version=e["version"], modality=e["modality"], config=e["config"],
                         manifest_digest=digest, n_utterances=len(utts), shard_size=size, upstream=e["upstream"],
                         inputs=e["inputs"])
        if found is None:
            sound, corrupt = sound_shards(store, dataset, name, key, n_shards, full=verify)
        else:  # no usable spec: the shards recovery just checksummed are the sound ones, nothing else counts
            sound, corrupt = set(found.sound), {}
        missing = sorted(set(range(n_shards)) - sound)
        retry = _failed_ids(store, dataset, name, key, n_shards, sound) if retry_failed else {}
        items = set_items(e["modality"], prepared, e["inputs"])
        bounds = shard_bounds(len(utts), size)

        def task(i: int, retry_ids: tuple[str, ...] | None = None) -> ShardTask:
            return ShardTask(
                dataset=dataset, extractor=name, modality=e["modality"], config=e["config"], key=key,
                index=i, n_shards=n_shards, path=str(store.shard_path(dataset, name, key, i, n_shards)),
                items=tuple(items[bounds[i][0]:bounds[i][1]]), slots=tuple(e["slots"]), batch_size=e["batch_size"],
                attrs=shard_attrs(fresh, i), retry_ids=retry_ids,
            )

        tasks = tuple([task(i) for i in missing] + [task(i, ids) for i, ids in sorted(retry.items())])
        stages.append(Stage(
            dataset=dataset, slots=tuple(e["slots"]), extractor=name, modality=e["modality"], version=e["version"],
            key=key, config=e["config"], manifest_digest=digest, n_items=len(utts), shard_size=size,
            n_shards=n_shards, missing=tuple(missing), batch_size=e["batch_size"], spec=stored or fresh, tasks=tasks,
            corrupt=tuple(sorted(corrupt.items())), retry=tuple(sorted(retry)), new_spec=stored is None,
            spec_stamp=_stamp(store.feature_dir(dataset, name, key) / "spec.json"),
            stray=tuple(str(p) for p in found.bad) if found else (),
            recovered=tuple(str(p) for _, p in sorted(found.sound.items())) if found else (),
        ))
    return Plan(dataset=dataset, root=root, corpus_root=prepared.corpus_root, manifest_digest=digest,
                n_utterances=len(utts), stages=tuple(stages), prepared=prepared, finetunes=tuple(finetunes),
                crossfit=tuple(crossfit))


def write_new_specs(plan: Plan) -> bool:
    """With the run locks held: write the spec.json of every set the plan saw without one (deleting the shard
    files a lost spec's recovery rejected, recording the shards it checksummed as checked). False when some
    spec.json changed since planning (another run wrote it before we held the lock): plan again."""
    from mer_pipe.cache.featureset import begin_set
    from mer_pipe.cache.integrity import mark_verified
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(plan.root)
    unchanged = True
    for s in plan.stages:
        if not s.new_spec:
            continue
        if _stamp(store.feature_dir(s.dataset, s.extractor, s.key) / "spec.json") != s.spec_stamp:
            unchanged = False
            continue
        for p in s.stray:
            Path(p).unlink(missing_ok=True)
        if s.recovered:
            mark_verified(store, s.dataset, s.extractor, s.key, s.recovered)
        begin_set(store, s.spec)
    return unchanged


def _failed_ids(store: Any, dataset: str, extractor: str, key: str, n: int, sound: set[int]) -> dict[int, tuple[str, ...]]:
    """Shard index -> ids of the utterances it recorded as failed (sound shards only; values not read)."""
    from mer_pipe.cache.shard import read_shard

    out = {}
    for i in sorted(sound):
        sh = read_shard(store.shard_path(dataset, extractor, key, i, n), values=False)
        failed = tuple(uid for uid, ok in zip(sh.ids, sh.valid) if not ok)
        if failed:
            out[i] = failed
    return out


def with_run_settings(task: ShardTask, **settings: Any) -> ShardTask:
    """A copy of `task` with run settings (device, batch_size, strict, torch_threads, hash_media) filled in."""
    return dataclasses.replace(task, **{k: v for k, v in settings.items() if v is not None})
