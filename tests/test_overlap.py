"""Decode overlapped with the forward pass (pipeline/extract/overlap.py): features bit-identical to the serial
worker for every slot kind on CPU (fp32), batches formed the same way, errors and early exits handled."""
from __future__ import annotations

import pickle
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.common.errors import ConfigError, MediaError
from mer_pipe.pipeline.extract.overlap import SERIAL, Batch, Feed, OverlapConfig, _batches, _rows

from conftest import SYNTH_DATASET

# slot -> the offline preset's extractor: text-hf, opensmile, tiny swin (15 frames), tiny wav2vec2
SLOTS = ("t", "a", "v", "a_w2v")
CONFIGS = {
    "on": OverlapConfig(enabled=True),
    "auto": OverlapConfig(),  # here (one torch thread, a spare core): on for video, off for text and audio
    "threads2-prefetch3": OverlapConfig(decode_threads=2, prefetch=3),
    # budgets: 2 clips of 15 frames per batch; a few seconds of audio per batch
    "budget": OverlapConfig(budget=30.0),
    "budget-small": OverlapConfig(budget=1.0, decode_threads=2),
}


def _cache(prepared: Path, dest: Path) -> Path:
    src = prepared / "cache"
    shutil.copytree(src / "_weights", dest / "_weights")
    (dest / SYNTH_DATASET).mkdir(parents=True)
    for name in ("manifest.jsonl", "dataset.json"):
        shutil.copy(src / SYNTH_DATASET / name, dest / SYNTH_DATASET / name)
    return dest


def _features(cache: Path, slot: str, overlap: OverlapConfig) -> tuple[dict, list]:
    """(lock entry, [(ids, values, valid, reasons) per shard]) of one serial-executor run on CPU, fp32."""
    from mer_pipe.cache.shard import read_shard
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.pipeline.executors import ExecutorConfig
    from mer_pipe.pipeline.extract.presets import resolve_slots
    from mer_pipe.pipeline.extract.run import extract_features

    specs = resolve_slots("offline", only=slot, cache_root=cache)
    extract_features(SYNTH_DATASET, specs, cache_dir=cache, executor=ExecutorConfig("serial"), device="cpu",
                     batch_size=3, shard_size=12, progress=False, overlap=overlap)
    store = FeatureStore(cache)
    lock = store.read_lock(SYNTH_DATASET)[slot]
    shards = []
    for p in sorted(store.feature_dir(SYNTH_DATASET, lock["extractor"], lock["key"]).glob("shard-*.h5")):
        sh = read_shard(p)
        values = sh.values if hasattr(sh.values, "shape") else list(sh.values)
        shards.append((list(sh.ids), values, np.asarray(sh.valid), dict(sh.reasons)))
    return lock, shards


@pytest.fixture(scope="module")
def reference(prepared: Path, tmp_path_factory) -> dict:
    """Today's serial worker (overlap off), per slot."""
    return {slot: _features(_cache(prepared, tmp_path_factory.mktemp(f"ref-{slot}")), slot, SERIAL) for slot in SLOTS}


def _same(a, b) -> bool:
    if hasattr(a, "shape") and hasattr(b, "shape"):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True) and \
            a.tobytes() == b.tobytes()
    return len(a) == len(b) and all(_same(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("slot", SLOTS)
def test_bit_identical_to_serial(slot: str, name: str, reference: dict, prepared: Path, tmp_path: Path) -> None:
    lock, shards = _features(_cache(prepared, tmp_path / "c"), slot, CONFIGS[name])
    ref_lock, ref_shards = reference[slot]
    assert lock == ref_lock  # same key, dim, layout
    assert len(shards) == len(ref_shards) > 1
    for (ids, values, valid, reasons), (rids, rvalues, rvalid, rreasons) in zip(shards, ref_shards):
        assert ids == rids and reasons == rreasons and np.array_equal(valid, rvalid)
        assert _same(values, rvalues), f"slot {slot}: features differ from the serial worker with overlap {name}"
    if slot != "t":  # the planted faults (missing, truncated, audio-less clips) fail the same rows either way
        assert sum(len(s[3]) for s in shards) > 0


def _old_worker(cache: Path, slot: str, batch_size: int = 3, shard_size: int = 12) -> dict[str, np.ndarray]:
    """The worker loop as it was before overlap.py (decode a batch, then `extract` it, in turn; a batch that
    raises MediaError row by row), written out here as the reference: id -> feature."""
    from mer_pipe.extractors import build_extractor
    from mer_pipe.pipeline.extract.overlap import decode_item
    from mer_pipe.pipeline.extract.plan import make_plan
    from mer_pipe.pipeline.extract.presets import resolve_slots
    from mer_pipe.pipeline.extract.shardrun import _work_order

    specs = resolve_slots("offline", only=slot, cache_root=cache)
    plan = make_plan(SYNTH_DATASET, specs, cache_dir=cache, shard_size=shard_size)
    out: dict[str, np.ndarray] = {}
    for task in plan.tasks:
        ext = build_extractor(task.extractor, dict(task.config))
        ext.setup("cpu")
        kw = ext.decode_kwargs()
        ids = [it["id"] for it in task.items]
        order = _work_order(task, ids)
        for lo in range(0, len(order), batch_size):
            idx, inputs = [], []
            for i in order[lo:lo + batch_size]:
                try:
                    inputs.append(decode_item(task.modality, task.items[i], kw))
                    idx.append(i)
                except MediaError:
                    pass
            try:
                feats = ext.extract(inputs)
            except MediaError:
                feats = []
                for x in inputs:
                    try:
                        feats.append(ext.extract([x])[0])
                    except MediaError:
                        feats.append(None)
            out.update({ids[i]: f for i, f in zip(idx, feats) if f is not None})
    return out


@pytest.mark.parametrize("slot", SLOTS)
def test_same_as_the_old_worker_loop(slot: str, reference: dict, prepared: Path, tmp_path: Path) -> None:
    old = _old_worker(_cache(prepared, tmp_path / "c"), slot)
    new = {}
    for ids, values, valid, _ in reference[slot][1]:
        new.update({uid: np.asarray(values[k]) for k, uid in enumerate(ids) if valid[k]})
    assert sorted(old) == sorted(new) and old
    for uid in old:
        assert old[uid].tobytes() == new[uid].astype(old[uid].dtype).tobytes(), uid


def _decode_list(values: dict[int, object]):
    def decode(i: int):
        v = values[i]
        if isinstance(v, BaseException):
            raise v
        return v

    return decode


@pytest.mark.parametrize("threads", [1, 3])
def test_batches_same_with_and_without_overlap(threads: int) -> None:
    values = {i: np.zeros(i % 5 + 1) for i in range(23)}
    values[4] = MediaError("x.mp4: broken")
    values[11] = MediaError("y.mp4: broken")
    order = [3, 1, 2, 0, *range(4, 23)]
    for budget, cost in ((None, None), (6.0, len)):
        cfg = OverlapConfig(enabled=True, decode_threads=threads, budget=budget)
        got = {}
        for c in (cfg, OverlapConfig(enabled=False, budget=budget)):
            with Feed(order, _decode_list(values), lambda xs: ("prepared", len(xs)), batch_size=4, config=c,
                      cost=cost) as feed:
                got[c.enabled] = [(b.idx, [i for i, _ in b.failed], b.prepared) for b in feed]
        assert got[True] == got[False]
        rows = [i for idx, failed, _ in got[True] for i in idx + failed]
        assert sorted(rows) == sorted(order)
        if budget is None:  # today's batches: 4 consecutive rows of `order`, failed rows included
            assert [sorted(idx + failed) for idx, failed, _ in got[True]] == \
                [sorted(order[k:k + 4]) for k in range(0, len(order), 4)]
        else:
            for idx, _, _ in got[True]:
                assert len(idx) == 1 or sum(len(values[i]) for i in idx) <= budget


def test_producer_error_is_raised_in_the_caller() -> None:
    def decode(i: int):
        if i == 5:
            raise ValueError("boom at 5")
        return i

    with pytest.raises(ValueError, match="boom at 5"):
        with Feed(range(10), decode, list, batch_size=2) as feed:
            for _ in feed:
                pass


def test_early_exit_stops_the_producer() -> None:
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(MediaError, match="strict"):
        with Feed(range(1000), lambda i: np.zeros(10), list, batch_size=2,
                  config=OverlapConfig(decode_threads=2)) as feed:
            for b in feed:
                raise MediaError("strict: stop at the first batch")
    time.sleep(0.05)
    left = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("mer-pipe")]
    assert not left


def test_prepare_media_error_leaves_rows_to_the_encoder() -> None:
    def prepare(xs):
        raise MediaError("prepare refused the batch")

    with Feed(range(4), lambda i: i, prepare, batch_size=2) as feed:
        batches = list(feed)
    assert [b.prepared for b in batches] == [None, None] and [b.idx for b in batches] == [[0, 1], [2, 3]]


def test_decode_runs_while_the_encoder_works() -> None:
    """Sleep-bound decode and forward of equal cost: overlapped, the total is about half."""
    def run(cfg: OverlapConfig) -> float:
        t0 = time.perf_counter()
        with Feed(range(8), lambda i: time.sleep(0.03) or i, list, batch_size=2, config=cfg) as feed:
            for _ in feed:
                time.sleep(0.06)
        return time.perf_counter() - t0

    serial, overlapped = run(SERIAL), run(OverlapConfig())
    assert overlapped < 0.8 * serial, (serial, overlapped)


def test_config_checks_and_pickles() -> None:
    from mer_pipe.pipeline.extract.shardrun import run_shard

    for bad in ({"decode_threads": 0}, {"prefetch": 0}, {"budget": 0.0}):
        with pytest.raises(ConfigError):
            OverlapConfig(**bad)
    fn = pickle.loads(pickle.dumps(partial(run_shard, overlap=OverlapConfig(budget=8.0))))
    assert fn.keywords["overlap"].budget == 8.0


def test_rows_pool_keeps_order() -> None:
    got = [i for i, *_ in _rows(list(range(50))[::-1], lambda i: time.sleep(0.001 * (i % 3)) or i, 4)]
    assert got == list(range(50))[::-1]
    assert [len(b.idx) for b in _batches(iter([(0, "a", None, 0.0)]), 4, None, len)] == [1]
    assert isinstance(Batch(), Batch)


def test_pinned_copy_is_cpu_noop() -> None:
    """The CUDA path (pinned host memory, non-blocking copy) leaves CPU tensors alone."""
    import torch

    from mer_pipe.extractors.base import pin_for, to_device

    x = torch.arange(6.0)
    assert pin_for(x, "cpu") is x
    assert to_device(x, "cpu") is x
    if torch.cuda.is_available():  # exercised on a GPU machine only
        y = to_device(pin_for(x, "cuda"), "cuda")
        assert y.is_cuda and torch.equal(y.cpu(), x)


def test_cli_switches_reach_the_worker_and_keep_the_features(reference: dict, prepared: Path, tmp_path: Path) -> None:
    """`features --overlap on --decode-threads 2 --batch-budget 30` through the installed entry point: the same
    lock key and bit-identical shards as the serial worker."""
    import os
    import subprocess
    import sys

    from mer_pipe.cache.shard import read_shard
    from mer_pipe.cache.store import FeatureStore

    cache = _cache(prepared, tmp_path / "c")
    exe = Path(sys.executable).parent / "mer-pipe"
    res = subprocess.run([str(exe), "features", "-d", SYNTH_DATASET, "--only", "v", "--executor", "serial", "--device", "cpu",
                          "--batch-size", "3", "--shard-size", "12", "--no-progress", "--overlap", "on",
                          "--decode-threads", "2", "--batch-budget", "30", "--cache-dir", str(cache)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lock = FeatureStore(cache).read_lock(SYNTH_DATASET)["v"]
    ref_lock, ref_shards = reference["v"]
    assert lock["key"] == ref_lock["key"]
    paths = sorted(FeatureStore(cache).feature_dir(SYNTH_DATASET, lock["extractor"], lock["key"]).glob("shard-*.h5"))
    assert len(paths) == len(ref_shards)
    for p, (ids, values, valid, reasons) in zip(paths, ref_shards):
        sh = read_shard(p)
        assert list(sh.ids) == ids and _same(sh.values, values) and np.array_equal(np.asarray(sh.valid), valid)
