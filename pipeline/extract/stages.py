"""The plan's types, shared by planning, fine-tuning and the feature run (plain data; no I/O here).

`Plan` holds the extraction `Stage`s (one per feature set, with the `ShardTask`s of its missing shards), the
`FinetuneStage`s they are built on and the `CrossfitBinding`s of cross-fitted slots, plus the `Prepared`
dataset the plan was made from: the manifest is loaded and digested once per feature run and passed along.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from mer_pipe.pipeline.corpus.manifest import Utterance


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset as loaded (dataset.json and the manifest, its digest checked): `load_prepared`."""

    name: str
    info: Mapping[str, Any]
    utts: tuple[Utterance, ...]

    @property
    def digest(self) -> str:
        return str(self.info["manifest_digest"])

    @property
    def corpus_root(self) -> Path:
        return Path(self.info.get("root") or ".")


def load_prepared(dataset: str, root: str | Path) -> Prepared:
    """Load (and digest) the prepared dataset once; CacheError with the fix when it is not prepared."""
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    info, utts = load_dataset(dataset, root)
    return Prepared(dataset, info, tuple(utts))


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
    # the shard whose other rows a retry keeps (None: `path` itself; cross-fitting: the all-train shard)
    keep_from: str | None = None

    @property
    def n(self) -> int:
        """Utterances this task extracts."""
        return len(self.items) if self.retry_ids is None else len(self.retry_ids)


@dataclass(frozen=True)
class Stage:
    """One feature set to make complete: `missing` lists the shard indices still to compute (absent, or
    present but corrupt: `corrupt` says what is wrong with those); `retry` the sound shards whose failed
    utterances are extracted again (--retry-failed).

    Planning writes nothing: `spec` is what spec.json holds or will hold. When `new_spec`, the feature run
    writes it once it holds the set's run lock (after deleting `stray`, the shard files a lost spec's recovery
    rejected, and recording `recovered`, the shards it checksummed, as checked); `spec_stamp` is spec.json's
    (size, mtime_ns) when planned, so a spec written meanwhile by another run is noticed."""

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
    new_spec: bool = False
    spec_stamp: tuple[int, int] | None = None
    stray: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every shard is present and sound (failed utterances to retry do not count)."""
        return not self.missing


@dataclass(frozen=True)
class FinetuneStage:
    """One encoder to fine-tune (one per slot, plus one per fold when cross-fitted)."""

    dataset: str
    slot: str
    extractor: str
    modality: str
    base_ref: str
    revision: str | None
    base_name: str
    base_identity: dict[str, Any]
    config: dict[str, Any]  # FinetuneConfig.to_dict()
    fold: tuple[int, int] | None  # (k, N): trained without fold k of N; None = all of train
    key: str
    path: str  # the final checkpoint folder
    train_ids: tuple[str, ...]
    dev_ids: tuple[str, ...]
    labels_digest: str
    manifest_digest: str
    complete: bool

    def describe(self) -> str:
        c = self.config
        fold = f", fold {self.fold[0] + 1}/{self.fold[1]}" if self.fold else ""
        ctx = f", context {c['context']}" if c.get("context") else ""
        return f"finetune {self.slot} ({self.base_name}, {c['epochs']} ep{ctx}{fold})"


@dataclass(frozen=True)
class CrossfitBinding:
    """How a cross-fitted slot is assembled: fold k's training utterances from fold stage k, the rest
    (dev, test, and training utterances in no fold) from the all-train stage."""

    slot: str
    all_key: str
    fold_keys: tuple[str, ...]
    fold_of: dict[str, int] = field(default_factory=dict)  # training utterance id -> fold


@dataclass(frozen=True)
class Plan:
    dataset: str
    root: Path
    corpus_root: Path
    manifest_digest: str
    n_utterances: int
    stages: tuple[Stage, ...]
    prepared: Prepared = field(repr=False, compare=False)  # the dataset the plan was made from
    finetunes: tuple[FinetuneStage, ...] = ()  # upstream of the stages whose spec names it (finetune.py)
    crossfit: tuple[CrossfitBinding, ...] = ()  # cross-fitted slots, assembled after extraction (crossfit.py)

    @property
    def tasks(self) -> list[ShardTask]:
        return [t for s in self.stages for t in s.tasks]

    def stage_of(self, slot: str) -> Stage:
        """The extraction stage serving `slot`."""
        return next(s for s in self.stages if slot in s.slots)
