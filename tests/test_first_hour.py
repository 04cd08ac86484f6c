"""A researcher's first hour, through the real CLI: the MELD-CSVs-only path end to end (prepare -> features with
no --only -> train with no --modalities), `evaluate` from another directory, and every error hint for a missing
dataset or missing features run exactly as printed."""
import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

MER_PIPE = Path(sys.executable).parent / "mer-pipe"
DIALOGUES = {"train": 14, "dev": 4, "test": 4}  # the first N dialogues of each real MELD split


def run(*args, cwd=None, cache=None):
    env = {k: v for k, v in os.environ.items() if k != "MER_PIPE_CACHE"}
    if cache is not None:
        env["MER_PIPE_CACHE"] = str(cache)
    return subprocess.run([str(MER_PIPE), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def ok(res):
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return res


@pytest.fixture(scope="module")
def meld_small(meld_csv, tmp_path_factory) -> Path:
    """The real MELD CSVs cut to their first few dialogues per split (same columns, quoting and bytes per row)."""
    out = tmp_path_factory.mktemp("meld-csv")
    for split, n in DIALOGUES.items():
        name = f"{split}_sent_emo.csv"
        with open(meld_csv / name, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            rows = list(csv.reader(fh))
        col = rows[0].index("Dialogue_ID")
        keep = sorted({int(r[col]) for r in rows[1:]})[:n]
        with open(out / name, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            csv.writer(fh).writerows([rows[0], *[r for r in rows[1:] if int(r[col]) in keep]])
    return out


def hint(stderr: str) -> list[str]:
    """The command quoted in backticks in a one-line error."""
    found = re.findall(r"`(mer-pipe [^`]+)`", stderr)
    assert found, stderr
    return shlex.split(found[0])[1:]


def test_text_only_meld_end_to_end(meld_small, tmp_path):
    cache, other = tmp_path / "cache", tmp_path / "elsewhere"
    other.mkdir()

    # train before prepare: the hint is the prepare command, with the corpus folder to fill in
    res = run("train", "--model", "mlp", "--dataset", "meld", cache=cache)
    assert res.returncode == 2
    cmd = hint(res.stderr)
    assert cmd[:2] == ["prepare", "meld"] and "CORPUS_DIR" in cmd
    ok(run(*[str(meld_small) if a == "CORPUS_DIR" else a for a in cmd], cache=cache))

    # prepared, no features: the hint is the features command; run it as printed
    res = run("train", "--model", "mlp", "--dataset", "meld", "--modalities", "t", cache=cache)
    assert res.returncode == 2
    cmd = hint(res.stderr)
    assert cmd[:1] == ["features"]
    ok(run(*cmd, "--executor", "serial", "--no-progress", cache=cache))

    # features with no --only on a text-only manifest: audio/video slots skipped, one line each, nothing locked
    res = ok(run("features", "--dataset", "meld", "--executor", "serial", "--no-progress", cache=cache))
    for slot in ("a", "v", "a_w2v"):
        assert f"skipped slot {slot} " in res.stdout
    assert set(json.loads((cache / "meld" / "lock.json").read_text())) == {"t"}

    # train with no --modalities: it says which it chose
    run_dir = tmp_path / "run"
    res = ok(run("train", "--model", "mlp", "--dataset", "meld", "--seeds", "0", "--epochs", "3", "--out", run_dir,
                 "--no-progress", cache=cache))
    assert "modalities: t (" in res.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["modalities"] == ["t"]

    # evaluate from another directory, with no cache given: the run dir knows its cache
    res = ok(run("evaluate", run_dir, cwd=other))
    assert "reproduced exactly" in res.stdout


def test_only_and_missing_media_slot_is_a_clear_error(meld_small, tmp_path):
    cache = tmp_path / "cache"
    ok(run("prepare", "meld", "--root", meld_small, cache=cache))
    res = run("features", "--dataset", "meld", "--only", "a", cache=cache)
    assert res.returncode == 2 and "no audio files" in res.stdout + res.stderr and "--only t" in res.stderr
    assert not (cache / "_weights").exists()  # refused before any checkpoint was built


def test_features_on_an_unprepared_dataset_builds_nothing(tmp_path):
    res = run("features", "--dataset", "nope", cache=tmp_path)
    assert res.returncode == 2 and "mer-pipe prepare" in res.stderr
    assert not (tmp_path / "_weights").exists()
