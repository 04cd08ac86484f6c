"""A cache that is safe to share (issue 17, the store side), through the installed `mer-pipe` entry point.

Every row: the exit code, one line (notes aside), no traceback, nothing outside the cache touched (a sibling
folder of real files is snapshotted and compared byte for byte), no file changed the command did not own.
Crafted pickles are written here (their `__reduce__` would create a marker file), symlinks are real, the
full disk is a real tmpfs (skipped, with the reason, where mounting is not allowed).
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SYNTH_DATASET as DATASET, mounted_tmpfs
from test_faults import MER_PIPE, assert_one_line, run
from test_finetune import FT, _plan

OLD = time.time() - 7200


class Evil:
    """Unpickling this would run `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def snapshot(folder: Path) -> dict[str, object]:
    """relative path -> bytes (files) or ('link', target) / 'dir': compared before and after a command."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes())
    return out


def project(tmp: Path) -> Path:
    """A real folder of unrelated files, with store-looking names three levels down."""
    root = tmp / "project"
    for rel, text in [("src/app/main.py", "print('hi')\n"), ("src/app/deep/x.tmp-otherhost-1-abcd", "keep"),
                      ("src/app/deep/lock.json.tmp-vm-99999999-0123abcd", "keep"), ("README.md", "# p\n"),
                      ("data/ds/enc/0123456789abcdef/shard-00000-of-00001.h5", "not hdf5"),
                      ("data/ds/enc/0123456789abcdef/spec.json", "{}")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for p in root.rglob("*"):
        os.utime(p, (OLD, OLD))
    return root


def features(cache: Path, *extra: str, only: str = "t", timeout: int = 300):
    return run("features", "--dataset", DATASET, "--cache-dir", cache, "--only", only, "--executor", "serial",
               "--shard-size", "8", "--no-progress", *extra, timeout=timeout)


def ok(res) -> None:
    assert res.returncode == 0, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr


def text_set(cache: Path) -> Path:
    (fdir,) = [p for p in (cache / DATASET / "text-hf").iterdir() if p.is_dir()]
    return fdir


# ---- 1. nothing in the cache can run code --------------------------------------------------------------
FT_ARGS = [a for s in [*FT, "t.finetune.epochs=1"] for a in ("--set", s)]


@pytest.mark.slow  # two tiny fine-tunes through the CLI (~30 s)
@pytest.mark.parametrize("damage", ["crafted", "corrupt"])
def test_bad_resume_state_is_discarded_never_run_and_a_flipped_checkpoint_is_retrained(fresh_cache, tmp_path, damage):
    import torch

    marker, outside = tmp_path / "PWNED", project(tmp_path)
    before = snapshot(outside)
    key = _plan(fresh_cache, ["t.finetune.epochs=1"]).finetunes[0].key
    work = fresh_cache / DATASET / "finetune" / f".work-{key}"
    (work / "best").mkdir(parents=True)
    if damage == "crafted":
        torch.save({"epoch": 1, "model": {}, "optimizer": {}, "scheduler": {}, "record": {"x": Evil(marker)}},
                   work / "state.pt")
    else:
        (work / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    res = features(fresh_cache, *FT_ARGS)
    ok(res)
    assert not marker.exists()
    notes = [ln for ln in res.stderr.splitlines() if "mer-pipe: note:" in ln and "discarding the work folder" in ln]
    assert len(notes) == 1 and "state.pt" in notes[0], res.stderr
    ckpt = fresh_cache / DATASET / "finetune" / key
    from mer_pipe.cache.checkpoints import problem

    assert problem(ckpt) is None and not work.exists()

    # 256 flipped bytes of the fine-tuned weights: never reused under the key, retrained saying so
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-300:-44] = bytes(b ^ 0xFF for b in data[-300:-44])
    weights.write_bytes(bytes(data))
    import shutil

    shutil.rmtree(text_set(fresh_cache))  # the features must be re-extracted from the checkpoint
    res = features(fresh_cache, *FT_ARGS)
    ok(res)
    assert "[cached]" not in "\n".join(ln for ln in res.stdout.splitlines() if ln.strip().startswith("finetune"))
    assert "retraining it" in res.stderr and "checksum" in res.stderr, res.stderr
    assert problem(ckpt) is None
    assert snapshot(outside) == before and not marker.exists()


def test_crafted_or_corrupt_classifier_head_is_refused_in_one_message(tmp_path):
    import torch

    from mer_pipe.common.errors import ModelLoadError
    from mer_pipe.extractors.finetune_files import load_head

    marker = tmp_path / "PWNED"
    torch.save({"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "modality": "text", "n_classes": 2,
                "pooling": Evil(marker)}, tmp_path / "classifier_head.pt")
    with pytest.raises(ModelLoadError, match="classifier_head.pt.*refused without running it.*delete"):
        load_head(tmp_path / "classifier_head.pt")
    assert not marker.exists()
    (tmp_path / "classifier_head.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ModelLoadError, match="corrupt or not a classifier head"):
        load_head(tmp_path / "classifier_head.pt")


def test_no_unrestricted_pickle_or_torch_load_in_the_code():
    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("cache/*.py"), *root.glob("extractors/*.py"), *root.glob("pipeline/**/*.py"),
                 *root.glob("models/*.py"), *root.glob("common/*.py")]:
        text = path.read_text()
        assert "weights_only=False" not in text, path
        if path.name != "pickles.py":
            assert "pickle.load(" not in text and "pickle.loads(" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line and not line.lstrip().startswith("#"):
                assert "weights_only=True" in line, (path, line)


# ---- 2. gc never leaves the cache ------------------------------------------------------------------------
def test_gc_refuses_an_unmarked_folder_and_touches_nothing(tmp_path):
    folder = project(tmp_path)
    before = snapshot(folder)
    for args in (["--yes"], ["--yes", "--grace", "0"], []):
        assert_one_line(run("cache", "gc", "--cache-dir", folder, *args), "not marked", "mer-pipe cache mark")
    assert_one_line(run("cache", "mark", "--cache-dir", folder), "not a mer-pipe cache")
    assert snapshot(folder) == before


def test_old_cache_is_marked_by_its_next_write_or_by_cache_mark(fresh_cache, tmp_path):
    from mer_pipe.cache.store import MARKER_FILE

    assert not (fresh_cache / MARKER_FILE).exists()  # as an earlier version left it
    assert_one_line(run("cache", "gc", "--cache-dir", fresh_cache, "--yes"), f"mer-pipe cache mark --cache-dir {fresh_cache}")
    res = run("cache", "mark", "--cache-dir", fresh_cache)
    ok(res)
    marker = json.loads((fresh_cache / MARKER_FILE).read_text())
    assert marker["format"] == 1
    ok(run("cache", "gc", "--cache-dir", fresh_cache, "--yes"))
    other = tmp_path / "other"
    (other / DATASET).mkdir(parents=True)
    for name in ("manifest.jsonl", "dataset.json"):
        (other / DATASET / name).write_bytes((fresh_cache / DATASET / name).read_bytes())
    ok(features(other, timeout=300))  # the store's first write marks the cache
    assert (other / MARKER_FILE).is_file()


def _unlocked_old_set(fdir: Path) -> None:
    from mer_pipe.cache.shard import write_shard

    fdir.mkdir(parents=True)
    (fdir / "spec.json").write_text(json.dumps({"n_shards": 1}))
    write_shard(fdir / "shard-00000-of-00001.h5", ["u0"], [[1.0, 2.0]], {}, attrs={"key": fdir.name})


@pytest.mark.parametrize("where", ["dataset", "finetune", "extractor", "key", "temp-file", "finetune-entry"])
def test_gc_never_follows_or_deletes_through_a_symlink(tmp_path, where):
    from mer_pipe.cache.store import FeatureStore

    cache, outside = tmp_path / "cache", tmp_path / "outside"
    store = FeatureStore(cache)
    store.mark()
    key = "0123456789abcdef"
    ckpt_like = {"finetune.json": json.dumps({"complete": True, "key": key}), "model.safetensors": "w"}
    if where == "dataset":  # a dataset folder that holds finetune/ and a feature set
        _unlocked_old_set(outside / "enc" / key)
        for name, text in ckpt_like.items():
            (outside / "finetune" / key).mkdir(parents=True, exist_ok=True)
            (outside / "finetune" / key / name).write_text(text)
        (outside / "finetune" / f".work-{key}").mkdir()
        os.symlink(outside, cache / "ds2")
    elif where in ("finetune", "finetune-entry"):
        (cache / "ds").mkdir(parents=True, exist_ok=True)
        target = outside / key
        target.mkdir(parents=True)
        for name, text in ckpt_like.items():
            (target / name).write_text(text)
        (outside / f".work-{key}").mkdir()
        if where == "finetune":
            os.symlink(outside, cache / "ds" / "finetune")
        else:
            (cache / "ds" / "finetune").mkdir()
            os.symlink(target, cache / "ds" / "finetune" / key)
            os.symlink(outside / f".work-{key}", cache / "ds" / "finetune" / f".work-{key}")
    elif where == "extractor":
        _unlocked_old_set(outside / key)
        (cache / "ds").mkdir(parents=True, exist_ok=True)
        os.symlink(outside, cache / "ds" / "enc")
    elif where == "key":
        _unlocked_old_set(outside)
        (cache / "ds" / "enc").mkdir(parents=True, exist_ok=True)
        os.symlink(outside, cache / "ds" / "enc" / key)
    else:
        outside.mkdir()
        (cache / "ds").mkdir(parents=True, exist_ok=True)
        (outside / "victim").write_text("keep")
        os.symlink(outside / "victim", cache / "ds" / "lock.json.tmp-otherhost-1-abcd")
    (outside / "x.tmp-otherhost-1-abcd").write_text("not ours")
    for p in [*outside.rglob("*"), outside, *cache.rglob("*")]:
        os.utime(p, (OLD, OLD), follow_symlinks=False)
    before = snapshot(outside)
    res = run("cache", "gc", "--cache-dir", cache, "--yes", "--grace", "0")
    ok(res)
    assert snapshot(outside) == before
    assert res.stdout.strip() == "nothing to collect", res.stdout


def test_gc_deletes_only_the_stores_names_and_prints_exactly_what_it_removed(tmp_path):
    from mer_pipe.cache.store import FeatureStore

    cache = tmp_path / "cache"
    store = FeatureStore(cache)
    store.mark()
    victim = cache / "ds" / "enc" / "0123456789abcdef"
    _unlocked_old_set(victim)
    (victim / "notes.txt").write_text("mine, not the store's")  # kept, and with it the folder
    gone = cache / "ds" / "enc" / "fedcba9876543210"
    _unlocked_old_set(gone)
    not_a_key = cache / "ds" / "enc" / "my-set"
    _unlocked_old_set(not_a_key)
    tmp_ours = cache / "ds" / "lock.json.tmp-otherhost-1-abcd"
    tmp_ours.write_text("{")
    lookalike = cache / "ds" / "notes.tmp-draft"
    lookalike.write_text("keep")
    for p in [*cache.rglob("*")]:
        os.utime(p, (OLD, OLD))
    res = run("cache", "gc", "--cache-dir", cache, "--yes")
    ok(res)
    assert res.stdout.splitlines() == [f"removed {gone}", f"removed {tmp_ours}"]
    assert not gone.exists() and not tmp_ours.exists()
    assert (victim / "notes.txt").read_text() == "mine, not the store's" and not (victim / "spec.json").exists()
    assert (not_a_key / "spec.json").exists() and lookalike.exists()


# ---- 4/5. the advice is always true --------------------------------------------------------------------
def _flip_keep_stamp(path: Path) -> None:
    import h5py

    st = path.stat()
    with h5py.File(path, "r") as f:
        offset = f["values"].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow  # three feature runs and a train through the CLI (~40 s)
def test_bit_rot_with_unchanged_stamp_is_found_by_features_verify_and_named_by_train(fresh_cache, tmp_path):
    from mer_pipe.cache.shard import read_shard

    ok(features(fresh_cache))
    victim = sorted(text_set(fresh_cache).glob("shard-*.h5"))[1]
    _flip_keep_stamp(victim)
    stamp = victim.stat().st_mtime_ns
    ok(features(fresh_cache))  # size and mtime unchanged: the remembered check stands, nothing is read
    assert victim.stat().st_mtime_ns == stamp
    res = features(fresh_cache, "--verify")  # the full checksum pass finds and recomputes it
    ok(res)
    assert victim.stat().st_mtime_ns != stamp and "unusable and is recomputed" in res.stdout + res.stderr
    read_shard(victim, verify=True)

    _flip_keep_stamp(victim)
    res = run("train", "--model", "mlp", "--dataset", DATASET, "--cache-dir", fresh_cache, "--modalities", "t",
              "--seeds", "0", "--epochs", "1", "--no-progress", "--out", tmp_path / "run", timeout=300)
    assert_one_line(res, str(victim), "checksum", "mer-pipe features --verify")
    ok(features(fresh_cache))  # train forgot the shard's check: a plain run recomputes it as well
    read_shard(victim, verify=True)


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_lost_spec_is_rebuilt_from_sound_shards_without_recompute_or_strays(fresh_cache, damage):
    ok(features(fresh_cache))
    fdir = text_set(fresh_cache)
    shards = {p.name: p.stat().st_mtime_ns for p in fdir.glob("shard-*.h5")}
    spec = fdir / "spec.json"
    spec.unlink() if damage == "deleted" else spec.write_text("{not json")
    res = run("features", "--dataset", DATASET, "--cache-dir", fresh_cache, "--only", "t", "--executor", "serial",
              "--no-progress")  # the default shard size differs: the shards' own sharding must win
    ok(res)
    assert {p.name: p.stat().st_mtime_ns for p in fdir.glob("shard-*.h5")} == shards
    assert json.loads(spec.read_text())["n_shards"] == len(shards)
    ok(run("cache", "verify", "--cache-dir", fresh_cache))


def test_lost_spec_with_unsound_shards_recomputes_without_strays(fresh_cache):
    ok(features(fresh_cache))
    fdir = text_set(fresh_cache)
    (fdir / "spec.json").unlink()
    for p in list(fdir.glob("shard-*.h5"))[:2]:
        p.write_bytes(b"garbage")
    res = run("features", "--dataset", DATASET, "--cache-dir", fresh_cache, "--only", "t", "--executor", "serial",
              "--no-progress")
    ok(res)
    ok(run("cache", "verify", "--cache-dir", fresh_cache))  # no stray shards, no checksum problems


# ---- 6. writes never clobber ------------------------------------------------------------------------
def test_export_refuses_the_cache_existing_files_and_folders(fresh_cache, tmp_path):
    ok(features(fresh_cache))
    lock = fresh_cache / DATASET / "lock.json"
    before = snapshot(fresh_cache)
    base = ["cache", "export", "--dataset", DATASET, "--format", "cosmic", "--cache-dir", fresh_cache]
    assert_one_line(run(*base, "--out", lock), "inside the cache")
    assert_one_line(run(*base, "--out", lock, "--overwrite"), "inside the cache")
    assert_one_line(run(*base, "--out", fresh_cache / DATASET / "new.pkl"), "inside the cache")
    assert_one_line(run(*base, "--out", tmp_path), "is a folder")
    (tmp_path / "link.pkl").symlink_to(lock)
    assert_one_line(run(*base, "--out", tmp_path / "link.pkl", "--overwrite"), "inside the cache")
    assert snapshot(fresh_cache) == before
    existing = tmp_path / "mine.pkl"
    existing.write_text("my own file")
    assert_one_line(run(*base, "--out", existing), "already exists", "--overwrite")
    assert existing.read_text() == "my own file"
    ok(run(*base, "--out", existing, "--overwrite"))
    assert existing.read_bytes()[:1] == b"\x80"


# ---- 8. full disk ------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", "120k") as mnt:
        yield mnt


@pytest.mark.parametrize("executor", ["serial", pytest.param("dask", marks=pytest.mark.slow)])
def test_full_disk_during_features_is_one_line_exit_2_and_keeps_finished_shards(fresh_cache, small_disk, executor):
    cache = small_disk
    (cache / DATASET).mkdir()
    for name in ("manifest.jsonl", "dataset.json"):
        (cache / DATASET / name).write_bytes((fresh_cache / DATASET / name).read_bytes())
    res = run("features", "--dataset", DATASET, "--cache-dir", cache, "--only", "t", "--executor", executor,
              "--workers", "2", "--shard-size", "4", "--no-progress", timeout=300)
    assert_one_line(res, "no space left", "shard-")  # not 139, no h5py or dask dump before the line
    from mer_pipe.cache.shard import read_shard

    shards = list(cache.glob(f"{DATASET}/text-hf/*/shard-*.h5"))
    assert shards and all(read_shard(p, verify=True) for p in shards)
    assert not [p for p in cache.rglob("*") if ".tmp-" in p.name]


# ---- 9. one-line refusals before any work ---------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["cache", "gc", "--grace", "-1"], ["--grace -1", ">= 0"]),
    (["cache", "gc", "--grace", "nan"], ["--grace nan", ">= 0"]),
    (["cache", "gc", "--grace", "inf"], ["--grace inf", ">= 0"]),
    (["cache", "ls", "-d", "nosuch"], ["'nosuch'", "no such dataset", DATASET]),
    (["cache", "verify", "-d", "nosuch"], ["'nosuch'", "no such dataset"]),
    (["cache", "du", "-d", "nosuch"], ["'nosuch'", "no such dataset"]),
    (["features", "--dataset", DATASET, "--only", "zzz"], ["zzz"]),
])
def test_bad_values_are_one_line_before_any_work(fresh_cache, argv, words):
    before = snapshot(fresh_cache)
    assert_one_line(run(*argv, "--cache-dir", fresh_cache), *words)
    assert snapshot(fresh_cache) == before


def test_one_corrupt_lock_does_not_hide_the_other_datasets(fresh_cache):
    ok(features(fresh_cache))
    other = fresh_cache / "other"
    import shutil

    shutil.copytree(fresh_cache / DATASET, other)
    (other / "lock.json").write_text("{broken")
    res = run("cache", "ls", "--cache-dir", fresh_cache)
    ok(res)
    rows = [ln.split() for ln in res.stdout.splitlines()[1:] if ln.strip()]
    assert {r[0] for r in rows} >= {DATASET, "other"}
    assert [r[3] for r in rows if r[0] == "other"] == ["?"] and [r[3] for r in rows if r[0] == DATASET] == ["t"]
    assert res.stderr.count("\n") == 1 and "other" in res.stderr and "lock.json" in res.stderr


@pytest.mark.slow  # a local dask cluster (~20 s)
def test_ctrl_c_during_a_dask_run_is_one_line(fresh_cache, tmp_path):
    log = tmp_path / "log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen([str(MER_PIPE), "features", "--dataset", DATASET, "--cache-dir", str(fresh_cache),
                                 "--only", "v,t", "--executor", "dask", "--workers", "2", "--shard-size", "2",
                                 "--batch-size", "1", "--no-progress"], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # Ctrl-C goes to the whole process group, workers included
        t0 = time.time()
        while not list(fresh_cache.glob(f"{DATASET}/*/*/shard-*.h5")) and time.time() - t0 < 240 and proc.poll() is None:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    text = log.read_text()
    if rc == 0:
        pytest.skip("the run finished before the signal landed")
    assert rc == 130, text
    assert "Traceback" not in text and [ln for ln in text.splitlines() if ln.strip()] == [
        "mer-pipe: interrupted; every completed shard and run file is kept; rerun the same command to resume "
        "(finished work is reused)"], text
