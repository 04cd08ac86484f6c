"""The shard runner: one task -> one shard, in a worker process (or this one for `serial` and cross-fitting).

A task (`run_shard`) decodes the media of its utterances, runs the extractor in batches (decoding the
next batches while the encoder runs, where that pays: overlap.py) and writes one shard atomically. Media
failures become per-utterance rows with a reason (or, with `strict`, stop the run naming the utterance,
file and reason). A retry task extracts only `retry_ids` and keeps the other rows of `keep_from` (default:
the shard itself). The extractor is built once per worker process and reused (keyed by name, config, device)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mer_pipe.common.errors import CacheError, MediaError, ModelLoadError
from mer_pipe.common.training import pin_torch_threads

from mer_pipe.pipeline.executors import worker_device
from .overlap import Feed, OverlapConfig, decide, decode_item, for_workers, forward_batch, media_cost
from .progress import quiet_transformers
from .stages import ShardTask

# Per worker process: extractors already set up, keyed by (name, canonical config, device).
_LOADED: dict[tuple[str, str, str], Any] = {}


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
        quiet_transformers()
        ext = build_extractor(task.extractor, dict(task.config))
        ext.setup(device)
        _LOADED[ident] = ext
    return ext


def forget_extractor(task: ShardTask) -> None:
    """Drop `task`'s extractor from this process (cross-fitting loads one encoder per fold, in turn)."""
    from mer_pipe.cache.keys import canonical_json

    _LOADED.pop((task.extractor, canonical_json(task.config), worker_device(task.device)), None)


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

    source = task.keep_from or task.path
    old = read_shard(source, verify=True)
    if old.ids != ids:
        raise CacheError(f"shard {source} holds other utterances than the manifest slice it should; delete it "
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
    # one task per worker process at a time; importing torch for openSMILE alone would cost seconds per worker
    pin_torch_threads(task.torch_threads, once=True, if_loaded=True)
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

    prov = {**task.attrs.get("provenance", {}), **basic_provenance(), **ext.provenance(), "pid": os.getpid()}
    attrs = {**task.attrs, "provenance": prov}
    path = write_shard(task.path, ids, arrays, reasons, dtype=task.dtype, attrs=attrs, dim=ext.dim, media=media)
    return ShardResult(
        key=task.key, index=task.index, n=len(order), n_ok=len(order) - len(new_failures),
        failures=tuple((uid, new_failures[uid]) for uid in ids if uid in new_failures),
        bytes=Path(path).stat().st_size, dim=int(ext.dim), layout=_layout(arrays), decode_s=feed.decode_s,
        forward_s=forward_s, total_s=time.perf_counter() - t_start, provenance=prov, wait_s=feed.wait_s,
    )


__all__ = ["ShardResult", "forget_extractor", "run_shard"]
