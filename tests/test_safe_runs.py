"""Issue 17, run-dir side, through the installed `mer-pipe`: tamper-evident run files, sweeps that share work
between two real processes, a full disk under `train --out` (a real tmpfs), and one-line refusals before any work.

Every row checks the exit code, one line on stderr, no traceback, and that nothing outside the command's own
output changed (run dirs are hashed before and after)."""
# ruff: noqa: F811  (the imported `cache` fixture is a parameter of the tests below, as pytest wants)
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_faults import MER_PIPE, assert_one_line, cache, run  # noqa: F401  (cache: test_faults' module-scoped fixture)
from conftest import mounted_tmpfs
from test_train import DATASET

from mer_pipe.pipeline.corpus.hints import check_dataset_name, prepare_command

TRAIN = ["train", "--model", "mlp", "--dataset", DATASET, "--modalities", "t", "--epochs", "1", "--no-progress"]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (what 'nothing touched' compares)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def assert_one_line_exit(res, code, *needles):
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mer-pipe: error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---- 4. one-line refusals before any work ---------------------------------------------------------------------

LONG = "a" * 300
REFUSALS = [
    (["--set", "trainer.lr=inf"], ["trainer.lr=inf", "finite"]),
    (["--set", "trainer.lr=nan"], ["trainer.lr=nan", "finite"]),
    (["--set", "trainer.lr=1e30"], ["trainer.lr", "(0, 10]"]),
    (["--set", "trainer.lr=-1"], ["trainer.lr", "must be > 0"]),
    (["--set", "trainer.weight_decay=inf"], ["trainer.weight_decay", "finite"]),
    (["--set", "trainer.grad_clip=nan"], ["trainer.grad_clip", "finite"]),
    (["--seeds", "1,,2"], ["--seeds '1,,2'", "empty item", "--seeds 0,1,2"]),
    (["--seeds", "1,2,"], ["--seeds '1,2,'", "empty item"]),
    (["--modalities", "t,,a"], ["--modalities 't,,a'", "empty item"]),
]


@pytest.mark.parametrize("extra, words", REFUSALS, ids=[" ".join(e) for e, _ in REFUSALS])
def test_train_refuses_bad_values_in_one_line_before_any_work(tmp_path, cache, extra, words):
    before = tree_digest(cache)
    res = run(*TRAIN, "--cache-dir", cache, "--out", tmp_path / "run", *extra)
    assert_one_line(res, *words)
    assert not (tmp_path / "run").exists()  # refused before the run dir was made
    assert tree_digest(cache) == before


def test_sweep_refuses_an_empty_seed(tmp_path, cache):
    res = run("sweep", "-m", "mlp", "-d", DATASET, "--cache-dir", cache, "--seeds", "1,,2", "--grid", "trainer.lr=1e-3,3e-3",
              "--executor", "serial", "--out", tmp_path / "sw")
    assert_one_line(res, "--seeds '1,,2'", "empty item")
    assert not (tmp_path / "sw").exists()


def test_sweep_refuses_an_infinite_learning_rate_in_the_grid(tmp_path, cache):
    res = run("sweep", "-m", "mlp", "-d", DATASET, "--cache-dir", cache, "--grid", "trainer.lr=1e-3,inf",
              "--executor", "serial", "--out", tmp_path / "sw")
    assert_one_line(res, "trainer.lr", "finite")
    assert not (tmp_path / "sw").exists()


def test_a_300_character_name_is_refused_before_any_work(tmp_path, cache):
    corpus = cache.parent / "corpus"  # the synthetic MELD corpus the cache was prepared from
    for recipe in ("meld", "pickle"):
        res = run("prepare", recipe, "--root", corpus, "--name", LONG, "--cache-dir", tmp_path / "c")
        assert_one_line(res, "--name", "300 characters", "at most 100")
        assert LONG not in res.stderr  # the line stays readable
        assert not (tmp_path / "c").exists()
    res = run(*TRAIN, "--cache-dir", cache, "--dataset", LONG, "--out", tmp_path / "run")
    assert_one_line(res, "--dataset", "300 characters")
    assert not (tmp_path / "run").exists()


def test_a_path_as_dataset_gets_no_hint_that_is_itself_refused(tmp_path, cache):
    res = run(*TRAIN, "--cache-dir", cache, "--dataset", "../meld", "--out", tmp_path / "run")
    assert_one_line(res, "--dataset '../meld'", "not a path", "cache ls")
    assert "--name ../meld" not in res.stderr
    # the hint for a path names a placeholder, and every name a hint quotes is one prepare accepts
    assert "--name NAME" in prepare_command("../meld") and "--name NAME" in prepare_command(LONG)
    check_dataset_name(prepare_command("synth-x").split("--name ")[1].split()[0])
    ls = run("cache", "ls", "--cache-dir", cache)  # the command the line points at works as written
    assert ls.returncode == 0 and DATASET in ls.stdout, ls.stderr


def test_divergence_mid_run_is_a_failed_run_with_its_reason(tmp_path, cache):
    """A real NaN: a contrastive temperature that underflows makes the loss non-finite in the first epoch."""
    res = run("train", "-m", "jv-icl", "-d", DATASET, "--cache-dir", cache, "--modalities", "t", "--epochs", "2",
              "--seeds", "0", "--no-progress", "--set", "model.d=64", "--set", "model.heads=4",
              "--set", "model.icl_tau=1e-40", "--out", tmp_path / "run", timeout=300)
    assert_one_line(res, "training diverged", "non-finite loss", "trainer.lr", "no seed had finished")
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---- 1. tamper-evident results ----------------------------------------------------------------------------------

def _train_run(cache: Path, out: Path, seeds: str) -> Path:
    res = subprocess.run([str(MER_PIPE), *TRAIN, "--cache-dir", str(cache), "--seeds", seeds, "--out", str(out)],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def finished_run(cache, tmp_path_factory) -> Path:
    return _train_run(cache, tmp_path_factory.mktemp("safe-runs") / "run", "0,1")


@pytest.fixture(scope="module")
def one_seed_run(cache, tmp_path_factory) -> Path:
    """The reference for the full-disk rows: the same command as theirs, on a disk with room."""
    return _train_run(cache, tmp_path_factory.mktemp("safe-runs") / "run1", "0")


def _edit_metrics(d: Path) -> None:
    met = json.loads((d / "metrics.json").read_text())
    met["aggregate"]["test"]["weighted_f1"]["mean"] = 0.99
    (d / "metrics.json").write_text(json.dumps(met, indent=2))


def _edit_predictions(d: Path) -> None:
    rows = list(csv.reader((d / "predictions.csv").read_text().splitlines()))
    col = rows[0].index("predicted")
    rows[3][col] = "joy" if rows[3][col] != "joy" else "anger"
    (d / "predictions.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")


def _flip_checkpoint(d: Path) -> None:
    data = bytearray((d / "checkpoint.pt").read_bytes())
    data[len(data) // 2:len(data) // 2 + 256] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 256])
    (d / "checkpoint.pt").write_bytes(bytes(data))


TAMPER = [
    (_edit_metrics, ["metrics.json", "aggregate.test.weighted_f1.mean", "0.99"], "metrics.json"),
    (_edit_predictions, ["predictions.csv", "row 3", "column predicted"], "predictions.csv"),
    (_flip_checkpoint, ["checkpoint.pt", "sha256", "corrupted"], "checkpoint.pt"),
]


def test_a_pristine_run_evaluates_and_lists_clean(finished_run):
    before = tree_digest(finished_run)
    res = run("evaluate", finished_run)
    assert res.returncode == 0 and "reproduced exactly" in res.stdout, res.stderr
    listing = run("runs", finished_run, "--format", "json")
    assert listing.returncode == 0 and "MODIFIED" not in listing.stdout
    assert json.loads((finished_run / "metrics.json").read_text())["complete"] is True
    assert tree_digest(finished_run) == before  # evaluate and runs write nothing


@pytest.mark.parametrize("edit, words, name", TAMPER, ids=[t[2] for t in TAMPER])
def test_an_edited_run_file_is_found_by_evaluate_runs_and_compare(tmp_path, finished_run, edit, words, name):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    edit(run_dir)
    before = tree_digest(run_dir)
    res = run("evaluate", run_dir)
    line = assert_one_line_exit(res, 1, *words)
    assert "device or library" not in line  # corruption or tampering is named, not blamed on versions
    if name == "checkpoint.pt":
        assert line.index("checkpoint.pt") < line.index("corrupted")
    listing = run("runs", run_dir, "--format", "json")
    assert listing.returncode == 0, listing.stderr
    note = json.loads(listing.stdout)[0]["note"]
    assert note.startswith("MODIFIED") and name in note, note
    cmp = run("runs", "compare", finished_run, run_dir)
    assert cmp.returncode == 0, cmp.stderr
    assert "WARNING: B's files do not match" in cmp.stdout and name in cmp.stdout
    assert "WARNING: A's" not in cmp.stdout
    assert tree_digest(run_dir) == before


# ---- 3. a full disk under train --out ---------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", "2m") as mnt:
        yield mnt


def _fill(mnt: Path, leave: int) -> None:
    """Fill the tmpfs so that about `leave` bytes stay free."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("stage", ["checkpoint", "figures"])
def test_full_disk_under_train_out_is_one_line_and_never_complete(tmp_path, cache, one_seed_run, small_tmpfs, stage):
    ref = one_seed_run
    sizes = {p.name: p.stat().st_size for p in ref.iterdir() if p.is_file()}
    pages = lambda n: -(-n // 4096) * 4096  # noqa: E731  (tmpfs allocates whole pages)
    board = sum(pages(p.stat().st_size) for p in ref.rglob("*") if p.is_file() and p.parent != ref)  # event files
    if stage == "checkpoint":  # room for nothing but the event files: the checkpoint write fails
        leave = board + 64 * 1024
    else:  # checkpoint, config and predictions land; the first figure does not
        leave = board + sum(pages(sizes[n]) for n in ("checkpoint.pt", "config.yaml", "predictions.csv")) + 48 * 1024
    _fill(small_tmpfs, leave)
    out = small_tmpfs / "run"
    before = tree_digest(cache)
    res = run(*TRAIN, "--cache-dir", cache, "--seeds", "0", "--out", out, timeout=300)
    assert_one_line(res, "no space left", str(out))
    assert tree_digest(cache) == before
    assert not (out / "metrics.json").exists() or json.loads((out / "metrics.json").read_text())["complete"] is False
    assert not list(out.glob("*.tmp-*"))  # no temp file left behind
    if stage == "figures":
        assert (out / "checkpoint.pt").is_file() and not (out / "metrics.json").exists()
        listing = run("runs", small_tmpfs, "--format", "json")
        assert listing.returncode == 0, listing.stderr
        row = next(r for r in json.loads(listing.stdout) if r["run"] == "run")
        assert row["note"].startswith("incomplete"), row


# ---- 2. concurrent sweeps share work ----------------------------------------------------------------------------

def test_two_identical_sweeps_at_once_train_every_run_once(tmp_path, cache):
    """Two real `mer-pipe sweep` processes into one --out: every (config, seed) is trained by exactly one of them
    (its sweep_task.json records one training start), the other reuses it, and both finish with the same table."""
    argv = [str(MER_PIPE), "sweep", "-m", "mlp", "-d", DATASET, "--cache-dir", str(cache), "--modalities", "t",
            "--epochs", "1", "--seeds", "0", "--grid", "trainer.lr=1e-3,3e-3", "--executor", "serial",
            "--out", str(tmp_path / "sw")]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-2000:]
        assert "Traceback" not in se
    tasks = sorted((tmp_path / "sw" / "configs").glob("*/seed-*/sweep_task.json"))
    assert len(tasks) == 2
    trainers = []
    for t in tasks:
        attempts = json.loads(t.read_text())["attempts"]
        assert len(attempts) == 1 and attempts[0]["state"] == "done", (t, attempts)
        trainers.append(attempts[0]["pid"])
    assert set(trainers) <= {p.pid for p in procs}
    trained = reused = 0
    for so, _ in outs:  # per sweep: runs reused at planning (header) + runs waited for, and runs it trained itself
        reused += int(re.search(r"= 2 runs; (\d+) reused", so).group(1)) + so.count("reused: trained by another sweep")
        trained += sum("reused" not in ln and "FAILED" not in ln for ln in re.findall(r"^\[\d/2\] .*$", so, flags=re.M))
    assert trained == 2 and reused == 2, outs  # each run trained once, and the other sweep reused it
    listing = run("runs", tmp_path / "sw", "--format", "json")
    assert listing.returncode == 0 and "MODIFIED" not in listing.stdout
    # a run whose files no longer match their record is trained again on the next sweep, never reused
    _edit_predictions(tasks[0].parent)
    again = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 reused, 1 to run" in again.stdout
    assert [len(json.loads(t.read_text())["attempts"]) for t in tasks] == [2, 1]
    assert not run("evaluate", tasks[0].parent).returncode
