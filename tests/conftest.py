"""Shared test set-up: offline Hugging Face, one torch thread, paths to the real reference data."""
import os
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
