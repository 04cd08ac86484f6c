"""Concurrent runs on one cache, with real `mer-pipe` processes: two identical feature runs compute each
shard once, a killed run's lock is taken over, gc keeps what a live run holds and never leaves the cache
through a symlink, concurrent `prepare` runs do not collide on temp files."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mer_pipe.cache import maintenance
from mer_pipe.cache.runlock import RunLock, holder
from mer_pipe.cache.shard import read_shard
from mer_pipe.cache.store import SHARD_RE, FeatureStore

DATASET = "synth-meld"
MER_PIPE = str(Path(sys.executable).parent / "mer-pipe")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _features(cache: Path, only: str, log: Path) -> subprocess.Popen:
    argv = [MER_PIPE, "features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial",
            "--only", only, "--shard-size", "1", "--batch-size", "1", "--no-progress"]
    out = open(log, "w")
    err = open(log.with_suffix(".err"), "w")
    return subprocess.Popen(argv, stdout=out, stderr=err, env=ENV)


def _wait_for(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = 300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (rc={proc.poll() if proc else None})")


def _shards(cache: Path, extractor: str) -> list[Path]:
    return sorted(p for p in (cache / DATASET / extractor).glob("*/*") if SHARD_RE.match(p.name))


def _written(log: Path) -> int:
    m = re.search(r"(\d+) shards written", log.read_text())
    assert m, log.read_text()
    return int(m.group(1))


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    err = log.with_suffix(".err").read_text()
    assert proc.returncode == 0, f"{log}: rc={proc.returncode}\n{err[-3000:]}"
    return err


# ---- the run lock itself ------------------------------------------------------------------------
def test_run_lock_excludes_records_owner_and_is_released(tmp_path):
    fdir = tmp_path / "ds" / "enc" / "k"
    a = RunLock(fdir)
    got = a.acquire()
    assert fdir.is_dir() and got.took_over is None and got.replan  # the folder was made: look again
    rec = json.loads(a.path.read_text())
    assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["started"]
    b = RunLock(fdir)
    assert not b.try_acquire()  # flock is per open file: a second holder in this process is refused too
    assert holder(fdir) == (True, a.owner())
    a.release()
    assert a.path.read_text() == ""  # record cleared, file kept (deleting it would break exclusion)
    assert holder(fdir) == (False, None)
    assert b.try_acquire()
    b.release()


def test_run_lock_waiter_sees_the_owner_and_replans(tmp_path):
    import threading

    fdir = tmp_path / "set"
    first = RunLock(fdir)
    first.acquire()
    seen = []
    result = {}

    def second() -> None:
        result["got"] = RunLock(fdir).acquire(on_wait=seen.append, poll_s=0.02)

    t = threading.Thread(target=second)
    t.start()
    _wait_for(lambda: seen, "the waiter to report")
    assert seen[0].pid == os.getpid()
    first.release()
    t.join(10)
    assert result["got"].replan and result["got"].waited_for.pid == os.getpid()


# ---- two real feature runs ------------------------------------------------------------------------
@pytest.mark.slow  # two `mer-pipe features` processes (~20-40 s on 2 loaded cores)
def test_two_identical_feature_runs_compute_each_shard_once(fresh_cache, tmp_path):
    cache = fresh_cache
    a_log, b_log = tmp_path / "a.out", tmp_path / "b.out"
    a = _features(cache, "v", a_log)
    _wait_for(lambda: _shards(cache, "swin"), "run A's first shard", a)
    os.kill(a.pid, signal.SIGSTOP)  # A holds the feature set's run lock and is frozen mid-run
    try:
        b = _features(cache, "v", b_log)
        _wait_for(lambda: "waiting for pid" in b_log.with_suffix(".err").read_text(), "run B to wait", b)
        assert f"pid {a.pid}" in b_log.with_suffix(".err").read_text()
    finally:
        os.kill(a.pid, signal.SIGCONT)
    _finish(a, a_log)
    _finish(b, b_log)
    shards = _shards(cache, "swin")
    n = len(shards)
    assert _written(a_log) + _written(b_log) == n, "a shard was computed twice (or not at all)"
    assert _written(b_log) == 0 and "everything was cached" in b_log.read_text()
    assert {read_shard(p, values=False).attrs["provenance"]["pid"] for p in shards} == {a.pid}
    assert FeatureStore(cache).read_lock(DATASET)["v"]["key"] == shards[0].parent.name
    assert holder(shards[0].parent) == (False, None)  # both runs released it


@pytest.mark.slow
def test_killed_runs_lock_is_taken_over_saying_so(fresh_cache, tmp_path):
    cache = fresh_cache
    a_log, b_log = tmp_path / "a.out", tmp_path / "b.out"
    a = _features(cache, "v", a_log)
    first = _wait_for(lambda: _shards(cache, "swin"), "run A's first shard", a)
    os.kill(a.pid, signal.SIGKILL)
    a.wait(30)
    fdir = first[0].parent
    assert json.loads((fdir / ".run.lock").read_text())["pid"] == a.pid  # its record stays behind
    assert holder(fdir) == (False, None)  # but the kernel dropped its lock
    done = len(_shards(cache, "swin"))
    b = _features(cache, "v", b_log)
    err = _finish(b, b_log)
    assert "taking over the run lock" in err and f"pid {a.pid}" in err
    assert _written(b_log) == len(_shards(cache, "swin")) - done  # A's finished shards were kept


@pytest.mark.slow
def test_gc_during_a_slow_run_keeps_what_it_planned_and_writes(fresh_cache, tmp_path):
    cache = fresh_cache
    log = tmp_path / "a.out"
    run = _features(cache, "v,a_w2v", log)  # serial: every v shard, then every a_w2v shard
    _wait_for(lambda: _shards(cache, "swin"), "the first v shard", run)
    os.kill(run.pid, signal.SIGSTOP)
    try:
        planned = list((cache / DATASET / "wav2vec2").iterdir())
        assert len(planned) == 1 and not _shards(cache, "wav2vec2")  # planned, nothing written yet
        gc = subprocess.run([MER_PIPE, "cache", "gc", "--cache-dir", str(cache), "--yes", "--grace", "0"],
                            capture_output=True, text=True, env=ENV, timeout=120)
        assert gc.returncode == 0, gc.stderr
        assert "nothing to collect" in gc.stdout, gc.stdout
        assert planned[0].is_dir() and (planned[0] / "spec.json").is_file() and _shards(cache, "swin")
    finally:
        os.kill(run.pid, signal.SIGCONT)
    _finish(run, log)
    assert set(FeatureStore(cache).read_lock(DATASET)) == {"v", "a_w2v"}
    # once the run is over, an unlocked set is collectable again (the run lock is what protected it)
    store = FeatureStore(cache)
    store.unset_lock(DATASET, "a_w2v")
    assert maintenance.gc(store, dry_run=False, grace_s=0) == planned


# ---- gc and symlinks ------------------------------------------------------------------------------
def _feature_set(fdir: Path) -> None:
    from mer_pipe.cache.shard import write_shard

    fdir.mkdir(parents=True)
    (fdir / "spec.json").write_text(json.dumps({"n_shards": 1}))
    write_shard(fdir / "shard-00000-of-00001.h5", ["u0"], [[1.0, 2.0]], {}, attrs={"key": fdir.name})


@pytest.mark.parametrize("where", ["dataset", "extractor", "key"])
def test_gc_never_follows_a_symlink_out_of_the_cache(tmp_path, where):
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    (cache / "ds").mkdir(parents=True)
    if where == "dataset":
        _feature_set(outside / "enc" / "k1")
        os.symlink(outside, cache / "ds2")
    elif where == "extractor":
        _feature_set(outside / "k1")
        os.symlink(outside, cache / "ds" / "enc")
    else:
        _feature_set(outside)
        (cache / "ds" / "enc").mkdir()
        os.symlink(outside, cache / "ds" / "enc" / "k1")
    stale = outside / "x.tmp-otherhost-1-abcd"
    stale.write_text("not ours")
    old = time.time() - 7200
    for p in [*outside.rglob("*"), outside]:
        os.utime(p, (old, old), follow_symlinks=False)
    before = sorted(p for p in outside.rglob("*"))
    store = FeatureStore(cache)
    store.mark()  # gc works only in a marked cache (tests/test_safe_cache.py)
    assert maintenance.gc(store, dry_run=False, grace_s=0) == []
    assert sorted(p for p in outside.rglob("*")) == before  # nothing outside the cache was touched


def test_gc_removes_an_unheld_set_but_keeps_a_held_one(tmp_path):
    store = FeatureStore(tmp_path / "cache")
    store.mark()
    held, free = store.feature_dir("ds", "enc", "0" * 15 + "1"), store.feature_dir("ds", "enc", "0" * 15 + "2")
    _feature_set(held)
    _feature_set(free)
    lock = RunLock(held)
    lock.acquire()
    try:
        assert maintenance.gc(store, dry_run=False, grace_s=0) == [free]
        assert held.is_dir() and not free.exists()
    finally:
        lock.release()
    assert maintenance.gc(store, dry_run=False, grace_s=0) == [held]


# ---- prepare --------------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_concurrent_prepare_runs_do_not_collide_and_clean_stale_temps(prepared, tmp_path):
    from mer_pipe.pipeline.corpus.manifest import load_dataset, manifest_digest

    cache = tmp_path / "cache"
    ddir = cache / DATASET
    ddir.mkdir(parents=True)
    # what a prepare killed mid-write (say, by a full disk) leaves behind on this host
    stale = ddir / f"manifest.jsonl.tmp-{socket.gethostname()}-{_dead_pid()}-deadbeef"
    stale.write_text('{"half": ')
    argv = [MER_PIPE, "prepare", "meld", "--root", str(prepared / "corpus"), "--name", DATASET,
            "--cache-dir", str(cache)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert not [p.name for p in ddir.iterdir() if ".tmp-" in p.name]  # no temp file left, the stale one gone
    info, utts = load_dataset(DATASET, cache)
    assert info["manifest_digest"] == manifest_digest(utts)
