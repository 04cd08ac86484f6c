"""Selection by cross-validation over the training dialogues (pipeline/experiments/cvselect.py, `sweep --select-on cvK`).

The dataset is written straight into a cache (as tests/test_sweep.py does): two feature sets for modality t, in
lock slots `t` and `t_alt`. `t` carries the label on train and test and is noise on dev; `t_alt` carries it only
faintly on train, strongly on dev, and is noise on test. So dev prefers `t_alt`, while cross-validation over the
training dialogues prefers `t`, which is also what test prefers. Scrambling the dev and test labels must change
nothing CV computes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import planted_dataset

DATASET = "cv-synth"
CLASSES = ("neutral", "joy", "anger", "sadness")
FAST = ["trainer.epochs=6", "trainer.patience=0", "trainer.lr=3e-3", "trainer.batch_size=8", "model.hidden=[32]"]


def make_dataset(cache: Path, dialogues: int = 32, per_dialogue: int = 6, dim: int = 16, seed: int = 0) -> Path:
    """`t` carries the cue on train and test (not dev); `t_alt` a stronger cue on dev only (weak on train, none on
    test): dev prefers t_alt, CV and test prefer t."""
    def features(splits, onehot, noise):
        t = np.where((splits == "dev")[:, None], noise(), 3.0 * onehot + noise())
        t_alt = np.where((splits == "test")[:, None], noise(),
                         np.where((splits == "train")[:, None], 1.0, 4.0) * onehot + noise())
        return {"t": (t, "text"), "t_alt": (t_alt, "text")}

    return planted_dataset(cache, DATASET, CLASSES, features, dialogues, per_dialogue, dim, seed)


def scramble_dev_test_labels(src: Path, dest: Path) -> Path:
    """A copy of the cache whose dev and test labels are permuted and shifted (the manifest digest ignores labels)."""
    shutil.copytree(src, dest)
    path = dest / DATASET / "manifest.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rng = np.random.default_rng(7)
    for r in rows:
        if r["split"] in ("dev", "test"):
            r["label_id"] = int((r["label_id"] + 1 + rng.integers(3)) % len(CLASSES))
            r["label"] = CLASSES[r["label_id"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    import torch

    torch.set_num_threads(1)
    return make_dataset(tmp_path / "cache")


def _cfg(slot: str, seeds=(0,)):
    from mer_pipe.pipeline.train.runconfig import resolve_run_config

    return resolve_run_config({}, FAST, model="mlp", dataset=DATASET, modalities=["t"], seeds=list(seeds),
                              slots={"t": slot}, device="cpu")


def test_parse_select_on():
    from mer_pipe.common.errors import ConfigError
    from mer_pipe.pipeline.experiments.cvselect import parse_select_on

    assert parse_select_on("cv5") == (None, 5) and parse_select_on("cv") == (None, 5)
    assert parse_select_on("cv3") == (None, 3) and parse_select_on("dev") == ("dev", 0)
    assert parse_select_on(None) == (None, 0)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        parse_select_on("cv1")


def test_folds_are_whole_training_dialogues_and_cover_train_once(cache):
    from mer_pipe.pipeline.corpus.manifest import load_dataset
    from mer_pipe.pipeline.experiments.cvselect import cv_folds, train_only
    from mer_pipe.pipeline.train.data import load_corpus

    corpus = train_only(load_corpus(DATASET, ["t"], cache))
    _, utts = load_dataset(DATASET, cache)
    dia = {u.id: u.dialogue_id for u in utts}
    folds, fold_of = cv_folds(corpus, dia, 4, "dialogue")
    assert len(folds) == 4 and set(fold_of.values()) == {0, 1, 2, 3}
    held = np.zeros(corpus.n, dtype=int)
    for k, f in enumerate(folds):
        assert np.array_equal(f.dev.keep, f.test.keep)  # the held-out fold picks the epoch and is scored
        assert not (f.train.keep & f.dev.keep).any()
        held += f.dev.keep
        train_dias = {dia[corpus.ids[i]] for i in np.flatnonzero(f.train.keep)}
        held_dias = {dia[corpus.ids[i]] for i in np.flatnonzero(f.dev.keep)}
        assert not train_dias & held_dias and all(fold_of[d] == k for d in held_dias)
        assert all(corpus.splits[i] == "train" for i in np.flatnonzero(f.train.keep | f.dev.keep))
    assert np.array_equal(held == 1, corpus.splits == "train") and held.max() == 1
    # dev / test labels are blanked before any fold is cut
    assert (corpus.label[:-1].numpy()[corpus.splits != "train"] == -1).all()


def test_cv_scores_never_read_dev_or_test_labels(cache, tmp_path):
    from mer_pipe.pipeline.experiments.cvselect import cross_validate

    scrambled = scramble_dev_test_labels(cache, tmp_path / "scrambled")
    for slot in ("t", "t_alt"):
        a = cross_validate(_cfg(slot), 3, cache, device="cpu")
        b = cross_validate(_cfg(slot), 3, scrambled, device="cpu")
        strip = lambda r: [{k: v for k, v in f.items() if k != "seconds"} for f in r["per_fold"]]  # noqa: E731
        assert strip(a) == strip(b) and a["weighted_f1"] == b["weighted_f1"]
        assert a["fold_dialogues_sha256"] == b["fold_dialogues_sha256"]


def _sweep(cache: Path, out: Path, select_on: str, seeds: str = "0"):
    from mer_pipe.pipeline import api

    return api.sweep("mlp", DATASET, grid=["slots.t=t,t_alt"], seeds=seeds, modalities="t", sets=FAST, device="cpu",
                     cache_dir=cache, out=out, executor="serial", select_on=select_on, log=lambda s: None)


def test_sweep_select_on_cv_chooses_the_feature_set_on_training_dialogues_only(cache, tmp_path):
    cv = _sweep(cache, tmp_path / "cv", "cv3")
    rows = {r["label"]: r for r in cv.state["configs_table"]}
    t, alt = rows["slots.t=t"], rows["slots.t=t_alt"]
    # planted: dev prefers t_alt, the training dialogues (and test) prefer t
    assert alt["sel_weighted_f1"]["mean"] > t["sel_weighted_f1"]["mean"] + 0.2
    assert t["cv_weighted_f1"]["mean"] > alt["cv_weighted_f1"]["mean"] + 0.2
    assert t["test_weighted_f1"]["mean"] > alt["test_weighted_f1"]["mean"] + 0.2
    assert cv.selection["on"] == "cv3" and cv.selection["by_model"]["mlp"]["label"] == "slots.t=t"
    assert cv.state["dev_selection"]["by_model"]["mlp"]["label"] == "slots.t=t_alt"  # shown, not used
    assert cv.state["definition"]["select_on"] == "cv3"
    for c in cv.state["configs"]:
        for task in c["tasks"]:
            rec = json.loads((cv.sweep_dir / task["dir"] / "cv.json").read_text())
            assert rec["folds"] == 3 and rec["task_key"] == task["key"] and len(rec["per_fold"]) == 3
    text = (cv.sweep_dir / "sweep.md").read_text()
    assert "selection on cv3" in text and "chosen for mlp: c00 (slots.t=t)" in text
    # the same sweep with scrambled dev/test labels makes the same choice on the same CV scores
    scrambled = scramble_dev_test_labels(cache, tmp_path / "scrambled")
    again = _sweep(scrambled, tmp_path / "cv-scrambled", "cv3")
    assert again.selection["by_model"]["mlp"]["label"] == "slots.t=t"
    assert [r["cv_weighted_f1"] for r in again.state["configs_table"]] == \
        [r["cv_weighted_f1"] for r in cv.state["configs_table"]]
    # rerun: everything reused (standard runs and cv.json)
    rerun = _sweep(cache, tmp_path / "cv", "cv3")
    assert rerun.state["counts"]["reused"] == 2 and rerun.state["counts"]["done"] == 0


def test_a_dev_sweep_dir_gains_cv_without_retraining_its_standard_runs(cache, tmp_path):
    dev = _sweep(cache, tmp_path / "sw", "dev")
    assert dev.selection["on"] == "dev" and dev.selection["by_model"]["mlp"]["label"] == "slots.t=t_alt"
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "sw" / "configs").glob("*/seed-*/metrics.json")}
    cv = _sweep(cache, tmp_path / "sw", "cv2")
    assert cv.selection["by_model"]["mlp"]["label"] == "slots.t=t"
    assert all(p.stat().st_mtime_ns == s for p, s in stamps.items())  # only the CV fits ran


def test_bad_cv_option_is_one_line(cache, tmp_path):
    from mer_pipe.common.errors import ConfigError

    with pytest.raises(ConfigError, match="only 16 labelled training dialogues"):
        _sweep(cache, tmp_path / "sw", "cv40")
