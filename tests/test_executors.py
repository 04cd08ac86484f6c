"""Executors agree: serial (the reference), a local dask process cluster, and a real dask scheduler with two
workers started as separate processes give bit-identical features."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.cache.loading import load_table
from mer_pipe.pipeline.executors import ExecutorConfig
from mer_pipe.pipeline.extract.run import extract_features
from mer_pipe.pipeline.extract.presets import resolve_slots

DATASET = "synth-meld"
# openSMILE needs no torch, so workers start in about a second; the slow test adds a tiny torch text encoder.
ONLY = "a"
OVERRIDES: list[str] = []  # set by `prepared`: one shared tiny checkpoint path, so keys match across caches
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    import torch

    from mer_pipe.pipeline.corpus.prepare import prepare
    from mer_pipe.pipeline.corpus.synth import synthesize

    torch.set_num_threads(1)  # the dask workers run one torch thread each; match them
    base = tmp_path_factory.mktemp("exec")
    synthesize("meld", base / "corpus", dialogues=4, faults=True)
    prepare("meld", base / "corpus", name=DATASET, cache_dir=base / "cache")
    (spec,) = resolve_slots("offline", only="t", overrides=["t.model=tiny:text"], cache_root=base / "cache")
    OVERRIDES[:] = [f"t.model={spec.config['model']}"]
    return base


def _fresh(prepared: Path, dest: Path) -> Path:
    (dest / DATASET).mkdir(parents=True)
    for name in ("manifest.jsonl", "dataset.json"):
        shutil.copy(prepared / "cache" / DATASET / name, dest / DATASET / name)
    return dest


def _run(prepared: Path, dest: Path, executor: ExecutorConfig, only: str = ONLY):
    cache = _fresh(prepared, dest)
    specs = resolve_slots("offline", only=only, overrides=OVERRIDES, cache_root=cache)
    summary = extract_features(DATASET, specs, cache_dir=cache, executor=executor, shard_size=8, progress=False)
    return cache, summary


def _tables(cache: Path, only: str = ONLY) -> dict:
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(cache)
    return {slot: load_table(store, DATASET, slot) for slot in only.split(",")}


def _pids(cache: Path) -> set[int]:
    from mer_pipe.cache.shard import read_shard

    return {read_shard(p, values=False).attrs["provenance"]["pid"] for p in (cache / DATASET).glob("*/*/shard-*.h5")}


def _assert_same(ref: dict, got: dict) -> None:
    for slot in ref:
        assert got[slot].key == ref[slot].key  # the executor never changes a key
        assert got[slot].ids == ref[slot].ids
        np.testing.assert_array_equal(got[slot].valid, ref[slot].valid)
        np.testing.assert_array_equal(got[slot].values, ref[slot].values)
        assert got[slot].reasons.keys() == ref[slot].reasons.keys()


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> dict:
    cache, _ = _run(prepared, tmp_path_factory.mktemp("serial"), ExecutorConfig("serial"), only="t,a")
    return _tables(cache, "t,a")


def test_local_dask_cluster_matches_serial(prepared, reference, tmp_path):
    cache, summary = _run(prepared, tmp_path, ExecutorConfig("dask", workers=2))
    assert "2 worker processes" in summary.executor and summary.submitted_shards == 4
    _assert_same({"a": reference["a"]}, _tables(cache))
    assert os.getpid() not in _pids(cache)  # shards were written by the worker processes


@pytest.mark.slow
def test_local_dask_cluster_matches_serial_for_torch_extractors(prepared, reference, tmp_path):
    # Each worker imports torch and pins it to one thread: the features must still be bit-identical.
    cache, summary = _run(prepared, tmp_path, ExecutorConfig("dask", workers=2), only="t,a")
    assert summary.submitted_shards == 8
    _assert_same(reference, _tables(cache, "t,a"))


def test_dask_scheduler_with_two_worker_processes_matches_serial(prepared, reference, scheduler, tmp_path):
    cache, summary = _run(prepared, tmp_path / "c", ExecutorConfig("dask", scheduler=scheduler))
    assert scheduler in summary.executor and summary.submitted_shards == 4
    _assert_same({"a": reference["a"]}, _tables(cache))
    pids = _pids(cache)
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    # and a second run over the same scheduler submits nothing
    specs = resolve_slots("offline", only=ONLY, overrides=OVERRIDES, cache_root=cache)
    again = extract_features(DATASET, specs, cache_dir=cache, executor=ExecutorConfig("dask", scheduler=scheduler),
                             progress=False)
    assert again.submitted_shards == 0


def test_unreachable_scheduler_is_a_clear_error():
    from mer_pipe.common.errors import ConfigError
    from mer_pipe.pipeline.executors import DaskExecutor

    with pytest.raises(ConfigError, match="tcp://127.0.0.1:9"):
        DaskExecutor(scheduler="tcp://127.0.0.1:9", connect_timeout="2s")
