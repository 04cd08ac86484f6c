"""Hostile input through the installed `mer-pipe` entry point: every row must exit 2 with one line naming the
bad thing and the fix, no traceback, before any expensive work. Plus the signals and full-disk paths."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_train import DATASET, build_synth_features

MER_PIPE = Path(sys.executable).parent / "mer-pipe"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")


def run(*args, cache=None, timeout=120):
    env = {**os.environ, "MER_PIPE_CACHE": str(cache)} if cache else dict(os.environ)
    return subprocess.run([str(MER_PIPE), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("mer-pipe: note:")]
    assert len(lines) == 1 and lines[0].startswith("mer-pipe: error: "), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _train(cache, *extra):
    return ["train", "--model", "ar-iigcn", "--dataset", DATASET, "--cache-dir", cache, "--modalities", "t", "--epochs", "1", *extra]


def _setups(tmp: Path, cache: Path) -> dict:
    """Files the table rows point at (built per test in tmp)."""
    (tmp / "afile").write_text("x")
    (tmp / "list.yaml").write_text("model: mlp\ndataset: x\ntrainer: [1, 2]\n")
    (tmp / "latin1.yaml").write_bytes("model: mlp\n# caf\xe9\n".encode("latin-1"))
    (tmp / "latin1.jsonl").write_bytes(b'{"id": "caf\xe9", "dialogue_id": "d", "index": 0}\n')
    corpus = tmp / "corpus"
    corpus.mkdir()
    (tmp / "secret.wav").write_bytes(b"RIFF")
    row = {"id": "u0", "dataset": "x", "dialogue_id": "d0", "index": 0, "speaker": "A", "speaker_idx": 0, "text": "hi",
           "video": None, "audio": "../secret.wav", "video_segment": None, "audio_segment": None, "start": None,
           "end": None, "split": "train", "label": "joy", "label_id": 0, "sentiment": None}
    (tmp / "outside.jsonl").write_text(json.dumps(row) + "\n")
    return {"tmp": tmp, "cache": cache}


# (argv template, words the one line must contain). {tmp} and {cache} are filled in per test.
CASES = [
    (_train("{cache}", "--set", "model.d=abc"), ["model.d", "'abc'", "integer"]),
    (_train("{cache}", "--set", "trainer.amp=maybe"), ["trainer.amp", "true or false"]),
    (_train("{cache}", "--set", "model.dropout=5"), ["model.dropout", "5"]),
    (_train("{cache}", "--set", "dropout=5"), ["--set dropout", "model.KEY=VALUE"]),
    (_train("{cache}", "--seeds", "-1"), ["seeds", "2**32-1"]),
    (_train("{cache}", "--seeds", "99999999999"), ["seeds", "2**32-1"]),
    (_train("{cache}", "--out", "{tmp}/afile"), ["--out", "is a file"]),
    (["train", "--config", "{tmp}/list.yaml", "--cache-dir", "{cache}"], ["trainer", "mapping"]),
    (["train", "--config", "{tmp}/latin1.yaml", "--cache-dir", "{cache}"], ["latin1.yaml", "UTF-8"]),
    (["features", "--dataset", DATASET, "--cache-dir", "{cache}", "--only", "a", "--scheduler", "foo://bar"],
     ["--scheduler", "foo://bar", "tcp://"]),
    (["features", "--dataset", DATASET, "--cache-dir", "{cache}", "--only", "a", "--scheduler", "127.0.0.1:8786"],
     ["--scheduler", "SCHEME://HOST:PORT"]),
    (["features", "--dataset", DATASET, "--cache-dir", "{cache}", "--workers", "0"], ["--workers", ">= 1"]),
    (["prepare", "manifest", "--manifest", "{tmp}/latin1.jsonl", "--root", "{tmp}", "--cache-dir", "{tmp}/c"],
     ["latin1.jsonl:1", "not UTF-8", "iconv"]),
    (["prepare", "manifest", "--manifest", "{tmp}/outside.jsonl", "--root", "{tmp}/corpus", "--cache-dir", "{tmp}/c"],
     ["'u0'", "../secret.wav", "outside --root", "--allow-outside-root"]),
    (["synth", "meld", "--out", "{tmp}/s", "--dialogues", "100000000"], ["--dialogues 100000000", "at most"]),
    # click's usage errors are one line too, naming the command whose --help lists the options
    (["features", "--dataset", DATASET, "--cache-dir", "{cache}", "--slot", "a=zzz"], ["--slot", "'mer-pipe features --help'"]),
    (_train("{cache}", "--slot", "t=zzz"), ["--slot t=zzz", "no lock slot 'zzz'", "lock has"]),
    (["features", "--dataset", DATASET, "--cache-dir", "{cache}", "--overlap", "maybe"], ["--overlap 'maybe'", "auto", "off"]),
    (["features", "--dataset", DATASET, "--cache-dir", "{cache}", "--decode-threads", "0"], ["--decode-threads 0", "1 or more"]),
    (["features", "--dataset", DATASET, "--cache-dir", "{cache}", "--batch-budget", "-1"], ["--batch-budget -1", "> 0"]),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_input_exits_2_with_one_line(tmp_path, cache, argv, words):
    vals = _setups(tmp_path, cache)
    res = run(*[a.format(**vals) for a in argv], timeout=180)
    assert_one_line(res, *words)
    assert not (tmp_path / "s").exists()  # synth refused before writing anything


def test_manifest_outside_root_is_accepted_when_asked(tmp_path, cache):
    _setups(tmp_path, cache)
    res = run("prepare", "manifest", "--manifest", tmp_path / "outside.jsonl", "--root", tmp_path / "corpus",
              "--cache-dir", tmp_path / "c", "--allow-outside-root")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "c" / "manifest" / "manifest.jsonl").read_text().splitlines()[0])["audio"] == "../secret.wav"


def test_lock_entry_missing_fields_is_one_line(tmp_path, cache):
    import shutil

    c = tmp_path / "c"
    shutil.copytree(cache / DATASET, c / DATASET)
    lock = json.loads((c / DATASET / "lock.json").read_text())
    del lock["t"]["key"]
    (c / DATASET / "lock.json").write_text(json.dumps(lock))
    res = run(*_train(c))
    assert_one_line(res, "lock.json", "'t'", "key", "mer-pipe features")


def test_non_local_scheduler_gets_a_security_note():
    from mer_pipe.pipeline.executors import check_scheduler_address

    assert check_scheduler_address("tcp://127.0.0.1:8786") is None
    assert check_scheduler_address("tls://10.0.0.5:8786") is None
    note = check_scheduler_address("tcp://10.0.0.5:8786")
    assert "pickle" in note and "tls://" in note


def test_workers_are_capped_with_a_message():
    from mer_pipe.pipeline.executors import cap_workers

    n, msg = cap_workers(1)
    assert n == 1 and msg is None
    n, msg = cap_workers(10_000)
    assert 1 <= n <= (os.cpu_count() or 1) and "--workers 10000 capped at" in msg


def _wait_for(proc, pattern: str, path: Path, timeout: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and pattern in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {path.read_text()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{pattern!r} never appeared in {path}")


def test_sigint_during_multi_seed_train_exits_130_and_keeps_finished_seeds(tmp_path, cache):
    """Ctrl-C through the real entry point: exit 130, one line saying what was kept; seed 0 stays on disk."""
    out, log = tmp_path / "run", tmp_path / "log"
    argv = ["train", "--model", "mlp", "--dataset", DATASET, "--cache-dir", cache, "--modalities", "t", "--seeds", "0,1,2",
            "--epochs", "40", "--set", "trainer.patience=0", "--out", out, "--no-progress"]
    with log.open("w") as fh:
        proc = subprocess.Popen([str(MER_PIPE), *map(str, argv)], stdout=fh, stderr=subprocess.STDOUT)
        _wait_for(proc, "seed 0:", log)  # printed when seed 0 ends; its files follow at once
        t0 = time.time()
        while not (out / "metrics.json").exists() and time.time() - t0 < 60:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 130, text
    assert "interrupted" in text and "kept seeds 0 in" in text and "--seeds 1,2" in text and "Traceback" not in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["seed"] for r in metrics["runs"]] == [0] and metrics["runs"][0]["test"]["weighted_f1"] > 0


def test_sigint_during_sweep_exits_130_keeping_finished_runs(tmp_path, cache):
    """Ctrl-C during a serial sweep: exit 130, one line with how many runs are kept and how to resume."""
    out, log = tmp_path / "sweep", tmp_path / "log"
    argv = ["sweep", "--model", "mlp", "--dataset", DATASET, "--cache-dir", cache, "--modalities", "t",
            "--grid", "trainer.lr=1e-3,5e-4", "--seeds", "0,1", "--executor", "serial",
            "--set", "trainer.epochs=40", "--set", "trainer.patience=0", "--out", out]
    with log.open("w") as fh:
        proc = subprocess.Popen([str(MER_PIPE), *map(str, argv)], stdout=fh, stderr=subprocess.STDOUT)
        t0 = time.time()
        while not list(out.glob("configs/*/seed-*/metrics.json")) and time.time() - t0 < 240 and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 130, text
    assert "sweep interrupted" in text and "rerun the same command to resume" in text and "Traceback" not in text
    state = json.loads((out / "sweep.json").read_text())
    done = [t for c in state["configs"] for t in c["tasks"] if t["state"] == "done"]
    assert 1 <= len(done) < 4 and state["status"] == "interrupted"


def test_sigint_during_features_exits_130_keeping_shards(fresh_cache, tmp_path):
    log = tmp_path / "log"
    from conftest import SYNTH_DATASET

    with log.open("w") as fh:
        proc = subprocess.Popen([str(MER_PIPE), "features", "--dataset", SYNTH_DATASET, "--cache-dir", str(fresh_cache),
                                 "--only", "v", "--executor", "serial", "--shard-size", "4", "--batch-size", "1"],
                                stdout=fh, stderr=subprocess.STDOUT)
        # interrupt once a shard is on disk
        t0 = time.time()
        while not list(fresh_cache.glob(f"{SYNTH_DATASET}/*/*/shard-*.h5")) and time.time() - t0 < 240 and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    text = log.read_text()
    if rc == 0:
        pytest.skip("the run finished before the signal landed")
    assert rc == 130, text
    assert "interrupted" in text and "rerun the same command" in text and "Traceback" not in text
    assert list(fresh_cache.glob(f"{SYNTH_DATASET}/*/*/shard-*.h5"))


def test_full_disk_while_writing_a_shard_is_one_line_and_keeps_earlier_shards(fresh_cache, monkeypatch, capsys):
    import errno

    from conftest import SYNTH_DATASET
    import h5py

    from mer_pipe.pipeline.cli import main

    real, calls = h5py.File, []

    def full_after_two(path, mode="r", *a, **kw):
        if "w" in mode:
            calls.append(path)
            if len(calls) > 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(h5py, "File", full_after_two)
    with pytest.raises(SystemExit) as exc:
        main(["features", "--dataset", SYNTH_DATASET, "--cache-dir", str(fresh_cache), "--only", "t", "--executor", "serial",
              "--shard-size", "8", "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.count("\n") == 1 and "no space left" in err.lower() and "Traceback" not in err
    shards = list(fresh_cache.glob(f"{SYNTH_DATASET}/*/*/shard-*.h5"))
    assert len(shards) == 2  # the two written before the disk filled are kept, nothing partial
    assert not [p for p in fresh_cache.rglob("*") if ".tmp" in p.name]


def test_full_disk_while_writing_the_manifest_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno

    from mer_pipe.pipeline.cli import main
    from mer_pipe.pipeline.corpus import manifest as manifest_mod
    from mer_pipe.pipeline.corpus.synth import synthesize

    synthesize("meld", tmp_path / "corpus", dialogues=3)
    rows, real_dumps = [], json.dumps

    def dumps_until_full(obj, **kw):
        rows.append(obj)
        if len(rows) > 5:  # the disk fills part-way through the manifest
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dumps(obj, **kw)

    monkeypatch.setattr(manifest_mod.json, "dumps", dumps_until_full)
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "meld", "--root", str(tmp_path / "corpus"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "no space left" in err.lower(), err
    leftovers = list((tmp_path / "c").rglob("manifest*")) if (tmp_path / "c").exists() else []
    assert leftovers == []  # no half manifest, no temp file
