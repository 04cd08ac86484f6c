"""Running the fine-tune stages: one encoder per stage, trained in this process or as one task on a dask
scheduler (the checkpoint then lands in the shared cache), under the stage's training lock; the finished
checkpoint appears by one rename with its finetune.json record (scores: finetune_scores.py)."""
from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mer_pipe.common.commands import command
from mer_pipe.common.errors import CacheError, MediaError
from mer_pipe.common.training import pin_torch_threads

from .finetune import STAGE, VERSION, context_texts
from .finetune_plan import needed_stages
from mer_pipe.pipeline.executors import ExecutorConfig

from .progress import StepBar, quiet_transformers, stderr
from .stages import FinetuneStage, Plan, Prepared, load_prepared

Log = Callable[[str], None]


@dataclass(frozen=True)
class FinetuneTask:
    """Plain data for one fine-tune (pickled to a dask worker when --scheduler is given)."""

    root: str
    stage: FinetuneStage
    device: str = "auto"
    torch_threads: int | None = None
    progress: bool = True


def run_finetune_task(task: FinetuneTask, log: Log = stderr, prepared: Prepared | None = None) -> dict[str, Any]:
    """Train one stage unless its checkpoint exists; returns its finetune.json record.

    Holds the stage's training lock: a second process waits, then finds the checkpoint. The checkpoint
    folder appears by a rename once complete; a kill leaves only the resumable work folder. `prepared`: the
    dataset as this run loaded it (in this process); a worker of a scheduler loads it itself.
    """
    from mer_pipe.cache.checkpoints import (META_FILE, TrainingLock, checkpoint_dir, content_digest, is_complete,
                                            problem, work_dir)
    from mer_pipe.cache.store import FeatureStore, read_json
    from mer_pipe.common.devices import resolve_device
    from mer_pipe.common.files import write_json_atomic
    from mer_pipe.extractors.finetune import BEST_DIR, FinetuneConfig, finetune

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
        prepared = prepared or load_prepared(st.dataset, task.root)
        info, utts = prepared.info, prepared.utts
        if prepared.digest != st.manifest_digest:
            raise CacheError(f"dataset {st.dataset!r} was re-prepared since the fine-tune of slot {st.slot} was "
                             f"planned; rerun `{command('features')}`")
        pin_torch_threads(task.torch_threads)
        quiet_transformers()
        cfg = FinetuneConfig.from_dict(st.config, prefix=f"{st.slot}.finetune")
        by_id = {u.id: u for u in utts}
        train, dev, skipped = _data(st, cfg, utts, by_id, info)
        device = resolve_device(task.device)
        work = work_dir(store, st.dataset, st.key)
        prefix = f"{st.describe()} [{st.key[:8]}]"
        log(f"{prefix}: training on {len(train.inputs)} utterances, dev {len(dev.inputs)}, device {device}")
        bar = StepBar(f"finetune {st.slot}", cfg.epochs, task.progress)
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


def run_finetunes(plan: Plan, *, device: str = "auto", executor: ExecutorConfig | None = None, progress: bool = True,
                  log: Log = stderr) -> list[dict[str, Any]]:
    """Train the fine-tunes the plan still needs (one worker: this process, or one task on --scheduler)."""
    todo = needed_stages(plan)
    records = []
    scheduler = executor.scheduler if executor is not None else None
    for st in todo:
        task = FinetuneTask(root=str(plan.root), stage=st, device=device, progress=progress and scheduler is None)
        if scheduler:
            records.append(_on_cluster(scheduler, task, log))
        else:
            records.append(run_finetune_task(task, log, plan.prepared))
    return records


def _on_cluster(scheduler: str, task: FinetuneTask, log: Log) -> dict[str, Any]:
    from mer_pipe.pipeline.executors import run_on_scheduler

    log(f"{task.stage.describe()}: submitted to {scheduler} (one worker; the checkpoint goes to the shared cache)")
    return run_on_scheduler(scheduler, run_finetune_task, task)
