"""Unreachable or missing extractor weights fail in the client, before any cluster or worker starts
(pipeline/extract/weights.py): one line, exit 2, no dask task dump, in seconds."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mer_pipe.common.errors import ModelLoadError
from mer_pipe.pipeline.extract.presets import SlotSpec, resolve_slots
from mer_pipe.pipeline.extract.weights import check_weights, hub_cached, local_problem

MER_PIPE = Path(sys.executable).parent / "mer-pipe"
DATASET = "ff-meld"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A prepared 3-dialogue synthetic MELD corpus (real clips) and an offline environment with an empty
    HF cache, so the outcome does not depend on this machine's network or cache."""
    tmp = tmp_path_factory.mktemp("fastfail")
    hf = tmp / "hf-cache"
    hf.mkdir()
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf), "MER_PIPE_CACHE": str(tmp / "cache")}
    for argv in (["synth", "meld", "--out", tmp / "corpus", "--dialogues", "3"],
                 ["prepare", "meld", "--root", tmp / "corpus", "--name", DATASET]):
        subprocess.run([str(MER_PIPE), *map(str, argv)], check=True, capture_output=True, env=e, timeout=120)
    (tmp / "empty").mkdir()
    (tmp / "noweights").mkdir()
    (tmp / "noweights" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return tmp, e


def features(env, *args):
    tmp, e = env
    t0 = time.perf_counter()
    res = subprocess.run([str(MER_PIPE), "features", "--dataset", DATASET, "--no-progress", *map(str, args)],
                         capture_output=True, text=True, env=e, timeout=120)
    return res, time.perf_counter() - t0


def assert_fast_one_line(res, elapsed, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("mer-pipe: note:")]
    assert len(lines) == 1 and lines[0].startswith("mer-pipe: error: "), res.stderr
    for noise in ("Traceback", "Task", "distributed", "Compute Failed"):
        assert noise not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert elapsed < 10, f"took {elapsed:.1f}s; the check must run before any cluster or worker starts"


@pytest.mark.parametrize("preset,executor", [("paper", "dask"), ("paper", "serial"), ("deepmsi", "dask")])
def test_hub_ids_not_cached_offline(env, preset, executor):
    res, elapsed = features(env, "--preset", preset, "--executor", executor)
    assert_fast_one_line(res, elapsed, "slot t (text-hf)", "slot a_w2v (wav2vec2)", "slot v (swin)",
                         "not in the local Hugging Face cache", "--set t.model=", "--set v.model=")
    assert "roberta-large" in res.stderr if preset == "paper" else "bert-base-uncased" in res.stderr


@pytest.mark.parametrize("value,reason", [
    ("/no/such/checkpoint", "no such path"),
    ("{tmp}/empty", "no config.json"),
    ("{tmp}/noweights", "no weight files"),
])
def test_bad_local_path(env, value, reason):
    value = value.format(tmp=env[0])
    res, elapsed = features(env, "--preset", "paper", "--only", "t", "--set", f"t.model={value}")
    assert_fast_one_line(res, elapsed, "slot t (text-hf)", repr(value), reason, "--set t.model=")


def test_only_the_bad_slot_is_named(env, tmp_path):
    """Slots whose weights resolve are not mentioned (the offline preset's tiny checkpoints are local)."""
    res, elapsed = features(env, "--preset", "offline", "--only", "t,v", "--set", "v.model=/no/such/swin")
    assert_fast_one_line(res, elapsed, "slot v (swin)", "/no/such/swin")
    assert "slot t" not in res.stderr


def _fake_hub_snapshot(hf: Path, repo: str) -> Path:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hf / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


def test_cached_hub_id_passes_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _fake_hub_snapshot(tmp_path, "org/cached-model")
    assert hub_cached("org/cached-model") and not hub_cached("org/other-model")
    check_weights([SlotSpec("t", "text-hf", {"model": "org/cached-model"})])
    with pytest.raises(ModelLoadError, match="org/other-model"):
        check_weights([SlotSpec("t", "text-hf", {"model": "org/other-model"})])


def test_offline_preset_passes(tmp_path):
    """The packaged MiniLM, openSMILE (no weights) and the tiny checkpoints all resolve."""
    check_weights(resolve_slots("offline", cache_root=tmp_path))


def test_local_problem_accepts_a_timm_checkpoint_file(tmp_path):
    f = tmp_path / "swin.pth"
    f.write_bytes(b"x")
    assert local_problem(str(f)) is None
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"architecture": "swin_base_patch4_window7_224"}))
    (tmp_path / "d" / "model.safetensors").write_bytes(b"x")
    assert local_problem(str(tmp_path / "d")) is None
