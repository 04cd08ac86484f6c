"""`--device cuda` on a machine without CUDA: one line, exit 2, before any work, for every command that takes
--device (features, train, sweep, evaluate, demo), through the installed entry point."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from mer_pipe.common.devices import check_device, resolve_device
from mer_pipe.common.errors import ConfigError

from conftest import SYNTH_DATASET
from test_faults import assert_one_line, run


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _commands(cache: Path, tmp: Path, device: str) -> dict[str, list]:
    common = ["--dataset", SYNTH_DATASET, "--cache-dir", cache, "--device", device]
    return {
        "features": ["features", *common, "--only", "t,v", "--executor", "dask"],
        "train": ["train", "--model", "ar-iigcn", *common, "--epochs", "1", "--out", tmp / "run"],
        "sweep": ["sweep", "--model", "ar-iigcn", *common, "--grid", "trainer.lr=1e-3,1e-4", "--out", tmp / "sweep"],
        "evaluate": ["evaluate", tmp / "no-run-yet", "--device", device],
        "demo": ["demo", "--out", tmp / "demo", "--device", device],
    }


@pytest.mark.skipif("_cuda()", reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["features", "train", "sweep", "evaluate", "demo"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_gpu_is_one_line(command: str, device: str, fresh_cache: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    res = run(*_commands(fresh_cache, tmp_path, device)[command], cache=fresh_cache)
    assert_one_line(res, f"--device {device}", "no CUDA device", "--device cpu")
    assert time.perf_counter() - t0 < 60
    # before any work: no cluster, no features, no run dir, no demo corpus
    assert not (fresh_cache / SYNTH_DATASET / "lock.json").exists()
    assert not any((fresh_cache / SYNTH_DATASET).glob("*/*/shard-*.h5"))
    for made in ("run", "sweep", "demo"):
        assert not (tmp_path / made).exists(), made
    assert "dask" not in res.stderr.lower()


@pytest.mark.parametrize("command", ["features", "train", "evaluate"])
def test_unknown_device_name_is_one_line(command: str, fresh_cache: Path, tmp_path: Path) -> None:
    res = run(*_commands(fresh_cache, tmp_path, "gpu")[command], cache=fresh_cache)
    assert_one_line(res, "--device 'gpu'", "cuda:N")


def test_check_device_needs_no_torch_for_cpu_and_auto(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch would raise
    for d in (None, "auto", "cpu"):
        check_device(d)
    check_device("cuda", remote=True)  # a scheduler's workers decide; the name is fine
    with pytest.raises(ConfigError, match="cuda:N"):
        check_device("cuda:x", remote=True)


@pytest.mark.skipif("_cuda()", reason="this machine has CUDA")
def test_resolve_device_without_gpu() -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda:0")


def test_one_worker_per_gpu_and_decode_threads(monkeypatch) -> None:
    """The dask mapping on CUDA (no GPU needed): worker i of a local cluster takes GPU i mod visible GPUs; the
    local cluster has one worker per GPU; decode threads come from the worker's share of the cores."""
    import distributed
    import torch

    from mer_pipe.common.devices import local_gpus
    from mer_pipe.pipeline.executors import worker_device
    from mer_pipe.pipeline.extract.overlap import OverlapConfig, decide, for_workers

    class Worker:
        name = 3

    monkeypatch.setattr(distributed, "get_worker", lambda: Worker)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert worker_device("cuda") == "cuda:1"
    assert worker_device("cuda:0") == "cuda:0" and worker_device("cpu") == "cpu"
    Worker.name = "tcp://10.0.0.5:4321"  # a worker named otherwise: its CUDA_VISIBLE_DEVICES decides
    assert worker_device("cuda") == "cuda"
    assert (local_gpus("cpu"), local_gpus(None), local_gpus("cuda:1"), local_gpus("cuda")) == (0, 0, 1, 2)
    assert for_workers(OverlapConfig(), "cuda", workers=2, cores=16).decode_threads == 7
    assert for_workers(OverlapConfig(), "cuda", workers=1, cores=64).decode_threads == 8
    assert for_workers(OverlapConfig(), "cpu", workers=1, cores=16).decode_threads == 1
    assert for_workers(OverlapConfig(decode_threads=3), "cuda", workers=1).decode_threads == 3
    # on by default on CUDA; on CPU only when the workers' torch threads leave a core idle
    on = {(dev, w, t, c): for_workers(OverlapConfig(), dev, workers=w, torch_threads=t, cores=c).enabled
          for dev, w, t, c in [("cuda", 4, 4, 16), ("cpu", 1, 1, 2), ("cpu", 2, 1, 2), ("cpu", 1, 2, 2), ("cpu", 1, 2, 4)]}
    assert list(on.values()) == [True, None, False, False, None]  # None: on for video only (`decide`)
    undecided = for_workers(OverlapConfig(), "cpu", workers=1, torch_threads=1, cores=2)
    assert [decide(undecided, m).enabled for m in ("video", "audio", "text")] == [True, False, False]
    assert decide(for_workers(OverlapConfig(), "cuda", workers=1), "audio").enabled is True
    assert for_workers(OverlapConfig(enabled=False), "cuda", workers=1).enabled is False
