"""`mer-pipe features` and `mer-pipe cache ...` end to end on a synthetic corpus, including a SIGKILLed run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mer_pipe.cache.loading import load_table
from mer_pipe.pipeline.cli import main

DATASET = "synth-meld"
MER_PIPE = str(Path(sys.executable).parent / "mer-pipe")


def _ids(cache: Path) -> list[str]:
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    return [u.id for u in load_dataset(DATASET, cache)[1]]


def test_features_end_to_end_then_cache_commands(fresh_cache, capsys):
    from mer_pipe.cache.store import FeatureStore

    cache = fresh_cache
    main(["features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial", "--shard-size", "12",
          "--no-progress"])
    out = capsys.readouterr().out
    for slot, ext in (("t", "text-hf"), ("a", "opensmile"), ("v", "swin"), ("a_w2v", "wav2vec2")):
        assert f"\n{slot} " in "\n" + out and ext in out
    assert "no audio stream" in out and "failed" in out
    store = FeatureStore(cache)
    ids = _ids(cache)
    assert set(store.read_lock(DATASET)) == {"t", "a", "v", "a_w2v"}
    video = load_table(store, DATASET, "v")
    assert video.ids == ids and video.values.shape[:2] == (len(ids), 15)  # 15 Swin frames per utterance
    assert load_table(store, DATASET, "t").dim == 384  # the packaged all-MiniLM-L6-v2

    main(["features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial", "--no-progress"])
    assert "everything was cached" in capsys.readouterr().out

    main(["cache", "ls", "--cache-dir", str(cache)])
    listing = capsys.readouterr().out
    assert "a_w2v" in listing and "wav2vec2" in listing and "3/3" in listing
    main(["cache", "du", "--cache-dir", str(cache), "--dataset", DATASET])
    assert "(total)" in capsys.readouterr().out
    main(["cache", "gc", "--cache-dir", str(cache)])
    assert "nothing to collect" in capsys.readouterr().out

    ok = subprocess.run([MER_PIPE, "cache", "verify", "--cache-dir", str(cache)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok: 4 feature sets" in ok.stdout

    import h5py

    victim = sorted((cache / DATASET / "opensmile").glob("*/shard-00001-of-*.h5"))[0]
    with h5py.File(victim, "r+") as f:  # flip some feature values behind the checksum's back
        f["values"][0, :3] += 1.0
    bad = subprocess.run([MER_PIPE, "cache", "verify", "--cache-dir", str(cache)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "checksum" in bad.stdout and victim.name in bad.stdout


def test_strict_is_fatal_with_utterance_file_and_reason(fresh_cache, capsys):
    cache = fresh_cache
    with pytest.raises(SystemExit) as exit_:
        main(["features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial", "--only", "a_w2v",
              "--strict", "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "meld/train/dia0_utt0" in err and "dia0_utt0.mp4" in err and "no audio stream" in err


def test_bad_options_exit_2_with_the_fix(fresh_cache, capsys):
    cache = fresh_cache
    for argv, needle in (
        (["--preset", "huge"], "offline, paper"),
        (["--only", "t,zz"], "choose from"),
        (["--set", "t.model"], "SLOT.KEY=VALUE"),
        (["--executor", "mpi"], "serial, dask"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["features", "--dataset", DATASET, "--cache-dir", str(cache), "--no-progress", *argv])
        assert exit_.value.code == 2 and needle in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["features", "--dataset", "nope", "--cache-dir", str(cache), "--only", "t", "--executor", "serial"])
    assert "mer-pipe prepare" in capsys.readouterr().err


def test_sigkilled_run_leaves_no_partial_shard_and_rerun_completes(fresh_cache):
    from mer_pipe.cache.shard import read_shard
    from mer_pipe.cache.store import SHARD_RE, FeatureStore

    cache = fresh_cache
    ids = _ids(cache)
    argv = [MER_PIPE, "features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial",
            "--only", "v", "--shard-size", "1", "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    first = []
    while time.time() < deadline and proc.poll() is None and not first:
        first = list((cache / DATASET).glob("swin/*/shard-*.h5"))
        time.sleep(0.01)
    assert first, f"no shard appeared (rc={proc.poll()}): {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    (fdir,) = (cache / DATASET / "swin").iterdir()
    done = [p for p in fdir.iterdir() if SHARD_RE.match(p.name)]
    assert 1 <= len(done) < len(ids), "the run finished before it could be killed"
    for p in done:  # whatever has a shard name is complete and readable: shards appear by rename
        assert read_shard(p).attrs["checksum"] == read_shard(p).checksum()
    assert not FeatureStore(cache).read_lock(DATASET)  # an unfinished stage is never locked

    main(["features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial", "--only", "v",
          "--no-progress"])
    table = load_table(FeatureStore(cache), DATASET, "v")
    assert table.ids == ids and len(set(table.ids)) == len(ids)  # every utterance exactly once
    assert len([p for p in fdir.iterdir() if SHARD_RE.match(p.name)]) == len(ids)
