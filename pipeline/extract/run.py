"""The feature run: plan -> run locks -> spec.json -> fine-tunes -> executor -> one shard per task -> lock the
slots that completed -> cross-fit assembly.

Planning (plan.py) writes nothing; the run takes every stage's run lock, writes the specs of new sets, trains
the fine-tunes the plan needs (finetune_run.py), submits the missing shards to the executor (shardrun.py), and
completes and locks each set as its last shard lands (cache/featureset.py)."""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from mer_pipe.pipeline.executors import ExecutorConfig, make_executor
from .overlap import OverlapConfig, for_workers
from .plan import make_plan, with_run_settings, write_new_specs
from .presets import SlotSpec
from .progress import Progress, RunSummary, StageSummary, notice, reason_category
from .shardrun import run_shard
from .stages import Plan, Prepared, Stage

Log = Callable[[str], None]


def _finish_stage(plan: Plan, stage: Stage, summary: StageSummary, written: Sequence[str] = ()) -> None:
    """All shards exist: complete spec.json (dim, layout, failures) once, then point the slots at it.
    A set in which every utterance failed is not locked (the slot keeps what it served before).
    `written`: shards this run wrote, recorded as checked so the next run does not re-read them."""
    from mer_pipe.cache.featureset import complete_spec, lock_slots
    from mer_pipe.cache.integrity import mark_verified
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(plan.root)
    if written:
        mark_verified(store, stage.dataset, stage.extractor, stage.key, written)
    spec = store.read_spec(stage.dataset, stage.extractor, stage.key)
    if summary.computed_shards or not spec.get("complete"):
        # Count over every shard (some may come from an earlier, interrupted run); values are not read.
        spec = complete_spec(store, spec, categorize=reason_category, provenance=summary.provenance)
    summary.dim = int(spec["dim"])
    summary.layout = spec.get("layout")
    summary.all_failures = dict(spec.get("failures", {}))
    summary.n_items = stage.n_items
    if not summary.all_failed:
        lock_slots(store, spec, stage.slots)


class _NoLock:
    @staticmethod
    def release() -> None:
        pass


def _claim_stages(plan: Plan, log: Log) -> tuple[dict[str, Any], bool]:
    """Take every stage's run lock (cache/runlock.py), in path order so two runs never deadlock.
    Returns (key -> lock, whether the plan is stale: we waited for another run or a folder was re-made)."""
    from mer_pipe.cache.runlock import RunLock
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(plan.root)
    locks: dict[str, Any] = {}
    stale = False
    try:
        for s in sorted(plan.stages, key=lambda s: (s.extractor, s.key)):
            where = f"{s.dataset}/{s.extractor}/{s.key[:12]} (slot {','.join(s.slots)})"
            fdir = store.feature_dir(s.dataset, s.extractor, s.key)
            if s.new_spec and s.spec_stamp is None and not (s.recovered or s.stray):
                # planned as a new, empty set (planning creates nothing): its folder appearing now is no news
                fdir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(fdir)

            def waiting(owner: Any, where: str = where) -> None:
                who = owner.describe() if owner is not None else "another process"
                log(f"waiting for {who}, which is extracting {where}; this run then computes only what "
                    "that one leaves missing (Ctrl-C to stop waiting; nothing is lost)")

            got = lock.acquire(on_wait=waiting)
            locks[s.key] = lock
            if got.took_over is not None:
                log(f"taking over the run lock of {where} from {got.took_over.describe()}, which ended without "
                    "releasing it (killed?); its finished shards are kept")
            stale |= got.replan
    except BaseException:
        for lock in locks.values():
            lock.release()
        raise
    return locks, stale


def _announce(plan: Plan, log: Log) -> None:
    for s in plan.stages:
        for i, detail in s.corrupt:
            log(f"slot {','.join(s.slots)}: shard {i} of {s.n_shards} is unusable and is recomputed ({detail})")
        if s.retry:
            n = sum(t.n for t in s.tasks if t.retry_ids is not None)
            log(f"slot {','.join(s.slots)}: retrying {n} failed utterance(s) in {len(s.retry)} shard(s)")


def extract_features(
    dataset: str,
    slots: Sequence[SlotSpec],
    *,
    cache_dir: str | Path | None = None,
    executor: ExecutorConfig | None = None,
    device: str = "auto",
    strict: bool = False,
    batch_size: int | None = None,
    shard_size: int | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    hash_media: bool = False,
    log: Log | None = None,
    verify: bool = False,
    overlap: OverlapConfig | None = None,
    show_plan: Log | None = None,
    prepared: Prepared | None = None,
) -> RunSummary:
    """Make every slot's feature set complete and lock it; returns the run summary.

    Only missing (or corrupt) shards are computed; a second identical run starts no executor at all.
    Each feature set is held under its run lock from before its spec.json is written until its slots are locked
    (planning writes nothing; the run re-plans when the set changed meanwhile): a concurrent
    run on the same cache waits, then computes only what is still missing. `retry_failed` re-extracts
    the utterances that shards recorded as failed (only those shards); `hash_media` adds the media
    file's sha256 to new failure records. `verify` checksums every present shard and fine-tuned checkpoint
    again (bit rot keeps size and mtime). `log` gets one-line notices (default: stderr). `overlap`: how each
    worker feeds its encoder (overlap.py; default: decoding ahead in a thread on CUDA, and on CPU for video
    when a core is idle; `overlap.SERIAL` turns it off; it never changes a feature). `show_plan`: gets the
    fine-tune DAG of the plan this run executes (finetune_plan.format_plan), when a slot is fine-tuned.
    `prepared`: the dataset as the caller already loaded it (stages.load_prepared); else loaded here, once."""
    from mer_pipe.common.devices import check_device
    from mer_pipe.common.errors import CacheError, ConfigError
    from mer_pipe.pipeline.corpus.manifest import cache_root

    from .stages import load_prepared

    executor = executor or ExecutorConfig()
    check_device(device, remote=executor.scheduler is not None)  # no GPU for --device cuda: now, before any work
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be >= 1")
    log = log or notice
    t0 = time.perf_counter()
    root = cache_root(cache_dir)
    prepared = prepared or load_prepared(dataset, root)  # the manifest, loaded and digested once per run

    def planned() -> Plan:
        return make_plan(dataset, slots, cache_dir=root, shard_size=shard_size, retry_failed=retry_failed,
                         verify=verify, prepared=prepared)

    plan = planned()
    if show_plan is not None and plan.finetunes:  # the DAG and what is cached, from this one plan
        from .finetune_plan import format_plan
        show_plan(format_plan(plan))
    locks, stale = _claim_stages(plan, log)
    try:
        # specs are written only now, under the locks; look again when another run finished (some of) our
        # work while we waited, or wrote a spec between our planning and our lock
        if stale or not write_new_specs(plan):
            plan = planned()
            if not write_new_specs(plan):
                raise CacheError(f"a spec.json of dataset {dataset!r} changed while this run held its run lock: "
                                 "another program writes the cache without the lock; stop it and rerun")
        _announce(plan, log)
        return _run_plan(plan, locks, executor=executor, device=device, strict=strict, batch_size=batch_size,
                         progress=progress, hash_media=hash_media, t0=t0, overlap=overlap or OverlapConfig())
    finally:
        for lock in locks.values():
            lock.release()


def _run_plan(plan: Plan, locks: dict[str, Any], *, executor: ExecutorConfig, device: str, strict: bool,
              batch_size: int | None, progress: bool, hash_media: bool, t0: float, overlap: OverlapConfig) -> RunSummary:
    """Submit the plan's tasks, finish (and unlock) each stage as its last shard lands."""
    from .crossfit import assemble_crossfit
    from .finetune_run import run_finetunes

    run_finetunes(plan, device=device, executor=executor, progress=progress)  # the fine-tune stages first
    summary = RunSummary(dataset=plan.dataset, executor=executor.kind, stages={
        s.key: StageSummary(slots=s.slots, extractor=s.extractor, key=s.key, n_shards=s.n_shards,
                            cached_shards=s.n_shards - len(s.tasks), n_items=s.n_items,
                            corrupt_shards=len(s.corrupt), retried_shards=len(s.retry))
        for s in plan.stages
    })
    by_key = {s.key: s for s in plan.stages}
    remaining = {s.key: len(s.tasks) for s in plan.stages}
    written: dict[str, list[str]] = {s.key: [] for s in plan.stages}

    def finish(key: str) -> None:
        _finish_stage(plan, by_key[key], summary.stages[key], written[key])
        locks.pop(key, _NoLock).release()  # done: gc may judge it by lock.json again, another run may go on

    for s in plan.stages:
        if not s.tasks:
            finish(s.key)

    tasks = plan.tasks
    if tasks:
        with make_executor(executor, device=device) as ex:  # on CUDA: one local worker per GPU (executors.py)
            summary.executor = ex.describe()
            threads = 1 if ex.isolated else None
            tasks = [with_run_settings(t, device=device, strict=strict, torch_threads=threads,
                                       batch_size=batch_size, hash_media=hash_media or None) for t in tasks]
            bar = Progress(total=sum(t.n for t in tasks), enabled=progress)
            task_fn = functools.partial(run_shard, overlap=for_workers(overlap, device, ex.n_workers, threads))
            try:
                for task, result in ex.run(task_fn, tasks):
                    st = summary.stages[task.key]
                    st.add(result)
                    bar.update(result.n, result.n - result.n_ok)
                    written[task.key].append(task.path)
                    remaining[task.key] -= 1
                    if remaining[task.key] == 0:
                        finish(task.key)
            finally:
                bar.close()
    # cross-fitted slots, through the same shard runner and batch size (crossfit.py); nothing when there are none
    assemble_crossfit(plan, device=device, batch_size=batch_size, strict=strict, hash_media=hash_media,
                      overlap=overlap)
    summary.seconds = time.perf_counter() - t0
    return summary


__all__ = ["extract_features"]
