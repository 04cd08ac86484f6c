"""Feature runs that lose nothing and serve nothing corrupt: corrupt shards recomputed, failures retried,
media identity in failure records, exit code and warning on failures, hub snapshot identity, tiny-weights
permissions, stale temp files."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.cache import maintenance
from mer_pipe.cache.integrity import VERIFIED_FILE, sound_shards
from mer_pipe.cache.loading import load_table
from mer_pipe.cache.shard import read_shard, write_shard
from mer_pipe.cache.store import FeatureStore
from mer_pipe.common.errors import CorruptShard
from mer_pipe.common.files import file_identity, identity_changed, write_json_atomic
from mer_pipe.pipeline.cli import main
from mer_pipe.pipeline.executors import ExecutorConfig
from mer_pipe.pipeline.extract.presets import resolve_slots
from mer_pipe.pipeline.extract.run import extract_features

DATASET = "synth-meld"
SERIAL = ExecutorConfig("serial")
MER_PIPE = str(Path(sys.executable).parent / "mer-pipe")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def text_slots(cache: Path):
    return resolve_slots("offline", only="t", overrides=["t.model=tiny:text"], cache_root=cache)


def video_slots(cache: Path):
    return resolve_slots("offline", only="v", cache_root=cache)


def run(cache: Path, specs, **kw):
    notes: list[str] = []
    summary = extract_features(DATASET, specs, cache_dir=cache, executor=SERIAL, progress=False, log=notes.append, **kw)
    return summary, notes


def shards(cache: Path, extractor: str) -> list[Path]:
    return sorted((cache / DATASET / extractor).glob("*/shard-*.h5"))


def flip_byte_in_values(path: Path) -> None:
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        offset = f["values"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 5)
        b = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([b[0] ^ 0xFF]))


def own_corpus(prepared: Path, cache: Path, tmp_path: Path, root: Path | None = None) -> Path:
    """Point the fresh cache's dataset at a private copy of the corpus (tests may move its files)."""
    corpus = root or tmp_path / "corpus"
    if root is None:
        shutil.copytree(prepared / "corpus", corpus)
    info_path = cache / DATASET / "dataset.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "root": str(corpus)}))
    return corpus


# ---- corrupt shards ---------------------------------------------------------------------------------
@pytest.mark.slow  # one real `mer-pipe train` process (~15-30 s on 2 loaded cores)
def test_flipped_byte_is_refused_by_train_and_recomputed_by_features(fresh_cache, tmp_path, capsys):
    cache = fresh_cache
    run(cache, text_slots(cache), shard_size=8)
    victim = shards(cache, "text-hf")[1]
    flip_byte_in_values(victim)
    train = [MER_PIPE, "train", "--model", "mlp", "--dataset", DATASET, "--cache-dir", str(cache), "--modalities", "t",
             "--seeds", "0", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")]
    bad = subprocess.run(train, capture_output=True, text=True, env=ENV, timeout=600)
    assert bad.returncode == 2, bad.stderr
    lines = [ln for ln in bad.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert str(victim) in lines[0] and "checksum" in lines[0] and "re-extract" in lines[0]

    summary, notes = run(cache, text_slots(cache))
    assert summary.submitted_shards == 1 and summary.items == 8  # only the corrupt shard
    assert any(f"shard 1 of {len(shards(cache, 'text-hf'))}" in n and "checksum" in n for n in notes), notes
    assert "1 unusable shard(s) recomputed" in summary.format()
    read_shard(victim, verify=True)  # whole again
    code = main(["train", "--model", "mlp", "--dataset", DATASET, "--cache-dir", str(cache), "--modalities", "t",
                 "--seeds", "0", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run2")])
    assert not code and (tmp_path / "run2" / "metrics.json").is_file()


def test_unreadable_shard_is_recomputed_and_checks_are_remembered(fresh_cache):
    cache = fresh_cache
    run(cache, text_slots(cache), shard_size=8)
    files = shards(cache, "text-hf")
    fdir = files[0].parent
    record = json.loads((fdir / VERIFIED_FILE).read_text())
    for p in files:  # the shards this run wrote are recorded as checked: no re-read next time
        st = p.stat()
        assert record[p.name][:2] == [st.st_size, st.st_mtime_ns]
    files[2].write_bytes(files[2].read_bytes()[:100])  # truncated
    store = FeatureStore(cache)
    sound, corrupt = sound_shards(store, DATASET, "text-hf", fdir.name, len(files))
    assert set(corrupt) == {2} and sound == set(range(len(files))) - {2} and "truncated" in corrupt[2]
    with pytest.raises(CorruptShard, match=files[2].name):
        load_table(store, DATASET, "t")
    before = {p: p.stat().st_mtime_ns for p in files if p != files[2]}
    summary, notes = run(cache, text_slots(cache))
    assert summary.submitted_shards == 1 and any("unusable" in n for n in notes)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert len(load_table(store, DATASET, "t")) == 31


# ---- failures are not forever --------------------------------------------------------------------
def test_retry_failed_reextracts_only_failed_shards_and_verify_sees_changed_media(prepared, fresh_cache, tmp_path, capsys):
    cache = fresh_cache
    corpus = own_corpus(prepared, cache, tmp_path)
    clip = corpus / "train" / "train_splits" / "dia1_utt0.mp4"
    away = tmp_path / "away.mp4"
    clip.rename(away)  # a clip not yet copied when the corpus was half there
    summary, _ = run(cache, video_slots(cache), shard_size=8)
    store = FeatureStore(cache)
    table = load_table(store, DATASET, "v")
    uid = "meld/train/dia1_utt0"
    assert not table.valid[table.ids.index(uid)]
    files = shards(cache, "swin")
    with_failures = {p for p in files if not read_shard(p, values=False).valid.all()}
    holder = next(p for p in files if uid in read_shard(p, values=False).ids)
    rec = read_shard(holder, values=False).media[uid]
    assert rec == {"path": str(clip), "exists": False}
    assert "recorded in the cache" in summary.format() and "--retry-failed" in summary.format()

    clip.parent.joinpath(clip.name).write_bytes(away.read_bytes())  # the clip arrives
    with pytest.raises(SystemExit) as exit_:
        main(["cache", "verify", "--cache-dir", str(cache)])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert "media-changed" in out and holder.name in out and "--retry-failed" in err
    assert sum("media-changed" in ln for ln in out.splitlines()) == 1  # only the shard whose media changed

    untouched = {p: p.stat().st_mtime_ns for p in files if p not in with_failures}
    again, notes = run(cache, video_slots(cache), retry_failed=True)
    st = next(iter(again.stages.values()))
    assert st.retried_shards == len(with_failures) and again.submitted_shards == len(with_failures)
    assert again.items == table.n_failed  # every failed utterance, and nothing else, extracted again
    assert any("retrying" in n for n in notes)
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())  # only shards with failures rewritten
    table2 = load_table(store, DATASET, "v")
    i = table2.ids.index(uid)
    assert table2.valid[i] and np.abs(table2.values[i]).sum() > 0
    ok_before = table.valid.copy()
    np.testing.assert_array_equal(table2.values[ok_before], table.values[ok_before])  # kept rows unchanged
    assert table2.n_failed == table.n_failed - 1  # the planted faults still fail, recorded again
    assert not [p for p in maintenance.verify(store, DATASET) if p.kind == "media-changed"]
    # nothing left to retry but the planted faults: a second retry rewrites only their shards again
    third, _ = run(cache, video_slots(cache), retry_failed=True)
    assert third.submitted_shards == len({p for p in files if not read_shard(p, values=False).valid.all()})


def test_media_identity_with_content_hash(prepared, fresh_cache, tmp_path):
    cache = fresh_cache
    corpus = own_corpus(prepared, cache, tmp_path)
    run(cache, video_slots(cache), shard_size=64, hash_media=True)
    (path,) = shards(cache, "swin")
    media = read_shard(path, values=False).media
    truncated = media["meld/test/dia0_utt0"]
    assert truncated["exists"] and len(truncated["sha256"]) == 64
    # missing when prepared: the manifest row names no file, so there is no media identity to keep
    assert "meld/dev/dia0_utt8" not in media and "meld/dev/dia0_utt8" in read_shard(path, values=False).reasons
    assert truncated["path"] == str(corpus / "test" / "output_repeated_splits_test" / "dia0_utt0.mp4")
    assert not identity_changed(truncated)
    # same size, same mtime, other bytes: only the content hash notices
    f = Path(truncated["path"])
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert identity_changed(truncated)
    assert not identity_changed({k: v for k, v in truncated.items() if k != "sha256"})
    assert file_identity(f)["size"] == st.st_size


# ---- exit code and warning -------------------------------------------------------------------------
def test_features_warns_above_the_failure_share(fresh_cache, capsys):
    cache = fresh_cache
    main(["features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial", "--only", "v",
          "--no-progress"])
    out, err = capsys.readouterr()
    assert "mer-pipe: warning: slot v (swin): 2 of 31 utterances (6.5%) failed, more than 5%" in err
    assert "--retry-failed" in out
    assert "v" in FeatureStore(cache).read_lock(DATASET)


@pytest.mark.slow  # a real `mer-pipe features` process
def test_features_exits_2_when_every_utterance_of_a_slot_failed(prepared, fresh_cache, tmp_path):
    cache = fresh_cache
    (tmp_path / "empty").mkdir()
    own_corpus(prepared, cache, tmp_path, root=tmp_path / "empty")  # the corpus is not there at all
    argv = [MER_PIPE, "features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial",
            "--only", "v", "--no-progress"]
    res = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "slot v (swin): all 31 utterances failed" in last and "--retry-failed" in last
    assert "v" not in FeatureStore(cache).read_lock(DATASET)  # not locked, but the shards are kept
    assert shards(cache, "swin")


# ---- hub weights identity ---------------------------------------------------------------------------
def _snapshot(hub: Path, repo: str, commit: str, src: Path, *, ref: str = "main", noise: float = 0.0) -> None:
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(src, snap)
    if noise:
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(src)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise)
        model.save_pretrained(snap)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)


def test_hub_identity_is_the_commit_of_the_cached_snapshot(tmp_path, monkeypatch):
    from mer_pipe.extractors import build_extractor
    from mer_pipe.extractors.tiny import ensure_tiny_text

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))  # tests run with HF_HUB_OFFLINE=1: the local cache decides
    tiny = ensure_tiny_text(tmp_path / "tiny-text")
    a, b = "a" * 40, "b" * 40
    _snapshot(hub, "org/tiny-text", a, tiny)

    def ident(**cfg):
        return build_extractor("text-hf", {"model": "org/tiny-text", **cfg}).resolved_config()["weights"]

    assert ident() == {"hub": "org/tiny-text", "revision": "main", "commit": a}
    _snapshot(hub, "org/tiny-text", b, tiny, ref="v2")
    assert ident(revision="v2")["commit"] == b and ident()["commit"] == a
    assert ident(revision=a)["commit"] == a  # a commit hash is its own identity
    (hub / "models--org--tiny-text" / "refs" / "main").write_text(b)  # main moved to another snapshot
    assert ident()["commit"] == b
    assert ident(revision="nope")["commit"] is None  # unknown here; loading it fails with the usual message


def test_hub_identity_follows_the_hub_when_it_answers(tmp_path, monkeypatch):
    """An updated hub model (a new commit behind `main`) re-keys; a hub that cannot say falls back to the
    local snapshot. The hub is a local HTTP server speaking the model-info API."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import huggingface_hub.constants

    from mer_pipe.extractors import base

    served = {"sha": "c" * 40, "status": 200}

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"id": "org/tiny-text", "sha": served["sha"], "siblings": []}).encode()
            self.send_response(served["status"] if "/api/models/" in self.path else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(base, "_HUB_REACHABLE", None)
        monkeypatch.setattr(base, "_HUB_COMMITS", {})
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        assert base.weights_identity("org/tiny-text")["commit"] == "c" * 40
        served["sha"] = "d" * 40  # the model was updated on the hub
        base._HUB_COMMITS.clear()  # a new process
        assert base.weights_identity("org/tiny-text")["commit"] == "d" * 40
        served["status"] = 404  # gone or gated: the local snapshot decides
        base._HUB_COMMITS.clear()
        (tmp_path / "hub" / "models--org--tiny-text" / "snapshots" / ("e" * 40)).mkdir(parents=True)
        (tmp_path / "hub" / "models--org--tiny-text" / "refs").mkdir()
        (tmp_path / "hub" / "models--org--tiny-text" / "refs" / "main").write_text("e" * 40)
        assert base.weights_identity("org/tiny-text")["commit"] == "e" * 40
    finally:
        server.shutdown()


@pytest.mark.slow  # two real `mer-pipe features` processes loading a hub id from a fake local HF cache
def test_another_snapshot_of_a_hub_model_rekeys_and_is_what_gets_loaded(fresh_cache, tmp_path):
    from mer_pipe.extractors.tiny import ensure_tiny_text

    cache, hub = fresh_cache, tmp_path / "hub"
    tiny = ensure_tiny_text(tmp_path / "tiny-text")
    a, b = "1" * 40, "2" * 40
    _snapshot(hub, "org/tiny-text", a, tiny)
    argv = [MER_PIPE, "features", "--dataset", DATASET, "--cache-dir", str(cache), "--executor", "serial",
            "--only", "t", "--set", "t.model=org/tiny-text", "--no-progress"]
    env = {**ENV, "HF_HUB_CACHE": str(hub)}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    store = FeatureStore(cache)
    k1 = store.read_lock(DATASET)["t"]["key"]
    assert store.read_spec(DATASET, "text-hf", k1)["config"]["weights"]["commit"] == a
    _snapshot(hub, "org/tiny-text", b, tiny, noise=0.01)  # refs/main -> b, with other weights
    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr
    k2 = store.read_lock(DATASET)["t"]["key"]
    assert k2 != k1 and "everything was cached" not in second.stdout
    old = load_table(store, DATASET, "t").values
    store.set_lock(DATASET, "t", {"extractor": "text-hf", "key": k1, "dim": 32})
    assert not np.allclose(old, load_table(store, DATASET, "t").values)  # snapshot b was really loaded


# ---- files ---------------------------------------------------------------------------------------
def test_tiny_weights_folder_is_group_readable(tmp_path):
    from mer_pipe.extractors.tiny import ensure_tiny_text

    old = os.umask(0o022)
    try:
        target = ensure_tiny_text(tmp_path / "_weights" / "tiny-text")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700: a shared cache's group reads it
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in target.iterdir())


def test_next_write_removes_dead_writers_temp_files(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    host = socket.gethostname()
    dead = tmp_path / f"x.json.tmp-{host}-{p.pid}-deadbeef"
    live = tmp_path / f"x.json.tmp-{host}-{os.getppid()}-cafecafe"  # our parent is alive: may be writing
    other = tmp_path / "y.json.tmp-otherhost-1-abcdabcd"
    for f in (dead, live, other):
        f.write_text("{")
    write_json_atomic(tmp_path / "x.json", {"ok": 1})
    assert not dead.exists() and live.exists() and other.exists()
    assert json.loads((tmp_path / "x.json").read_text()) == {"ok": 1}


def test_shard_media_records_round_trip(tmp_path):
    path = tmp_path / "s.h5"
    rec = {"path": "/c/a.mp4", "exists": True, "size": 3, "mtime_ns": 7}
    write_shard(path, ["a", "b"], [None, np.ones(2, np.float32)], {"a": "no audio stream"}, media={"a": rec})
    sh = read_shard(path, verify=True)
    assert sh.media == {"a": rec} and sh.reasons == {"a": "no audio stream"}
