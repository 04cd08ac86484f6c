"""Shared test set-up: offline Hugging Face, one torch thread, paths to the real reference data."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "meld" / "train_sent_emo.csv").exists():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


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
