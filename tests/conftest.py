"""Shared test set-up: offline Hugging Face, one torch thread, paths to the real reference data."""
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

# The real MELD annotation CSVs (train/dev/test_sent_emo.csv); no clips needed.
MELD_CSV_ENV = "MER_PIPE_MELD_CSV"
MELD_CSV = Path(os.environ.get(MELD_CSV_ENV) or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meld")


@pytest.fixture(scope="session")
def meld_csv() -> Path:
    """The folder of the real MELD CSVs: $MER_PIPE_MELD_CSV, else ../shared/data/meld."""
    if not (MELD_CSV / "train_sent_emo.csv").exists():
        pytest.skip(f"the MELD CSVs are not at {MELD_CSV}; set {MELD_CSV_ENV} to the folder holding train_sent_emo.csv")
    return MELD_CSV


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/mer-pipe from a test."""
    monkeypatch.setenv("MER_PIPE_CACHE", str(tmp_path_factory.mktemp("cache")))


SYNTH_DATASET = "synth-meld"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A prepared 32-utterance synthetic MELD corpus with planted faults: `<base>/corpus`, dataset
    'synth-meld' in `<base>/cache`, and the tiny v / a_w2v checkpoints in `<base>/cache/_weights`.
    Read-only for tests: take a `fresh_cache` to write features."""
    import torch

    from mer_pipe.pipeline.corpus.prepare import prepare
    from mer_pipe.pipeline.extract.presets import resolve_slots
    from mer_pipe.pipeline.corpus.synth import synthesize

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("synth-meld")
    synthesize("meld", base / "corpus", dialogues=4, faults=True)
    prepare("meld", base / "corpus", name=SYNTH_DATASET, cache_dir=base / "cache")
    resolve_slots("offline", only="v,a_w2v", cache_root=base / "cache")  # build the tiny checkpoints once
    return base


@pytest.fixture
def fresh_cache(prepared: Path, tmp_path: Path) -> Path:
    """`<tmp_path>/c`: a new cache root holding only the prepared dataset and the tiny checkpoints (no features)."""
    import shutil

    src, dest = prepared / "cache", tmp_path / "c"
    shutil.copytree(src / "_weights", dest / "_weights")
    (dest / SYNTH_DATASET).mkdir(parents=True)
    for name in ("manifest.jsonl", "dataset.json"):
        shutil.copy(src / SYNTH_DATASET / name, dest / SYNTH_DATASET / name)
    return dest


@pytest.fixture
def scheduler(tmp_path):
    """A real `dask scheduler` + two `dask worker` processes (one thread each) on 127.0.0.1, as a user would start
    them for a cluster; yields the scheduler address and tears the processes down afterwards."""
    bin_dir, sched_file = Path(sys.executable).parent, tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs, logs = [], []

    def start(args: list[str], name: str) -> None:
        log = open(tmp_path / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([str(bin_dir / "dask"), *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=tmp_path))

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(sched_file)], "scheduler")
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert sched_file.exists(), (tmp_path / "scheduler.log").read_text()
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            start(["worker", address, "--no-nanny", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                   "--local-directory", str(tmp_path / f"w{i}"), "--name", f"w{i}"], f"worker{i}")
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for p in procs[::-1]:  # workers first, then the scheduler; a few seconds' grace, then kill
            p.terminate()
        deadline = time.time() + 5
        for p in procs[::-1]:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `mer-pipe ARGV`, in process."""
    from mer_pipe.pipeline.cli import main

    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str):
    """A real tmpfs of `size` at `mnt` (we are root in CI), for full-disk tests; skipped with the reason where
    mounting is not allowed."""
    mnt.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'mount failed'}); needs root or CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def planted_dataset(cache: Path, name: str, classes, features, dialogues: int, per_dialogue: int = 6, dim: int = 16,
                    seed: int = 0) -> Path:
    """A prepared dataset `name` in `cache` with locked features and no media: the first half of the dialogues is
    train, then a quarter dev, a quarter test; labels random. `features(splits, onehot, noise)` returns
    {slot: (values [U, dim], modality)}, where `noise()` draws fresh N(0, 1) rows: tests plant a cue per split."""
    import numpy as np

    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.common.files import write_json_atomic
    from mer_pipe.pipeline.corpus.manifest import Utterance, dataset_dir, manifest_digest, write_manifest
    from mer_pipe.pipeline.interop.featuresets import write_set

    rng = np.random.default_rng(seed)
    utts, labels = [], []
    for d in range(dialogues):
        split = "train" if d < dialogues // 2 else ("dev" if d < 3 * dialogues // 4 else "test")
        for i in range(per_dialogue):
            y = int(rng.integers(len(classes)))
            labels.append(y)
            utts.append(Utterance(id=f"{split}/d{d}_u{i}", dataset=name, dialogue_id=f"d{d}", index=i, speaker=f"s{i % 2}",
                                  speaker_idx=i % 2, text=f"utterance {d} {i}", video=None, audio=None, video_segment=None,
                                  audio_segment=None, start=None, end=None, split=split, label=classes[y], label_id=y,
                                  sentiment=None))
    splits = np.array([u.split for u in utts])
    onehot = np.eye(len(classes), dim, dtype=np.float32)[labels]
    planted = features(splits, onehot, lambda: rng.normal(0, 1.0, (len(utts), dim)).astype(np.float32))
    out = dataset_dir(name, cache)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "manifest.jsonl", utts)
    digest = manifest_digest(utts)
    write_json_atomic(out / "dataset.json", {"name": name, "recipe": "manifest", "root": str(cache),
                                             "label_names": list(classes), "manifest_digest": digest})
    store = FeatureStore(cache)
    ids = [u.id for u in utts]
    for slot, (values, modality) in planted.items():
        entry = write_set(store, name, {"layout": "test", "element": slot, "file_sha256": str(seed)}, modality, ids,
                          values, digest)
        store.set_lock(name, slot, entry)
    return cache
