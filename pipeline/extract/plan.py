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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mer_pipe.common.errors import CacheError, ConfigError

from .presets import SlotSpec

DEFAULT_SHARD_SIZE = 256
MODALITY_FIELDS = {"audio": ("audio", "audio_segment"), "video": ("video", "video_segment")}


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to build one shard; plain data only (pickled to dask workers).

    items: text -> {"id", "text"}; audio/video -> {"id", "path" (absolute, or None when the manifest has
    no such media), "segment" ([start, end] seconds or None)}.
    """

    dataset: str
    extractor: str
    modality: str
    config: dict[str, Any]
    key: str
    index: int
    n_shards: int
    path: str
    items: tuple[dict[str, Any], ...]
    slots: tuple[str, ...] = ()  # for messages only (slots share a stage when their configs match)
    attrs: dict[str, Any] = field(default_factory=dict)
    # run settings: never part of the key
    device: str = "auto"
    batch_size: int = 16
    strict: bool = False
    torch_threads: int | None = None
    dtype: str = "float32"
    hash_media: bool = False  # failure records get the media file's sha256 (else size + mtime only)
    # --retry-failed: only these utterances are extracted again; the shard's other rows are kept
    retry_ids: tuple[str, ...] | None = None

    @property
    def n(self) -> int:
        """Utterances this task extracts."""
        return len(self.items) if self.retry_ids is None else len(self.retry_ids)


@dataclass(frozen=True)
class Stage:
    """One feature set to make complete: `missing` lists the shard indices still to compute (absent, or
    present but corrupt: `corrupt` says what is wrong with those); `retry` the sound shards whose failed
    utterances are extracted again (--retry-failed)."""

    dataset: str
    slots: tuple[str, ...]
    extractor: str
    modality: str
    version: str
    key: str
    config: dict[str, Any]
    manifest_digest: str
    n_items: int
    shard_size: int
    n_shards: int
    missing: tuple[int, ...]
    batch_size: int
    spec: dict[str, Any]
    tasks: tuple[ShardTask, ...]
    corrupt: tuple[tuple[int, str], ...] = ()
    retry: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        """Every shard is present and sound (failed utterances to retry do not count)."""
        return not self.missing



@dataclass(frozen=True)
class Plan:
    dataset: str
    root: Path
    corpus_root: Path
    manifest_digest: str
    n_utterances: int
    stages: tuple[Stage, ...]
    finetunes: tuple[Any, ...] = ()  # FinetuneStage: upstream of the stages whose spec names it (finetune.py)
    crossfit: tuple[Any, ...] = ()  # CrossfitBinding: cross-fitted slots assembled after extraction

    @property
    def tasks(self) -> list[ShardTask]:
        return [t for s in self.stages for t in s.tasks]


def shard_bounds(n_items: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, end) of each contiguous shard; the last one may be shorter."""
    n_shards = max(1, math.ceil(n_items / shard_size))
    return [(i * shard_size, min((i + 1) * shard_size, n_items)) for i in range(n_shards)]


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


def _layout(store: Any, dataset: str, extractor: str, key: str, n_items: int, shard_size: int | None) -> tuple[int, int]:
    """(shard_size, n_shards): from an existing spec.json when there is one, else from `shard_size`."""
    from mer_pipe.cache.recovery import recover_layout, spec_usable

    spec_path = store.feature_dir(dataset, extractor, key) / "spec.json"
    if spec_path.is_file() and not spec_usable(store, dataset, extractor, key):
        spec_path.unlink()  # unreadable: rebuilt below from the shards, like a deleted one
    if not spec_path.is_file():
        recovered, _ = recover_layout(store, dataset, extractor, key, n_items)  # deletes unsound/stray shards
        if recovered is not None:
            return recovered
    if spec_path.is_file():
        spec = store.read_spec(dataset, extractor, key)
        size, n = spec.get("shard_size"), spec.get("n_shards")
        if isinstance(size, int) and isinstance(n, int) and size >= 1 and n == len(shard_bounds(n_items, size)):
            return size, n
        raise CacheError(
            f"{spec_path} records shard_size={size!r}, n_shards={n!r}, which does not fit the {n_items} utterances "
            "of the manifest; delete that feature set folder (or run `mer-pipe cache gc`) and rerun"
        )
    size = DEFAULT_SHARD_SIZE if shard_size is None else int(shard_size)
    if size < 1:
        raise ConfigError(f"--shard-size {size} must be >= 1 (default {DEFAULT_SHARD_SIZE})")
    return size, len(shard_bounds(n_items, size))


def make_plan(
    dataset: str,
    slots: Sequence[SlotSpec],
    *,
    cache_dir: str | Path | None = None,
    shard_size: int | None = None,
    retry_failed: bool = False,
    verify: bool = False,
) -> Plan:
    """Resolve every slot's extractor, compute keys, fix shard layouts and list the missing shards.

    A present shard that cannot be opened or fails its checksum counts as missing (checked once per
    shard version, `cache/integrity.py`). `retry_failed`: sound shards that recorded failed utterances
    get a task that extracts those utterances again and keeps the other rows. `verify`: checksum every
    present shard again, even those recorded as checked (bit rot leaves size and mtime alone).

    Writes spec.json for feature sets seen for the first time (so their layout is fixed before any
    shard exists). Raises ConfigError / ModelLoadError for bad slots, CacheError for an unprepared dataset.
    """
    from mer_pipe.cache.integrity import sound_shards
    from mer_pipe.cache.keys import feature_key
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.extractors import build_extractor

    from mer_pipe.pipeline.corpus.manifest import cache_root, load_dataset

    if not slots:
        raise ConfigError("no feature slots selected; pick some with --only (e.g. --only t,a) or a --preset")
    root = cache_root(cache_dir)
    info, utts = load_dataset(dataset, root)
    if not utts:
        raise CacheError(f"dataset {dataset!r} has an empty manifest; rerun `mer-pipe prepare` on a corpus with utterances")
    digest = info["manifest_digest"]
    from .finetune import bind_finetune_slots  # fine-tuned slots -> extraction keyed on the fine-tune (no training)

    slots, finetunes, crossfit = bind_finetune_slots(dataset, slots, info, utts, root, verify=verify)
    corpus_root = Path(info.get("root") or ".")
    store = FeatureStore(root)

    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for spec in slots:
        ext = build_extractor(spec.extractor, dict(spec.config))
        if spec.upstream is None:
            resolved = ext.resolved_config()  # hashes local weights: ModelLoadError names a bad path
            key = feature_key(spec.extractor, ext.version, ext.key_config(), digest)
        else:
            from .finetune import finetuned_configs

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
        size, n_shards = _layout(store, dataset, name, key, len(utts), shard_size)
        spec_dict = {
            "stage": name, "extractor": name, "version": e["version"], "modality": e["modality"],
            "config": e["config"], "manifest_digest": digest, "n_utterances": len(utts),
            "shard_size": size, "n_shards": n_shards, "dataset": dataset, "key": key,
            **({"upstream": e["upstream"], "inputs": e["inputs"]} if e["upstream"] else {}),
        }
        if not (store.feature_dir(dataset, name, key) / "spec.json").is_file():
            store.write_spec(dataset, name, key, spec_dict)
        else:
            spec_dict = store.read_spec(dataset, name, key)
        sound, corrupt = sound_shards(store, dataset, name, key, n_shards, full=verify)
        missing = sorted(set(range(n_shards)) - sound)
        retry = _failed_ids(store, dataset, name, key, n_shards, sound) if retry_failed else {}
        items = _items(e["modality"], utts, corpus_root)
        if e["inputs"]:
            from .finetune import with_inputs  # context-K fine-tunes read "speaker: text" turns

            items = with_inputs(items, utts, e["inputs"])
        bounds = shard_bounds(len(utts), size)

        def task(i: int, retry_ids: tuple[str, ...] | None = None) -> ShardTask:
            return ShardTask(
                dataset=dataset, extractor=name, modality=e["modality"], config=e["config"], key=key,
                index=i, n_shards=n_shards, path=str(store.shard_path(dataset, name, key, i, n_shards)),
                items=tuple(items[bounds[i][0]:bounds[i][1]]), slots=tuple(e["slots"]), batch_size=e["batch_size"],
                attrs={"key": key, "dataset": dataset, "extractor": name, "stage": name,
                       "version": e["version"], "shard_index": i, "n_shards": n_shards,
                       "start": bounds[i][0], "config": e["config"]},
                retry_ids=retry_ids,
            )

        tasks = tuple([task(i) for i in missing] + [task(i, ids) for i, ids in sorted(retry.items())])
        stages.append(Stage(
            dataset=dataset, slots=tuple(e["slots"]), extractor=name, modality=e["modality"], version=e["version"],
            key=key, config=e["config"], manifest_digest=digest, n_items=len(utts), shard_size=size,
            n_shards=n_shards, missing=tuple(missing), batch_size=e["batch_size"], spec=spec_dict, tasks=tasks,
            corrupt=tuple(sorted(corrupt.items())), retry=tuple(sorted(retry)),
        ))
    return Plan(dataset=dataset, root=root, corpus_root=corpus_root, manifest_digest=digest,
                n_utterances=len(utts), stages=tuple(stages), finetunes=tuple(finetunes), crossfit=tuple(crossfit))


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
