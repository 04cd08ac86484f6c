"""`prepare ... --train-utterances N --subset-seed S` (pipeline/corpus/subset.py): a seeded subset of the training
split made of whole dialogues, dev and test untouched, recorded so it can be rerun. On the real MELD CSVs (text)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli


def _prepare(meld_csv: Path, cache: Path, name: str, n: int | None = None, seed: int | None = None):
    from mer_pipe.pipeline.corpus.manifest import load_dataset
    from mer_pipe.pipeline.corpus.prepare import prepare

    prepare("meld", meld_csv, name=name, cache_dir=cache, train_utterances=n, subset_seed=seed)
    return load_dataset(name, cache)


def test_subset_is_deterministic_whole_dialogues_close_to_n_and_leaves_dev_test(meld_csv, tmp_path):
    cache = tmp_path / "cache"
    _, full = _prepare(meld_csv, cache, "meld-full")
    info, sub = _prepare(meld_csv, cache, "meld-1k", 1000, 0)
    _, again = _prepare(meld_csv, cache, "meld-1k-again", 1000, 0)
    _, other = _prepare(meld_csv, cache, "meld-1k-s1", 1000, 1)

    assert [u.id for u in again] == [u.id for u in sub]  # deterministic
    size = Counter(u.dialogue_id for u in full if u.split == "train")
    kept = Counter(u.dialogue_id for u in sub if u.split == "train")
    assert kept and all(kept[d] == size[d] for d in kept)  # whole dialogues only
    assert abs(sum(kept.values()) - 1000) <= max(size.values()) / 2 + 1  # within half a dialogue of N
    assert set(kept) != {u.dialogue_id for u in other if u.split == "train"}  # the seed matters
    for split in ("dev", "test"):  # untouched, in the same order
        assert [u for u in sub if u.split == split] == [u for u in full if u.split == split]
    # recorded in dataset.json and prepare_report.json, enough to rerun it
    rec = info["subset"]
    assert rec["train_utterances"] == 1000 and rec["seed"] == 0 and rec["kept_utterances"] == sum(kept.values())
    assert rec["kept_dialogues"] == len(kept) and rec["full_train_utterances"] == sum(size.values())
    report = json.loads((cache / "meld-1k" / "prepare_report.json").read_text())
    assert report["subset"] == rec and report["n_utterances"] == len(sub)
    assert report["splits"]["train"]["utterances"] == sum(kept.values())
    assert info["manifest_digest"] != json.loads((cache / "meld-full" / "dataset.json").read_text())["manifest_digest"]


def test_subset_rule_on_a_small_list():
    from mer_pipe.pipeline.corpus.manifest import Utterance
    from mer_pipe.pipeline.corpus.subset import subset_train

    def utt(d: str, i: int, split: str = "train") -> Utterance:
        return Utterance(id=f"{d}_{i}", dataset="x", dialogue_id=d, index=i, speaker="a", speaker_idx=0, text="t",
                         video=None, audio=None, video_segment=None, audio_segment=None, start=None, end=None,
                         split=split, label="joy", label_id=0, sentiment=None)

    utts = [utt(f"d{d}", i) for d in range(20) for i in range(d % 5 + 1)] + [utt("x", 0, "dev")]
    a, rec = subset_train(utts, 17, seed=3)
    b, _ = subset_train(utts, 17, seed=3)
    assert a == b and utt("x", 0, "dev") in a
    assert abs(rec["kept_utterances"] - 17) <= 2 and rec["kept_dialogues"] == len({u.dialogue_id for u in a}) - 1
    everything, rec = subset_train(utts, 10_000, seed=0)  # more than there is: all of train
    assert everything == utts and rec["kept_utterances"] == rec["full_train_utterances"]
    one, rec = subset_train(utts, 1, seed=0)  # fewer than one dialogue: the first dialogue of the order
    assert rec["kept_dialogues"] == 1


def test_cli_prepare_with_subset_prints_it_and_refuses_bad_values(meld_csv, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, out, err = run_cli(["prepare", "meld", "--root", meld_csv, "--name", "meld-500", "--cache-dir", cache,
                              "--train-utterances", 500, "--subset-seed", 2], capsys)
    assert code == 0, err
    assert "training split subset:" in out and "--subset-seed 2" in out
    code, out, err = run_cli(["prepare", "meld", "--root", meld_csv, "--name", "bad", "--cache-dir", cache,
                              "--train-utterances", 0], capsys)
    assert code == 2 and err.startswith("mer-pipe: error: --train-utterances 0") and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["prepare", "meld", "--root", meld_csv, "--name", "bad", "--cache-dir", cache,
                              "--subset-seed", 1], capsys)
    assert code == 2 and "--subset-seed needs --train-utterances" in err


@pytest.mark.parametrize("n", [5000])
def test_meld_5k_subset_size(meld_csv, tmp_path, n):
    """The subset the fine-tune leak benchmark uses: about 5,000 training utterances."""
    info, sub = _prepare(meld_csv, tmp_path / "cache", "meld-5k", n, 0)
    assert abs(info["subset"]["kept_utterances"] - n) <= 15
