"""The fine-tune stage: the first edge of the feature DAG (`finetune t -> extract t`).

A slot with `--set t.finetune=true` (options `--set t.finetune.lr=3e-5`, ...; see
`extractors.finetune.FinetuneConfig`) is extracted from an encoder fine-tuned on the dataset's
emotion labels instead of the frozen base:

* **Key** of a fine-tune = feature_key("finetune", version, {base weights identity, fine-tune config
  (crossfit excluded), extractor, label names, digest of the train/dev labels and of every utterance's
  split, fold}, manifest digest). Test labels are never read: a test label can change neither this key
  nor the features. A changed train/dev label or setting re-keys the fine-tune.
* **Edge**: the extraction stage of that slot hashes `{extractor config, model: "<finetune>", weights:
  {"finetune": key}, inputs}` with `upstream=key`, so it is re-keyed with the fine-tune and with nothing
  else. The extraction key is known before the checkpoint exists; planning never trains.
* **Checkpoint** `<root>/<dataset>/finetune/<key>/` (cache/checkpoints.py) appears by one rename when
  training has finished; a killed fine-tune leaves only `.work-<key>/`, which a rerun resumes (after the
  last finished epoch) and extraction never reads. Its finetune.json holds the kept encoder's W-F1 on train next
  to dev (and held-out dialogues for a fold) and the dialogues it trained on: finetune_scores.py (issue 19).
* **Cross-fitting** (`crossfit=N`): the training dialogues are dealt into N folds (seeded); fold k's
  encoder trains on the other folds (its own cached stage) and extracts fold k's training utterances;
  dev/test (and the model the encoder's own dev score describes) come from the encoder trained on all of
  train. The combined feature set names every fold key in its spec (`finetune_keys`).
* **Where it runs**: in this process (GPU when --device allows), or, with `--scheduler`, as one task on
  the dask cluster, so the checkpoint lands in the shared cache and remote workers then load it.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mer_pipe.common.errors import CacheError, ConfigError, MediaError

from .finetune_progress import StepBar as _StepBar, quiet_transformers as _quiet_transformers
from .presets import SlotSpec

STAGE = "finetune"
VERSION = "1"
SPLITS_READ = ("train", "dev")  # the only splits whose labels a fine-tune reads
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


# --- config and inputs ---------------------------------------------------------------------------
def finetune_config(spec: SlotSpec):
    """The slot's FinetuneConfig (typed, errors name `SLOT.finetune.KEY`), or None when off."""
    from mer_pipe.extractors.finetune import FinetuneConfig

    if spec.finetune is None:
        return None
    return FinetuneConfig.from_dict(dict(spec.finetune), prefix=f"{spec.slot}.finetune")


def context_texts(utts: Sequence[Any], context: int, sep: str) -> dict[str, str]:
    """utterance id -> encoder input: the text alone (context 0), else the K previous turns of its
    dialogue and itself as "speaker: text", oldest first, joined by `sep`."""
    if context <= 0:
        return {u.id: u.text for u in utts}
    by_dia: dict[str, list[Any]] = {}
    for u in utts:
        by_dia.setdefault(u.dialogue_id, []).append(u)
    out = {}
    for turns in by_dia.values():
        turns = sorted(turns, key=lambda u: u.index)
        for i, u in enumerate(turns):
            window = turns[max(0, i - context): i + 1]
            out[u.id] = sep.join(f"{t.speaker}: {t.text}" for t in window)
    return out


def labels_digest(utts: Sequence[Any], train_ids: Sequence[str], dev_ids: Sequence[str]) -> str:
    """sha256 over every utterance's (id, split) and the labels of the train/dev utterances used.
    Test labels never enter it (nor anything else of the fine-tune)."""
    used = set(train_ids) | set(dev_ids)
    h = hashlib.sha256()
    for u in utts:
        label = u.label_id if (u.id in used and u.split in SPLITS_READ) else None
        h.update(json.dumps([u.id, u.split, label], separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def crossfit_folds(utts: Sequence[Any], n_folds: int, seed: int) -> dict[str, int]:
    """Training dialogue -> fold (`corpus.folds`), returned per training utterance id."""
    from mer_pipe.pipeline.corpus.folds import dialogue_folds

    train = [u for u in utts if u.split == "train" and u.label_id is not None]
    fold_of_dia = dialogue_folds([u.dialogue_id for u in train], n_folds, seed, option=f"finetune.crossfit={n_folds}",
                                 fix=f"use crossfit <= {len({u.dialogue_id for u in train})} or 0")
    return {u.id: fold_of_dia[u.dialogue_id] for u in utts if u.dialogue_id in fold_of_dia and u.split == "train"}


def _base_name(ext: Any, ref: str) -> str:
    if getattr(ext.config, "model", "x") is None:
        return "MiniLM (packaged)"
    p = Path(ref).expanduser()
    return p.name if p.exists() else ref


# --- binding slots to stages (planning; never trains) ------------------------------------------------
def bind_finetune_slots(dataset: str, slots: Sequence[SlotSpec], info: Mapping[str, Any], utts: Sequence[Any],
                        root: Path, *, verify: bool = False) -> tuple[list[SlotSpec], list[FinetuneStage], list[CrossfitBinding]]:
    """Replace every fine-tuned slot by the extraction of its (future) checkpoint, keyed through the
    fine-tune key; returns the new slots, the fine-tune stages and the cross-fit bindings. `verify`:
    a checkpoint counts as complete only when its files match the checksums recorded when it appeared
    (otherwise that is checked only before the checkpoint is read again: `needed_stages`)."""
    from mer_pipe.cache.checkpoints import checkpoint_dir, is_complete, problem
    from mer_pipe.cache.keys import feature_key
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.extractors import build_extractor

    store = FeatureStore(root)
    digest = info["manifest_digest"]
    label_names = list(info.get("label_names") or [])
    out_slots: list[SlotSpec] = []
    stages: list[FinetuneStage] = []
    bindings: list[CrossfitBinding] = []
    for spec in slots:
        cfg = finetune_config(spec)
        if cfg is None:
            out_slots.append(spec)
            continue
        ext = build_extractor(spec.extractor, dict(spec.config))
        if ext.modality not in ("text", "audio"):
            raise ConfigError(f"--set {spec.slot}.finetune: slot {spec.slot!r} uses the {ext.modality} extractor "
                              f"{spec.extractor!r}; only text and wav2vec2-family audio slots can be fine-tuned "
                              "(video stays frozen); drop that option")
        if ext.modality == "audio" and spec.extractor != "wav2vec2":
            raise ConfigError(f"--set {spec.slot}.finetune: audio fine-tuning needs the wav2vec2 extractor, slot "
                              f"{spec.slot!r} uses {spec.extractor!r}; e.g. --set a_w2v.finetune=true")
        if ext.modality == "audio" and cfg.context:
            raise ConfigError(f"{spec.slot}.finetune.context={cfg.context}: context turns are text; "
                              f"use --set {spec.slot}.finetune.context=0 for an audio slot")
        ref = ext._model_ref()
        identity = ext.weights_identity()  # a bad local path fails here, naming it
        train_all = [u.id for u in utts if u.split == "train" and u.label_id is not None]
        dev_ids = tuple(u.id for u in utts if u.split == "dev" and u.label_id is not None)
        if not train_all:
            raise ConfigError(f"--set {spec.slot}.finetune: dataset {dataset!r} has no labelled training "
                              "utterances to fine-tune on; prepare a corpus with a train split")

        def stage(train_ids: Sequence[str], fold: tuple[int, int] | None) -> FinetuneStage:
            ldig = labels_digest(utts, train_ids, dev_ids)
            key = feature_key(STAGE, VERSION, {
                "base": identity, "extractor": spec.extractor, "config": cfg.key_dict(),
                "label_names": label_names, "labels": ldig, "fold": list(fold) if fold else None,
            }, digest)
            path = checkpoint_dir(store, dataset, key)
            return FinetuneStage(
                dataset=dataset, slot=spec.slot, extractor=spec.extractor, modality=ext.modality, base_ref=ref,
                revision=getattr(ext.config, "revision", None), base_name=_base_name(ext, ref),
                base_identity=identity, config=cfg.to_dict(), fold=fold, key=key, path=str(path),
                train_ids=tuple(train_ids), dev_ids=dev_ids, labels_digest=ldig, manifest_digest=digest,
                complete=is_complete(path) and (not verify or problem(path) is None))

        main = stage(train_all, None)
        stages.append(main)
        inputs = {"context": cfg.context, "sep": cfg.context_sep} if cfg.context else {}
        defaults = {"pooling": cfg.pooling, "max_length": cfg.max_length} if ext.modality == "text" else {}
        config = {**defaults, **{k: v for k, v in spec.config.items() if k != "revision"}, "model": main.path}
        if cfg.crossfit:
            fold_of = crossfit_folds(utts, cfg.crossfit, cfg.seed)
            fold_stages = [stage([i for i in train_all if fold_of.get(i) != k], (k, cfg.crossfit))
                           for k in range(cfg.crossfit)]
            stages.extend(fold_stages)
            bindings.append(CrossfitBinding(spec.slot, main.key, tuple(s.key for s in fold_stages), fold_of))
        # the all-train extraction is an ordinary fine-tuned stage (shared with crossfit=0)
        out_slots.append(dataclasses.replace(spec, config=config, upstream=main.key, inputs=inputs, finetune=None))
    return out_slots, stages, bindings


def finetuned_configs(ext: Any, spec: SlotSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resolved config for the tasks, key config) of an extraction that reads a fine-tuned checkpoint.

    The task config carries the checkpoint path and no weights identity (the checkpoint may not exist
    yet when planning); the key config stands the fine-tune key in for the weights, so the extraction
    key is `feature_key(extractor, version, key config, manifest digest, upstream=fine-tune key)`."""
    from mer_pipe.extractors.base import WEIGHTS_KEY

    resolved = dataclasses.asdict(ext.config)
    key_cfg = {**resolved, "model": "<finetune>", WEIGHTS_KEY: {"finetune": spec.upstream},
               "inputs": dict(spec.inputs)}
    return resolved, key_cfg


def with_inputs(items: list[dict[str, Any]], utts: Sequence[Any], inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Text items with the encoder input of a context-K fine-tune ("speaker: text" turns)."""
    if not inputs.get("context"):
        return items
    texts = context_texts(utts, int(inputs["context"]), str(inputs.get("sep", " | ")))
    return [{**it, "text": texts[it["id"]]} for it in items]


# --- running -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneTask:
    """Plain data for one fine-tune (pickled to a dask worker when --scheduler is given)."""

    root: str
    stage: FinetuneStage
    device: str = "auto"
    torch_threads: int | None = None
    progress: bool = True


def run_finetune_task(task: FinetuneTask, log: Log = _stderr) -> dict[str, Any]:
    """Train one stage unless its checkpoint exists; returns its finetune.json record.

    Holds the stage's training lock: a second process waits, then finds the checkpoint. The checkpoint
    folder appears by a rename once complete; a kill leaves only the resumable work folder.
    """
    from mer_pipe.cache.checkpoints import (META_FILE, TrainingLock, checkpoint_dir, content_digest, is_complete,
                                            problem, work_dir)
    from mer_pipe.cache.store import FeatureStore, read_json
    from mer_pipe.common.devices import resolve_device
    from mer_pipe.common.files import write_json_atomic
    from mer_pipe.extractors.finetune import BEST_DIR, FinetuneConfig, finetune, set_threads_once
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    from .finetune_scores import encoder_scores, scores_line

    st = task.stage
    store = FeatureStore(task.root)
    final = checkpoint_dir(store, st.dataset, st.key)
    with TrainingLock(store, st.dataset, st.key):
        if is_complete(final):
            bad = problem(final)  # verified like a shard before reuse: never extracted from silently
            if bad is None:
                return read_json(final / META_FILE, "fine-tune record")
            log(f"mer-pipe: note: fine-tuned checkpoint {st.key} is unusable ({bad}); retraining it under the same key")
        if final.exists():  # a folder without a complete, sound record is not ours to trust
            shutil.rmtree(final)
        info, utts = load_dataset(st.dataset, task.root)
        if info["manifest_digest"] != st.manifest_digest:
            raise CacheError(f"dataset {st.dataset!r} was re-prepared since the fine-tune of slot {st.slot} was "
                             "planned; rerun `mer-pipe features`")
        set_threads_once(task.torch_threads)
        _quiet_transformers()
        cfg = FinetuneConfig.from_dict(st.config, prefix=f"{st.slot}.finetune")
        by_id = {u.id: u for u in utts}
        train, dev, skipped = _data(st, cfg, utts, by_id, info)
        device = resolve_device(task.device)
        work = work_dir(store, st.dataset, st.key)
        prefix = f"{st.describe()} [{st.key[:8]}]"
        log(f"{prefix}: training on {len(train.inputs)} utterances, dev {len(dev.inputs)}, device {device}")
        bar = _StepBar(f"finetune {st.slot}", cfg.epochs, task.progress)
        t0 = time.perf_counter()
        try:
            record = finetune(st.modality, st.base_ref, st.revision, cfg, train, dev,
                              len(info.get("label_names") or []), work, device=device,
                              log=lambda s: log(f"{prefix}: {s}"), on_step=bar.step,
                              on_discard=lambda s: log(f"mer-pipe: note: {prefix}: {s}"))
        finally:
            bar.close()
        best = work / BEST_DIR
        held = lambda ids: _data(dataclasses.replace(st, train_ids=tuple(ids), dev_ids=()), cfg, utts, by_id, info)[0]  # noqa: E731
        scores, dialogues = encoder_scores(st, train, held, utts, best, record, cfg, device)  # train/dev report
        log(f"{prefix}: {scores_line(scores)}")
        meta = {
            "complete": True, "key": st.key, "stage": STAGE, "version": VERSION, "dataset": st.dataset,
            "slot": st.slot, "extractor": st.extractor, "modality": st.modality, "base": st.base_identity,
            "base_name": st.base_name, "config": st.config, "fold": list(st.fold) if st.fold else None,
            "labels_digest": st.labels_digest, "manifest_digest": st.manifest_digest,
            "label_names": list(info.get("label_names") or []), "n_train": len(train.inputs),
            "n_dev": len(dev.inputs), "skipped_media": skipped, "record": record, "scores": scores,
            "dialogues": dialogues, "device": device,
            "wall_seconds": time.perf_counter() - t0, "host": socket.gethostname(), "pid": os.getpid(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "content_sha256": content_digest(best),
        }
        write_json_atomic(best / META_FILE, meta)
        os.replace(best, final)  # the checkpoint appears whole, by one rename
        shutil.rmtree(work, ignore_errors=True)
        log(f"{prefix}: done, best epoch {record['best_epoch']} (dev W-F1 {100 * (record['dev_weighted_f1'] or 0):.2f}), "
            f"checkpoint {final}")
        return meta


def _data(st: FinetuneStage, cfg: Any, utts: Sequence[Any], by_id: Mapping[str, Any], info: Mapping[str, Any]):
    """(train, dev, skipped media count) as FinetuneData; labels of the stage's own ids only."""
    from mer_pipe.extractors.finetune import FinetuneData

    skipped = 0
    if st.modality == "text":
        texts = context_texts(utts, cfg.context, cfg.context_sep)

        def make(ids: Sequence[str]) -> FinetuneData:
            return FinetuneData([texts[i] for i in ids], [int(by_id[i].label_id) for i in ids])

        return make(st.train_ids), make(st.dev_ids), 0
    from mer_pipe.extractors.media import load_audio

    corpus_root = Path(info.get("root") or ".")

    def make_audio(ids: Sequence[str]) -> FinetuneData:
        nonlocal skipped
        data = FinetuneData([], [])
        for i in ids:
            u = by_id[i]
            if u.audio is None:
                skipped += 1
                continue
            try:
                wav = load_audio(str(corpus_root / u.audio), sample_rate=16000, segment=u.audio_segment)
            except MediaError:
                skipped += 1
                continue
            data.inputs.append(wav)
            data.labels.append(int(u.label_id))
        return data

    return make_audio(st.train_ids), make_audio(st.dev_ids), skipped


def needed_stages(plan: Any) -> list[FinetuneStage]:
    """Fine-tunes whose checkpoint is missing, or fails its checksums, while a feature set built on it is
    still incomplete (that is when the checkpoint would be read again)."""
    incomplete: set[str] = set()
    for s in plan.stages:
        if not s.complete and s.spec.get("upstream"):
            incomplete.add(s.spec["upstream"])
    for b in plan.crossfit:
        if not crossfit_complete(plan, b):
            incomplete |= {b.all_key, *b.fold_keys}
    return [st for st in plan.finetunes if st.key in incomplete and not (st.complete and _sound(st.path))]


def _sound(path: str) -> bool:
    """The checkpoint's files match the checksums recorded when it appeared."""
    from mer_pipe.cache.checkpoints import problem

    return problem(Path(path)) is None


def crossfit_complete(plan: Any, b: CrossfitBinding) -> bool:
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(plan.root)
    base = next(s for s in plan.stages if b.slot in s.slots)
    spec_path = store.feature_dir(plan.dataset, base.extractor, crossfit_key(plan, b)) / "spec.json"
    return spec_path.is_file() and bool(store.read_spec(plan.dataset, base.extractor, crossfit_key(plan, b)).get("complete"))


def run_finetunes(plan: Any, *, device: str = "auto", executor: Any = None, progress: bool = True,
                  log: Log = _stderr) -> list[dict[str, Any]]:
    """Train the fine-tunes the plan still needs (one worker: this process, or one task on --scheduler)."""
    todo = needed_stages(plan)
    records = []
    scheduler = getattr(executor, "scheduler", None)
    for st in todo:
        task = FinetuneTask(root=str(plan.root), stage=st, device=device, progress=progress and scheduler is None)
        if scheduler:
            records.append(_on_cluster(scheduler, task, log))
        else:
            records.append(run_finetune_task(task, log))
    return records


def _on_cluster(scheduler: str, task: FinetuneTask, log: Log) -> dict[str, Any]:
    from mer_pipe.pipeline.executors import run_on_scheduler

    log(f"{task.stage.describe()}: submitted to {scheduler} (one worker; the checkpoint goes to the shared cache)")
    return run_on_scheduler(scheduler, run_finetune_task, task)


# --- cross-fitted feature sets -------------------------------------------------------------------------
def crossfit_key(plan: Any, b: CrossfitBinding) -> str:
    from mer_pipe.cache.keys import feature_key

    base = next(s for s in plan.stages if b.slot in s.slots)
    return feature_key(base.extractor, base.version, {"crossfit": {"all": base.key, "folds": list(b.fold_keys)}},
                       plan.manifest_digest, upstream=base.spec.get("upstream"))


def assemble_crossfit(plan: Any, *, device: str = "auto", log: Log = _stderr) -> list[str]:
    """Build each cross-fitted slot's feature set (once) and lock the slot to it.

    Rows of fold k's training utterances come from fold k's encoder (extracted here, serially, in
    batches); every other row is copied from the all-train feature set the plan extracted. Shards keep
    the all-train set's layout and are written atomically; the spec names every fine-tune key."""
    import numpy as np

    from mer_pipe.cache.shard import basic_provenance, read_shard, write_shard
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.common.devices import resolve_device
    from mer_pipe.extractors import build_extractor
    from mer_pipe.cache.checkpoints import checkpoint_dir
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    store = FeatureStore(plan.root)
    done = []
    for b in plan.crossfit:
        base = next(s for s in plan.stages if b.slot in s.slots)
        key = crossfit_key(plan, b)
        if not crossfit_complete(plan, b):
            _, utts = load_dataset(plan.dataset, plan.root)
            by_fold: dict[int, list[str]] = {}
            for uid, k in b.fold_of.items():
                by_fold.setdefault(k, []).append(uid)
            inputs = with_inputs([{"id": u.id, "text": u.text} for u in utts], utts, base.spec.get("inputs") or {}) \
                if base.modality == "text" else None
            text_of = {it["id"]: it["text"] for it in inputs} if inputs else {}
            replaced: dict[str, np.ndarray] = {}
            for k, ids in sorted(by_fold.items()):
                ckpt = checkpoint_dir(store, plan.dataset, b.fold_keys[k])
                ext = build_extractor(base.extractor, {**base.config, "model": str(ckpt)})
                ext.setup(resolve_device(device))
                log(f"extract {b.slot} fold {k + 1}/{len(b.fold_keys)}: {len(ids)} training utterances with the "
                    f"encoder that did not see them")
                xs = _fold_inputs(base.modality, ids, text_of, utts, plan.corpus_root, ext)
                for lo in range(0, len(xs), 32):
                    part = xs[lo:lo + 32]
                    outs = ext.extract([x for _, x in part if x is not None]) if any(x is not None for _, x in part) else []
                    it = iter(outs)
                    for uid, x in part:
                        if x is not None:
                            replaced[uid] = next(it)
            for i in range(base.n_shards):
                src = read_shard(store.shard_path(plan.dataset, base.extractor, base.key, i, base.n_shards))
                arrays, reasons = [], dict(src.reasons)
                for j, uid in enumerate(src.ids):
                    if uid in replaced:
                        arrays.append(replaced[uid])
                        reasons.pop(uid, None)
                    elif b.fold_of.get(uid) is not None:
                        arrays.append(None)
                        reasons.setdefault(uid, "cross-fit: no input for the fold encoder")
                    else:
                        arrays.append(src.values[j] if bool(src.valid[j]) else None)
                attrs = {"key": key, "dataset": plan.dataset, "extractor": base.extractor, "stage": base.extractor,
                         "version": base.version, "shard_index": i, "n_shards": base.n_shards,
                         "provenance": {**basic_provenance(), "crossfit_of": base.key}}
                write_shard(store.shard_path(plan.dataset, base.extractor, key, i, base.n_shards), src.ids, arrays,
                            reasons, dtype="float32", attrs=attrs, dim=src.dim)
            base_spec = store.read_spec(plan.dataset, base.extractor, base.key)
            store.write_spec(plan.dataset, base.extractor, key, {
                **{k: v for k, v in base_spec.items() if k not in ("key", "created", "provenance")},
                "key": key, "upstream": base.spec.get("upstream"),
                "finetune_keys": [b.all_key, *b.fold_keys], "crossfit": {"folds": len(b.fold_keys),
                                                                         "all_train_features": base.key},
                "complete": True})
        spec = store.read_spec(plan.dataset, base.extractor, key)
        store.set_lock(plan.dataset, b.slot, {"extractor": base.extractor, "key": key, "dim": spec["dim"],
                                              "layout": spec.get("layout")})
        done.append(key)
    return done


def _fold_inputs(modality: str, ids: Sequence[str], text_of: Mapping[str, str], utts: Sequence[Any],
                 corpus_root: Path, ext: Any) -> list[tuple[str, Any]]:
    if modality == "text":
        return [(i, text_of[i]) for i in ids]
    from mer_pipe.extractors.media import load_audio

    by_id = {u.id: u for u in utts}
    out = []
    for i in ids:
        u = by_id[i]
        try:
            x = None if u.audio is None else load_audio(str(corpus_root / u.audio), segment=u.audio_segment,
                                                        **ext.decode_kwargs())
        except MediaError:
            x = None
        out.append((i, x))
    return out


# --- showing the plan ----------------------------------------------------------------------------------
def format_plan(plan: Any) -> str:
    """The plan as stages with their dependencies, e.g.
    `finetune t (MiniLM (packaged), 3 ep) [train] 1a2b3c4d -> extract t (text-hf) 5e6f7a8b [4/4 shards to compute]`."""
    needed = {s.key for s in needed_stages(plan)}
    lines = [f"plan for {plan.dataset} ({plan.n_utterances} utterances):"]
    by_key = {st.key: st for st in plan.finetunes}
    cf = {b.slot: b for b in plan.crossfit}
    for s in plan.stages:
        ext = f"extract {','.join(s.slots)} ({s.extractor}) {s.key[:8]} " + (
            "[cached]" if s.complete else f"[{len(s.missing)}/{s.n_shards} shards to compute]")
        up = s.spec.get("upstream")
        if up is None:
            lines.append(f"  {ext}")
            continue
        b = next((cf[sl] for sl in s.slots if sl in cf), None)
        keys = [b.all_key, *b.fold_keys] if b else [up]
        for k in keys:
            st = by_key[k]
            bad = st.complete or Path(st.path).is_dir()  # present but not sound (complete only when checked)
            state = ("retrain: fails its checksums" if bad else "train") if k in needed else \
                ("cached" if st.complete else "not needed" + (": fails its checksums" if bad else ""))
            lines.append(f"  {st.describe()} [{state}] {k[:8]} ->")
        lines.append(f"    {ext}" + (f" -> cross-fit assembly {','.join(s.slots)}" if b else ""))
    return "\n".join(lines)
