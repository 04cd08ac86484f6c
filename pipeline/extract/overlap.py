"""Decode overlapped with the forward pass, inside one worker (issue 21).

A shard task turns its rows into features in three steps: decode (media -> arrays, `extractors/media.py`),
prepare (the extractor's CPU preprocessing, `Extractor.prepare`) and forward (the encoder,
`Extractor.forward`). Done in turn, an accelerator idles while its worker decodes. Here a producer
thread decodes and prepares the next batches (with `decode_threads` > 1, the rows of a batch are decoded
by a small pool) and hands them to the encoder through a bounded queue of `prefetch` batches, so memory
stays bounded (a decoded batch of video clips is large). PyAV and decord release the GIL while they
decode, and torch releases it in its kernels, so threads overlap for real; processes would have to pickle
every decoded batch back to the process that owns the encoder (one per device: one CUDA context per GPU).

Features do not change: batches are formed exactly as the serial path forms them (the same rows, in the
same order, in the same batches), both paths go through `Feed` below, and `Extractor.extract(x)` is
`forward(prepare(x))`. `tests/test_overlap.py` checks bit-identity for every slot kind on CPU (fp32),
against the old worker loop too.

When it is on (`enabled=None`, the default; `for_workers` and `decide`): on CUDA always, as that is what
keeps the GPU busy (decode threads from the worker's share of the cores); on CPU for video only, and only
when the workers' torch threads leave a core idle (one worker with one torch thread on a 2-core machine:
bench/bench_overlap.py). On CPU the producer is one more busy thread: where every core already runs an
encoder thread (the serial executor's torch threads, one dask worker per core) it only competes, and
torch's OpenMP threads slow down badly when a core is taken from them. Video decoding (decord) releases
the GIL and runs in parallel; audio decoding (PyAV: a Python loop over AAC frames) mostly holds it and
measured slower overlapped on CPU; text has nothing to decode.

Batches are formed by a row count (`batch_size`, the default) or by a budget of media per batch
(`OverlapConfig.budget`: seconds of audio, or video frames; text keeps the row count): the batch takes
decoded rows in order while the budget holds, and at least one row. Batch composition never enters a
cache key; an extractor whose output depends on its batch mates (padding without a mask) must keep such
rows apart itself (wav2vec2 with group norm does).
"""
from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from mer_pipe.common.errors import ConfigError, MediaError
from mer_pipe.common.devices import may_use_cuda


@dataclass(frozen=True)
class OverlapConfig:
    """How a worker feeds its encoder. Never part of a cache key (features are identical either way).

    enabled: decode and prepare in a producer thread while the encoder runs (False: in turn, in the task's
    thread; the reference; None: on CUDA, and on CPU for video when a core is left idle: `for_workers`).
    decode_threads: threads decoding rows (1: the producer itself; None: 1 on CPU, where the worker's cores
    are the encoder's too, and on CUDA the worker's share of the cores less one, at most 8: `for_workers`).
    prefetch: prepared batches waiting for the encoder at most (with the batch being decoded and the one in
    the encoder, a worker holds prefetch + 2 batches instead of 1: mind --batch-size for long video).
    budget: seconds of audio / frames of video per batch instead of `batch_size` rows (None: rows)."""

    enabled: bool | None = None
    decode_threads: int | None = None
    prefetch: int = 1
    budget: float | None = None

    def __post_init__(self) -> None:  # messages name the `features` options that set the fields
        if self.decode_threads is not None and self.decode_threads < 1:
            raise ConfigError(f"--decode-threads {self.decode_threads}: give 1 or more threads per worker")
        if self.prefetch < 1:
            raise ConfigError(f"prefetch={self.prefetch} must be >= 1 (batches decoded ahead of the encoder)")
        if self.budget is not None and not 0 < self.budget < float("inf"):
            raise ConfigError(f"--batch-budget {self.budget}: give seconds of audio / frames of video per batch, > 0")

    @classmethod
    def from_options(cls, overlap: str | None, decode_threads: int | None, budget: float | None) -> "OverlapConfig":
        """From `features --overlap auto|on|off --decode-threads N --batch-budget X`."""
        modes = {"auto": None, "on": True, "off": False, None: None}
        if overlap not in modes:
            raise ConfigError(f"--overlap {overlap!r}: choose auto (on CUDA, and for video on CPU when a core is idle), "
                              "on or off")
        return cls(enabled=modes[overlap], decode_threads=decode_threads, budget=budget)


SERIAL = OverlapConfig(enabled=False)
MAX_DECODE_THREADS = 8


def for_workers(config: OverlapConfig, device: str, workers: int, torch_threads: int | None = None,
                cores: int | None = None) -> OverlapConfig:
    """`config` with `enabled` and `decode_threads` decided for `workers` worker processes of `torch_threads`
    torch threads each (None: torch's own count in this process) on this machine's `cores`; `enabled` may
    stay None (CPU with an idle core), which `decide` settles per task by modality."""
    cores = cores or os.cpu_count() or 1
    cuda = may_use_cuda(device)
    busy = max(1, workers) * (torch_threads or _torch_threads(cores))
    # None stays None on CPU with an idle core: `decide` turns it on for the modalities that decode in parallel
    enabled = config.enabled if config.enabled is not None else (True if cuda else (None if busy < cores else False))
    threads = config.decode_threads
    if threads is None:
        threads = max(1, min(MAX_DECODE_THREADS, cores // max(1, workers) - 1)) if cuda else 1
    return dataclasses.replace(config, enabled=enabled, decode_threads=threads)


PARALLEL_DECODE = ("video",)  # decoders that release the GIL (decord); PyAV's audio loop mostly holds it


def decide(config: OverlapConfig, modality: str) -> OverlapConfig:
    """A `for_workers` config for one task: undecided (CPU, an idle core) -> on for video, off otherwise."""
    if config.enabled is not None:
        return config
    return dataclasses.replace(config, enabled=modality in PARALLEL_DECODE)


def _torch_threads(cores: int) -> int:
    """The torch threads a worker in this process would use (torch is not imported for this)."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    try:
        return int(os.environ.get("OMP_NUM_THREADS", cores))
    except ValueError:
        return cores


@dataclass
class Batch:
    """One batch on its way to the encoder. idx: row indices whose input decoded (same order as inputs);
    failed: rows whose decoding raised; prepared: `Extractor.prepare(inputs)`, or None when that raised a
    MediaError (the caller then retries the rows one by one, as the serial path does)."""

    idx: list[int] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)
    failed: list[tuple[int, MediaError]] = field(default_factory=list)
    prepared: Any = None
    decode_s: float = 0.0  # decoding + preparing, in whichever thread did it


def decode_item(modality: str, item: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """One manifest row's extractor input: the text, the waveform or the frames (MediaError when it fails)."""
    if modality == "text":
        return item["text"]
    if item["path"] is None:
        raise MediaError(f"manifest row has no {modality} file (it was missing from the corpus when prepared)")
    from mer_pipe.extractors.media import load_audio, load_frames

    if modality == "audio":
        return load_audio(item["path"], segment=item["segment"], **kwargs)
    return load_frames(item["path"], segment=item["segment"], **kwargs)


def media_cost(modality: str, x: Any, kwargs: dict[str, Any]) -> float:
    """What a decoded input costs against `OverlapConfig.budget`: seconds of audio, frames of video."""
    if modality == "audio":
        return len(x) / float(kwargs.get("sample_rate", 16000))
    if modality == "video":
        return float(len(x))
    return 1.0


def forward_batch(ext: Any, batch: Batch, fail: Callable[[int, MediaError], None]) -> list[Any]:
    """The encoder on a prepared batch; when the batch raises MediaError (say, one clip too short for the
    model), each row again on its own, so a single bad input does not sink its batch mates."""
    if batch.prepared is not None:
        try:
            return ext.forward(batch.prepared)
        except MediaError:
            pass
    outs: list[Any] = []
    for i, x in zip(batch.idx, batch.inputs):
        try:
            outs.append(ext.extract([x])[0])
        except MediaError as exc:
            fail(i, exc)
            outs.append(None)
    return outs


def _rows(order: Sequence[int], decode: Callable[[int], Any], threads: int) -> Iterator[tuple[int, Any, Any, float]]:
    """(row, input or None, MediaError or None, seconds) for every row, in `order`; with threads > 1 a pool
    decodes a window of rows ahead (results still come back in order)."""

    def one(i: int) -> tuple[int, Any, Any, float]:
        t0 = time.perf_counter()
        try:
            return i, decode(i), None, time.perf_counter() - t0
        except MediaError as exc:
            return i, None, exc, time.perf_counter() - t0

    if threads <= 1:
        for i in order:
            yield one(i)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="mer-pipe-decode")
    try:
        todo = iter(order)
        window: deque = deque(pool.submit(one, i) for i in islice(todo, 2 * threads))
        while window:
            fut = window.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                window.append(pool.submit(one, nxt))
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _batches(rows: Iterator[tuple[int, Any, Any, float]], batch_size: int, budget: float | None,
             cost: Callable[[Any], float]) -> Iterator[Batch]:
    """Group decoded rows into batches: `batch_size` consecutive rows (failed rows count, as in the serial
    path), or, with a budget, rows while their cost fits (at least one decoded row per batch)."""
    b, spent = Batch(), 0.0
    for i, x, exc, dt in rows:
        if exc is not None:
            b.failed.append((i, exc))
        else:
            c = cost(x) if budget is not None else 0.0
            if budget is not None and b.idx and spent + c > budget:
                yield b
                b, spent = Batch(), 0.0
            b.idx.append(i)
            b.inputs.append(x)
            spent += c
        b.decode_s += dt
        if budget is None and len(b.idx) + len(b.failed) >= batch_size:
            yield b
            b, spent = Batch(), 0.0
    if b.idx or b.failed:
        yield b


class _End:
    pass


@dataclass
class _Raised:
    exc: BaseException


class Feed:
    """The batches of one task, decoded and prepared ahead of the encoder (or in turn when disabled).

        with Feed(order, decode, ext.prepare, batch_size=16, config=cfg, cost=cost) as feed:
            for batch in feed:
                outs = forward_batch(ext, batch, fail)

    `wait_s`: seconds the encoder's thread waited for a batch (large: decode-bound). An error in the
    producer is raised here, in the caller's thread; leaving the block early stops the producer."""

    def __init__(self, order: Sequence[int], decode: Callable[[int], Any], prepare: Callable[[list], Any], *,
                 batch_size: int, config: OverlapConfig = OverlapConfig(),
                 cost: Callable[[Any], float] | None = None) -> None:
        self._order, self._decode, self._prepare = list(order), decode, prepare
        self._batch_size, self._cfg = batch_size, config
        self._cost = cost or (lambda x: 1.0)
        self._budget = config.budget if cost is not None else None
        self._stop = threading.Event()
        self._q: queue.Queue = queue.Queue(maxsize=config.prefetch)
        self._thread: threading.Thread | None = None
        self.wait_s = 0.0
        self.decode_s = 0.0

    def _gen(self) -> Iterator[Batch]:
        rows = _rows(self._order, self._decode, self._cfg.decode_threads or 1)
        try:
            for b in _batches(rows, self._batch_size, self._budget, self._cost):
                t0 = time.perf_counter()
                try:
                    b.prepared = self._prepare(b.inputs) if b.inputs else None
                except MediaError:
                    b.prepared = None  # the encoder's side retries the rows one by one
                b.decode_s += time.perf_counter() - t0
                yield b
                if self._stop.is_set():
                    return
        finally:
            rows.close()

    def _produce(self) -> None:
        try:
            for b in self._gen():
                if not self._put(b):
                    return
            self._put(_End())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            self._put(_Raised(exc))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self) -> "Feed":
        if self._cfg.enabled is not False:  # None (undecided) runs it: callers decide with `for_workers`
            self._thread = threading.Thread(target=self._produce, name="mer-pipe-feed", daemon=True)
            self._thread.start()
        return self

    def __iter__(self) -> Iterator[Batch]:
        if self._thread is None:
            for b in self._gen():
                self.decode_s += b.decode_s
                yield b
            return
        while True:
            t0 = time.perf_counter()
            item = self._q.get()
            self.wait_s += time.perf_counter() - t0
            if isinstance(item, _End):
                return
            if isinstance(item, _Raised):
                raise item.exc
            self.decode_s += item.decode_s
            yield item

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            while True:  # unblock a producer waiting on a full queue, then wait for its current batch
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=60)
