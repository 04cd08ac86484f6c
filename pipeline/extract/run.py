"""The feature run: plan -> executor -> one shard per task -> lock the slots that completed.

A task (`run_shard`) decodes the media of its utterances, runs the extractor in batches (decoding the
next batches while the encoder runs, where that pays: overlap.py) and writes one shard atomically. Media
failures become per-utterance rows with a reason (or, with `strict`, stop the run naming the utterance,
file and reason). The extractor is built once per worker process and reused (keyed by name, config, device)."""
from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mer_pipe.common.errors import CacheError, MediaError, ModelLoadError

from mer_pipe.pipeline.executors import ExecutorConfig, make_executor, worker_device
from .overlap import Feed, OverlapConfig, decide, decode_item, for_workers, forward_batch, media_cost
from .plan import Plan, ShardTask, Stage, make_plan, with_run_settings
from .presets import SlotSpec
from .progress import Progress, RunSummary, StageSummary, reason_category

Log = Callable[[str], None]

# Per worker process: extractors already set up, keyed by (name, canonical config, device).
_LOADED: dict[tuple[str, str, str], Any] = {}
_THREADS_SET = False


@dataclass(frozen=True)
class ShardResult:
    """What a task reports back (plain data). failures: (utterance id, reason) pairs."""

    key: str
    index: int
    n: int
    n_ok: int
    failures: tuple[tuple[str, str], ...]
    bytes: int
    dim: int
    layout: str
    decode_s: float
    forward_s: float
    total_s: float
    provenance: dict[str, Any] = field(default_factory=dict)
    wait_s: float = 0.0  # the encoder waiting for decoded batches (overlap.py); large: decode-bound


def _extractor(task: ShardTask):
    """The set-up extractor for `task`, built at most once per process."""
    from mer_pipe.cache.keys import canonical_json
    from mer_pipe.extractors import build_extractor

    device = worker_device(task.device)  # a dask worker per GPU: "cuda" -> that worker's GPU
    ident = (task.extractor, canonical_json(task.config), device)
    ext = _LOADED.get(ident)
    if ext is None:
        _quiet_transformers()
        ext = build_extractor(task.extractor, dict(task.config))
        ext.setup(device)
        _LOADED[ident] = ext
    return ext


def _quiet_transformers() -> None:
    # Per-model "Loading weights" bars from every worker would shred the run's own progress bar.
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def _set_threads(n: int | None) -> None:
    global _THREADS_SET
    # Only when the extractor uses torch: importing it for openSMILE would cost seconds per worker.
    if n is None or _THREADS_SET or "torch" not in sys.modules:
        return
    import torch

    # One task per worker process: more torch threads per process would oversubscribe the cores.
    torch.set_num_threads(n)
    _THREADS_SET = True


def _strict_error(task: ShardTask, uid: str, exc: MediaError) -> MediaError:
    return MediaError(
        f"utterance {uid!r} ({task.modality}, {task.extractor}): {exc} [--strict stops at the first media failure; "
        f"completed shards are kept; drop --strict to record such utterances as failed and go on]"
    )


def _layout(arrays: list[Any]) -> str:
    ok = [a for a in arrays if a is not None]
    if not ok or ok[0].ndim == 1:
        return "pooled"
    return "sequence" if len({a.shape[0] for a in ok}) == 1 else "ragged"


def _media_identity(task: ShardTask, i: int) -> dict[str, Any] | None:
    """What a failure record keeps of the utterance's media file (so `cache verify` sees later changes)."""
    from mer_pipe.common.files import file_identity

    path = task.items[i].get("path") if task.modality != "text" else None
    return None if path is None else file_identity(path, content_hash=task.hash_media)


def _kept_rows(task: ShardTask, ids: list[str]) -> tuple[list[Any], dict[str, str], dict[str, dict[str, Any]]]:
    """(arrays, reasons, media) of the existing shard's rows that a retry task keeps; empty otherwise."""
    arrays: list[Any] = [None] * len(ids)
    if task.retry_ids is None:
        return arrays, {}, {}
    from mer_pipe.cache.shard import read_shard

    old = read_shard(task.path, verify=True)
    if old.ids != ids:
        raise CacheError(f"shard {task.path} holds other utterances than the manifest slice it should; delete it "
                         "and rerun (it is then recomputed)")
    retry = set(task.retry_ids)
    reasons = {uid: r for uid, r in old.reasons.items() if uid not in retry}
    media = {uid: m for uid, m in old.media.items() if uid not in retry}
    for i, uid in enumerate(ids):
        if old.valid[i] and uid not in retry:
            arrays[i] = old.values[i]
    return arrays, reasons, media


def _loaded_extractor(task: ShardTask) -> Any:
    try:
        return _extractor(task)
    except ModelLoadError as exc:
        slot = task.slots[0] if task.slots else "SLOT"
        raise ModelLoadError(f"slot {','.join(task.slots)} ({task.extractor}): {exc}; "
                             f"e.g. --set {slot}.model=/path/to/local/checkpoint") from None


def _work_order(task: ShardTask, ids: list[str]) -> list[int]:
    """Rows to extract (all, or a retry's), texts in order of length so a batch pads to similar lengths
    (results go back by index)."""
    retry = None if task.retry_ids is None else set(task.retry_ids)
    order = [i for i in range(len(ids)) if retry is None or ids[i] in retry]
    if task.modality == "text":
        order.sort(key=lambda i: len(task.items[i]["text"]))
    return order


def run_shard(task: ShardTask, overlap: OverlapConfig | None = None) -> ShardResult:
    """Decode -> batched forward -> write one shard. Runs in a worker (or in-process for `serial`).
    overlap: how decoding feeds the encoder (default: the next batches are decoded while the encoder runs
    where that pays, overlap.py `for_workers`; `overlap.SERIAL`: in turn). Features are the same either way
    (tests/test_overlap.py)."""
    from mer_pipe.cache.shard import basic_provenance, write_shard

    t_start = time.perf_counter()
    ext = _loaded_extractor(task)
    _set_threads(task.torch_threads)
    kwargs = ext.decode_kwargs()
    ids = [it["id"] for it in task.items]
    arrays, reasons, media = _kept_rows(task, ids)  # a retry keeps the shard's other rows
    new_failures: dict[str, str] = {}
    forward_s = 0.0

    def fail(i: int, exc: MediaError) -> None:
        if task.strict:
            raise _strict_error(task, ids[i], exc) from None
        reasons[ids[i]] = new_failures[ids[i]] = str(exc)
        ident = _media_identity(task, i)
        if ident is not None:
            media[ids[i]] = ident

    order = _work_order(task, ids)
    cost = None if task.modality == "text" else (lambda x: media_cost(task.modality, x, kwargs))
    # undecided settings (a direct call; the driver's for_workers leaves `enabled` open on CPU): this process
    overlap = decide(for_workers(overlap or OverlapConfig(), ext.device, 1, task.torch_threads), task.modality)
    with Feed(order, lambda i: decode_item(task.modality, task.items[i], kwargs), ext.prepare,
              batch_size=task.batch_size, config=overlap, cost=cost) as feed:
        for batch in feed:  # bounded: at most `prefetch` decoded batches wait (256 video clips would not fit)
            for i, exc in batch.failed:
                fail(i, exc)
            t1 = time.perf_counter()
            if batch.idx:
                for i, out in zip(batch.idx, forward_batch(ext, batch, fail)):
                    arrays[i] = out
            forward_s += time.perf_counter() - t1

    prov = {**basic_provenance(), **ext.provenance(), "pid": os.getpid()}
    attrs = {**task.attrs, "provenance": prov}
    path = write_shard(task.path, ids, arrays, reasons, dtype=task.dtype, attrs=attrs, dim=ext.dim, media=media)
    return ShardResult(
        key=task.key, index=task.index, n=len(order), n_ok=len(order) - len(new_failures),
        failures=tuple((uid, new_failures[uid]) for uid in ids if uid in new_failures),
        bytes=Path(path).stat().st_size, dim=int(ext.dim), layout=_layout(arrays), decode_s=feed.decode_s,
        forward_s=forward_s, total_s=time.perf_counter() - t_start, provenance=prov, wait_s=feed.wait_s,
    )


def _finish_stage(plan: Plan, stage: Stage, summary: StageSummary, written: Sequence[str] = ()) -> None:
    """All shards exist: complete spec.json (dim, layout, failures) once, then point the slots at it.
    A set in which every utterance failed is not locked (the slot keeps what it served before).
    `written`: shards this run wrote, recorded as checked so the next run does not re-read them."""
    from mer_pipe.cache.integrity import mark_verified
    from mer_pipe.cache.shard import read_shard
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(plan.root)
    if written:
        mark_verified(store, stage.dataset, stage.extractor, stage.key, written)
    spec = store.read_spec(stage.dataset, stage.extractor, stage.key)
    if summary.computed_shards or not spec.get("complete"):
        # Count over every shard (some may come from an earlier, interrupted run); values are not read.
        failures: dict[str, int] = {}
        dims, layouts = set(), set()
        for i in range(stage.n_shards):
            sh = read_shard(store.shard_path(stage.dataset, stage.extractor, stage.key, i, stage.n_shards), values=False)
            dims.add(sh.dim)
            if sh.valid.any():
                layouts.add(sh.layout)
            for reason in sh.reasons.values():
                cat = reason_category(reason)
                failures[cat] = failures.get(cat, 0) + 1
        layout = "ragged" if len(layouts) > 1 else (layouts.pop() if layouts else "pooled")
        spec = {**spec, "dim": max(dims), "layout": layout, "failures": failures,
                "n_failed": sum(failures.values()), "complete": True}
        if summary.provenance:
            spec["provenance"] = summary.provenance
        store.write_spec(stage.dataset, stage.extractor, stage.key, spec)
    summary.dim = int(spec["dim"])
    summary.layout = spec.get("layout")
    summary.all_failures = dict(spec.get("failures", {}))
    summary.n_items = stage.n_items
    if summary.all_failed:
        return
    for slot in stage.slots:
        store.set_lock(stage.dataset, slot, {"extractor": stage.extractor, "key": stage.key,
                                             "dim": summary.dim, "layout": summary.layout})


class _NoLock:
    @staticmethod
    def release() -> None:
        pass


def _stderr(msg: str) -> None:
    print(f"mer-pipe: {msg}", file=sys.stderr, flush=True)


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
            lock = RunLock(store.feature_dir(s.dataset, s.extractor, s.key))

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
) -> RunSummary:
    """Make every slot's feature set complete and lock it; returns the run summary.

    Only missing (or corrupt) shards are computed; a second identical run starts no executor at all.
    Each feature set is held under its run lock from planning until its slots are locked: a concurrent
    run on the same cache waits, then computes only what is still missing. `retry_failed` re-extracts
    the utterances that shards recorded as failed (only those shards); `hash_media` adds the media
    file's sha256 to new failure records. `verify` checksums every present shard and fine-tuned checkpoint
    again (bit rot keeps size and mtime). `log` gets one-line notices (default: stderr). `overlap`: how each
    worker feeds its encoder (overlap.py; default: decoding ahead in a thread on CUDA, and on CPU for video
    when a core is idle; `overlap.SERIAL` turns it off; it never changes a feature). `show_plan`: gets the
    fine-tune DAG of the plan this run executes (finetune.format_plan), when a slot is fine-tuned."""
    from mer_pipe.common.devices import check_device
    from mer_pipe.common.errors import ConfigError

    executor = executor or ExecutorConfig()
    check_device(device, remote=executor.scheduler is not None)  # no GPU for --device cuda: now, before any work
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be >= 1")
    log = log or _stderr
    t0 = time.perf_counter()

    def planned() -> Plan:
        return make_plan(dataset, slots, cache_dir=cache_dir, shard_size=shard_size, retry_failed=retry_failed,
                         verify=verify)

    plan = planned()
    if show_plan is not None and plan.finetunes:  # the DAG and what is cached, from this one plan
        from .finetune import format_plan
        show_plan(format_plan(plan))
    locks, stale = _claim_stages(plan, log)
    try:
        if stale:  # another run finished (some of) our work while we waited: look again
            plan = planned()
        _announce(plan, log)
        return _run_plan(plan, locks, executor=executor, device=device, strict=strict, batch_size=batch_size,
                         progress=progress, hash_media=hash_media, t0=t0, overlap=overlap or OverlapConfig())
    finally:
        for lock in locks.values():
            lock.release()


def _run_plan(plan: Plan, locks: dict[str, Any], *, executor: ExecutorConfig, device: str, strict: bool,
              batch_size: int | None, progress: bool, hash_media: bool, t0: float, overlap: OverlapConfig) -> RunSummary:
    """Submit the plan's tasks, finish (and unlock) each stage as its last shard lands."""
    from .finetune import assemble_crossfit, run_finetunes  # the fine-tune stages first (finetune.py)

    run_finetunes(plan, device=device, executor=executor, progress=progress)
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
    assemble_crossfit(plan, device=device)  # cross-fitted slots (finetune.py); nothing when there are none
    summary.seconds = time.perf_counter() - t0
    return summary


__all__ = ["extract_features", "run_shard", "ShardResult", "reason_category"]
