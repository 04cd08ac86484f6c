"""`mer-pipe sweep`: grid expansion, runs on the extraction executors (serial, a real dask scheduler with two worker
processes), dev-only selection, resume after SIGKILL, and exit codes of bad options through the entry point.

The dataset is written straight into a cache (manifest, dataset.json, one locked pooled feature set per slot, via
the same writer `prepare pickle` uses), so no media and no encoder run: a fresh cache takes well under a second.
Slot `t` carries the label on train and dev but is noise on test; slot `a` carries it on train and test but only
faintly on dev (so a run on `a` still selects a trained epoch). A sweep over modalities t vs a therefore has a dev-best config (t) that is not the test-best (a).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import planted_dataset

from mer_pipe.common.errors import MerPipeError

DATASET = "sweep-synth"
CLASSES = ("neutral", "joy", "anger", "sadness")
BIN = Path(sys.executable).parent
MER_PIPE = BIN / "mer-pipe"
FAST = ["trainer.epochs=3", "trainer.patience=0", "trainer.lr=3e-3", "model.hidden=[32]"]
PLANTED = ["trainer.epochs=10", "trainer.patience=0", "trainer.lr=3e-3", "trainer.batch_size=16", "model.hidden=[32]"]
GRID_2x2 = ["trainer.lr=1e-3,3e-3", "model.dropout=0.1,0.3"]


def make_dataset(cache: Path, dialogues: int = 40, per_dialogue: int = 6, dim: int = 16, seed: int = 0) -> Path:
    """A prepared dataset with locked `t` and `a` features (see the module docstring) in `cache`."""
    def features(splits, onehot, noise):
        t = np.where((splits == "test")[:, None], noise(), 4.0 * onehot + noise())
        a = np.where((splits == "dev")[:, None], 0.7 * onehot + 1.5 * noise(), 4.0 * onehot + noise())
        return {"t": (t, "text"), "a": (a, "audio")}

    return planted_dataset(cache, DATASET, CLASSES, features, dialogues, per_dialogue, dim, seed)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    import torch

    torch.set_num_threads(1)
    return make_dataset(tmp_path / "cache")


def _sweep(cache: Path, out: Path, grid=GRID_2x2, seeds="0,1", **kw):
    from mer_pipe.pipeline import api

    kw.setdefault("executor", "serial")  # one torch thread per run by default, as a dask worker
    return api.sweep("mlp", DATASET, grid=grid, seeds=seeds, modalities=kw.pop("modalities", "t"),
                     sets=kw.pop("sets", FAST), device="cpu", cache_dir=cache, out=out, log=lambda s: None, **kw)


def _seed_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (sweep_dir / "configs").glob("*/seed-*/metrics.json"))


def _metrics(sweep_dir: Path) -> dict[tuple[str, int], dict]:
    """(config label, seed) -> that run's per-seed dev/test scalars and per-run history-free results."""
    state = json.loads((sweep_dir / "sweep.json").read_text())
    out = {}
    for c in state["configs"]:
        for t in c["tasks"]:
            met = json.loads((sweep_dir / t["dir"] / "metrics.json").read_text())
            out[(c["label"], t["seed"])] = {"per_seed": met["per_seed"], "runs": [
                {k: r[k] for k in ("seed", "best_epoch", "epochs_run", "dev", "test")} for r in met["runs"]]}
    return out


def test_2x2_grid_x_2_seeds_writes_8_run_dirs_and_a_sweep_record(cache, tmp_path):
    from mer_pipe.pipeline.experiments.runs import load_runs

    res = _sweep(cache, tmp_path / "sw")
    dirs = _seed_dirs(res.sweep_dir)
    assert len(dirs) == 8
    state = json.loads((res.sweep_dir / "sweep.json").read_text())
    assert state["status"] == "complete" and state["counts"] == {"reused": 0, "done": 8, "failed": 0, "pending": 0}
    assert state["definition"]["grid"] == [{"trainer.lr": [1e-3, 3e-3], "model.dropout": [0.1, 0.3]}]
    labels = [c["label"] for c in state["configs"]]
    assert labels == ["trainer.lr=0.001 model.dropout=0.1", "trainer.lr=0.001 model.dropout=0.3",
                      "trainer.lr=0.003 model.dropout=0.1", "trainer.lr=0.003 model.dropout=0.3"]
    for c in state["configs"]:  # each run dir is a normal one-seed run of exactly its grid point
        for t in c["tasks"]:
            met = json.loads((res.sweep_dir / t["dir"] / "metrics.json").read_text())
            assert met["complete"] and met["seeds"] == [t["seed"]] and met["select_on"] == "dev"
            cfg = (res.sweep_dir / t["dir"] / "config.yaml").read_text()
            assert f"lr: {c['values']['trainer.lr']}" in cfg and f"dropout: {c['values']['model.dropout']}" in cfg
    # `mer-pipe runs SWEEP` lists one row per config: mean over its two seeds
    rows = load_runs([res.sweep_dir])
    assert len(rows) == 4 and all(r.n_seeds == 2 for r in rows)
    table = {r["config"]: r for r in state["configs_table"]}
    for r in rows:
        cid = r.run.split("/")[-1].split("-")[0]
        assert r.dev_wf1 == pytest.approx(table[cid]["sel_weighted_f1"]["mean"])
    assert (res.sweep_dir / "sweep.md").read_text().count("NOT FOR SELECTION") == 1
    # and `mer-pipe runs compare` pairs two configs seed by seed (their predictions.csv hold both seeds)
    a, b = (res.sweep_dir / c["dir"] for c in state["configs"][:2])
    cmp = subprocess.run([str(MER_PIPE), "runs", "compare", str(a), str(b)], capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0 and "shared seeds 0,1" in cmp.stdout, cmp.stderr


def test_selection_uses_dev_only_even_when_test_prefers_another_config(cache, tmp_path):
    res = _sweep(cache, tmp_path / "sw", grid=["modalities=t,a"], seeds="0,1", modalities=None, sets=PLANTED)
    rows = {r["label"]: r for r in res.state["configs_table"]}
    t, a = rows["modalities=t"], rows["modalities=a"]
    # the planted data: t wins on dev, a wins on test
    assert t["sel_weighted_f1"]["mean"] > a["sel_weighted_f1"]["mean"] + 0.2
    assert a["test_weighted_f1"]["mean"] > t["test_weighted_f1"]["mean"] + 0.2
    chosen = res.selection["by_model"]["mlp"]
    assert res.selection["on"] == "dev" and chosen["label"] == "modalities=t"
    assert chosen["test"]["weighted_f1"] == t["test_weighted_f1"]  # test reported for the chosen config only
    text = (res.sweep_dir / "sweep.md").read_text()
    sel_part, test_part = text.split("NOT FOR SELECTION")
    assert "chosen for mlp: c00 (modalities=t)" in sel_part and "test W-F1" in test_part
    assert "* c00" in sel_part and "* c01" not in sel_part


def test_select_on_test_is_flagged_like_train(cache, tmp_path):
    from mer_pipe.pipeline.train.protocols import SELECT_ON_TEST_WARNING

    res = _sweep(cache, tmp_path / "sw", grid=["modalities=t,a"], seeds="0", modalities=None, select_on="test",
                 sets=PLANTED)
    assert res.selection["on"] == "test" and res.selection["by_model"]["mlp"]["label"] == "modalities=a"
    assert res.state["notes"] == [SELECT_ON_TEST_WARNING]
    assert (res.sweep_dir / "sweep.md").read_text().startswith(SELECT_ON_TEST_WARNING)
    for d in _seed_dirs(res.sweep_dir):  # every run dir carries the flag, exactly as `train --select-on test`
        assert SELECT_ON_TEST_WARNING in json.loads((d / "metrics.json").read_text())["notes"]
        assert SELECT_ON_TEST_WARNING in (d / "config.yaml").read_text()


def test_rerun_reuses_every_finished_run_and_new_grid_points_only_add(cache, tmp_path):
    first = _sweep(cache, tmp_path / "sw", grid=["trainer.lr=1e-3,3e-3"], seeds="0")
    stamps = {d: (d / "metrics.json").stat().st_mtime_ns for d in _seed_dirs(first.sweep_dir)}
    again = _sweep(cache, tmp_path / "sw", grid=["trainer.lr=1e-3,3e-3,1e-2"], seeds="0")
    assert again.state["counts"] == {"reused": 2, "done": 1, "failed": 0, "pending": 0}
    assert all((d / "metrics.json").stat().st_mtime_ns == s for d, s in stamps.items())
    agg = json.loads((first.sweep_dir / first.state["configs"][0]["dir"] / "metrics.json").read_text())
    assert agg["seeds"] == [0]
    more = _sweep(cache, tmp_path / "sw", grid=["trainer.lr=1e-3"], seeds="0,1")  # a seed added: only it runs
    assert more.state["counts"] == {"reused": 1, "done": 1, "failed": 0, "pending": 0}
    agg = json.loads((more.sweep_dir / more.state["configs"][0]["dir"] / "metrics.json").read_text())
    assert agg["seeds"] == [0, 1] and agg["aggregate"]["dev"]["weighted_f1"]["n"] == 2
    # new features for the slot (a different key) mean nothing can be reused
    from mer_pipe.cache.store import FeatureStore

    lock = FeatureStore(cache).read_lock(DATASET)
    make_dataset(cache, seed=1)
    assert FeatureStore(cache).read_lock(DATASET)["t"]["key"] != lock["t"]["key"]
    third = _sweep(cache, tmp_path / "sw", grid=["trainer.lr=1e-3"], seeds="0")
    assert third.state["counts"]["done"] == 1 and third.state["counts"]["reused"] == 0


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow  # ~35 s: two CLI processes that import torch, and runs long enough to be killed mid-sweep
def test_resume_after_sigkill_runs_only_the_missing_runs(cache, tmp_path):
    out = tmp_path / "sw"
    argv = [str(MER_PIPE), "sweep", "--model", "mlp", "--dataset", DATASET, "--modalities", "t", "--executor", "serial",
            "--threads", "1", "--grid", "trainer.lr=1e-3,2e-3,3e-3", "--seeds", "0,1", "--device", "cpu",
            "--cache-dir", str(cache), "--out", str(out), "--set", "trainer.epochs=40", "--set", "trainer.patience=0",
            "--set", "model.hidden=[64]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        _wait_for(lambda: len(_seed_dirs(out)) >= 2, 120, "two finished runs")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    finished = {d: (d / "metrics.json").stat().st_mtime_ns for d in _seed_dirs(out)}
    assert 2 <= len(finished) < 6
    state = json.loads((out / "sweep.json").read_text())
    assert state["status"] == "running"  # killed: nobody wrote a final state, and that is fine
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    state = json.loads((out / "sweep.json").read_text())
    assert state["counts"] == {"reused": len(finished), "done": 6 - len(finished), "failed": 0, "pending": 0}
    assert f"{len(finished)} reused, {6 - len(finished)} to run" in res.stdout
    assert all((d / "metrics.json").stat().st_mtime_ns == s for d, s in finished.items())
    assert len(_seed_dirs(out)) == 6


@pytest.mark.slow  # ~50 s on 2 cores: a scheduler and two worker processes that each import torch
def test_dask_scheduler_with_two_workers_gives_the_serial_metrics(cache, tmp_path, scheduler):
    serial = _sweep(cache, tmp_path / "serial")
    dask = _sweep(cache, tmp_path / "dask", executor="dask", scheduler=scheduler)
    assert scheduler in dask.state["executor"]
    assert _metrics(dask.sweep_dir) == _metrics(serial.sweep_dir)
    assert dask.selection["by_model"] == serial.selection["by_model"]
    tasks = [t for c in dask.state["configs"] for t in c["tasks"]]
    assert len(tasks) == 8 and os.getpid() not in {t["pid"] for t in tasks}  # trained in the worker processes
    assert 1 <= len({t["pid"] for t in tasks}) <= 2


@pytest.mark.parametrize("grid, needle", [
    (["model.hidden"], "--grid 'model.hidden': write KEY=V1,V2"),
    (["trainer.lr="], "empty value"),
    (["seeds=0,1"], "grid key 'seeds' is not sweepable"),
    (["model.nonexistent=1,2"], "unknown option(s) ['nonexistent']"),
    (["trainer.lr=1e-3,abc"], "grid point trainer.lr=abc"),
    (["trainer.optimizer=adam,sgd"], "grid point trainer.optimizer=sgd"),
])
def test_bad_grid_exits_2_with_one_line_before_any_run(cache, tmp_path, grid, needle):
    out = tmp_path / "sw"
    argv = [str(MER_PIPE), "sweep", "--model", "mlp", "--dataset", DATASET, "--cache-dir", str(cache), "--out", str(out),
            "--executor", "serial", *[a for g in grid for a in ("--grid", g)]]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("mer-pipe: error:") and needle in res.stderr, res.stderr
    assert not out.exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("kw, needle", [
    ({"executor": "threads"}, "--executor 'threads'"),
    ({"executor": "dask", "workers": 4, "threads": 2}, "oversubscribes"),
    ({"seeds": "0,x"}, "seeds"),
    ({"select_on": "train"}, "select_on"),
    ({"modalities": "t,v"}, "lock slot 'v'"),
])
def test_bad_options_are_refused_before_any_run(cache, tmp_path, kw, needle, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(MerPipeError) as exc:
        _sweep(cache, tmp_path / "sw", **kw)
    assert needle in str(exc.value)
    assert not (tmp_path / "sw").exists()


def test_sweep_yaml_with_grid_blocks_over_models_selects_per_model(cache, tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"dataset: {DATASET}\nmodalities: [t]\nseeds: [0]\nset: [trainer.epochs=2, trainer.patience=0]\n"
        "grid:\n  - {model: [mlp], model.hidden: [[32], [64]]}\n  - {model: [bigru], model.hidden: [16]}\n")
    from mer_pipe.pipeline import api

    res = api.sweep(config_file=spec, executor="serial", threads=1, device="cpu", cache_dir=cache, out=tmp_path / "sw",
                    log=lambda s: None)
    assert [c["label"] for c in res.state["configs"]] == ["model=mlp model.hidden=[32]", "model=mlp model.hidden=[64]",
                                                          "model=bigru model.hidden=16"]
    assert set(res.selection["by_model"]) == {"mlp", "bigru"}
    assert res.selection["by_model"]["bigru"]["config"] == "c02"
