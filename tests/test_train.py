"""Training on offline features of a synthetic MELD-like corpus with planted signal.

The corpus and its features are built once per test session (build_synth_features; ~1 min on 2 cores)
and shared with tests/test_cli_train.py through a marker file under the session's base temp dir.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import KFold

from mer_pipe.common.errors import CacheError
from mer_pipe.pipeline.train.data import iter_batches, load_corpus, make_view
from mer_pipe.pipeline.train.evaluate import evaluate_run
from mer_pipe.pipeline.train.protocols import KFOLD_WARNING, SELECT_ON_TEST_WARNING, make_folds
from mer_pipe.pipeline.train.loop import TrainConfig, fit

DATASET = "synth-meld"
DIALOGUES = 40
# Small widths so every model trains in seconds; fast learning rate, no early stop in short runs.
SMALL = {
    "ts-gcl": ["model.d=64", "model.gnn_layers=2"],
    "ar-iigcn": ["model.d=64"],
    "jv-icl": ["model.d=64", "model.heads=4"],
    "deepmsi-mer": ["model.tcn.channels=[64,64]", "model.cls_hidden=[128]", "model.proc_hidden=[128]", "model.guide_dim=64"],
    "mlp": [],
    "bigru": [],
}
FAST = ["trainer.lr=3e-3", "trainer.patience=0"]


def make_train_config(model: str, overrides: dict | None = None) -> TrainConfig:
    """TrainConfig defaults <- the model's `train_defaults` <- overrides (what `resolve_run_config` does)."""
    from mer_pipe.models import _all  # noqa: F401  (every model registers itself)
    from mer_pipe.models.registry import MODELS

    return TrainConfig.from_dict({**getattr(MODELS.get(model), "train_defaults", {}), **(overrides or {})})


def build_synth_features(base: Path) -> Path:
    """synth (40 dialogues) -> prepare -> offline t/a/v features, once per session; returns the cache dir."""
    from mer_pipe.pipeline.executors import ExecutorConfig
    from mer_pipe.pipeline.extract.run import extract_features
    from mer_pipe.pipeline.corpus.prepare import prepare
    from mer_pipe.pipeline.extract.presets import resolve_slots
    from mer_pipe.pipeline.corpus.synth import synthesize

    cache, done = base / "cache", base / "features.done"
    if not done.exists():
        torch.set_num_threads(1)
        res = synthesize("meld", base / "corpus", dialogues=DIALOGUES, seed=0)
        prepare("meld", res.root, name=DATASET, cache_dir=cache)
        slots = resolve_slots("offline", only="t,a,v", cache_root=cache)
        extract_features(DATASET, slots, cache_dir=cache, device="cpu", progress=False,
                         executor=ExecutorConfig(kind="serial"))
        done.write_text("ok")
    return cache


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory) -> Path:
    return build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")


@pytest.fixture(scope="module")
def corpus(synth_cache):
    return load_corpus(DATASET, ("t", "a", "v"), synth_cache)


def _train(model, cache, out, modalities="t,a,v", seeds="0", epochs=8, extra=(), **kw):
    from mer_pipe.pipeline import api

    torch.set_num_threads(1)
    res = api.train(model, DATASET, modalities=modalities, seeds=seeds, epochs=epochs, sets=[*FAST, *SMALL[model], *extra],
                    out=out, device="cpu", cache_dir=cache, log=lambda s: None, progress=False, **kw)
    return res.run_dir, res.metrics


def test_batches_carry_frames_masks_labels_and_polarity(corpus, synth_cache):
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    assert corpus.task.frame_shapes["v"][0] == 15 and corpus.task.n_classes == 7
    assert corpus.task.class_polarities[corpus.class_names.index("surprise")] == (0, 2)
    view = make_view(corpus, corpus.splits == "train", "dialogue")
    batch, idx = next(iter_batches(corpus, view, 4))
    b, n = batch.mask.shape
    assert batch.frames["v"].shape[:3] == (b, n, 15)
    torch.testing.assert_close(batch.feats["v"][batch.mask], batch.frames["v"][batch.mask].mean(dim=1))
    assert (batch.label[~batch.mask] == -1).all() and (batch.label[batch.mask] >= 0).all()
    assert (~batch.present["t"][~batch.mask]).all()
    _, utts = load_dataset(DATASET, synth_cache)  # MELD: polarity is the shipped sentiment label
    pol = {"negative": 0, "neutral": 1, "positive": 2}
    assert batch.polarity[batch.mask].tolist() == [pol[utts[i].sentiment] for i in idx[batch.mask].tolist()]
    assert [utts[i].label_id for i in idx[batch.mask].tolist()] == batch.label[batch.mask].tolist()
    ub, _ = next(iter_batches(corpus, make_view(corpus, corpus.splits == "test", "utterance"), 5))
    assert ub.mask.shape == (5, 1)


@pytest.mark.parametrize("model", list(SMALL))
def test_every_model_learns_far_above_majority(model, synth_cache, tmp_path, corpus):
    _, metrics = _train(model, synth_cache, tmp_path / model)
    gold = corpus.label[:-1].numpy()[corpus.splits == "test"]
    majority = np.full_like(gold, np.bincount(gold).argmax())
    base = f1_score(gold, majority, average="weighted")
    wf1 = metrics["aggregate"]["test"]["weighted_f1"]["mean"]
    assert wf1 > base + 0.3, f"{model}: test W-F1 {wf1:.3f} vs majority {base:.3f}"


def test_all_three_modalities_beat_the_best_single_modality(synth_cache, tmp_path):
    # Pooled 10-fold CV scores every one of the ~280 utterances once: far less noisy than the
    # ~60-utterance test split of this small corpus.
    scores = {}
    for mods in ("t", "a", "v", "t,a,v"):
        _, m = _train("mlp", synth_cache, tmp_path / mods.replace(",", ""), modalities=mods, epochs=15,
                      protocol="kfold10-utterance", extra=["model.hidden=[64]"])
        scores[mods] = m["aggregate"]["test"]["weighted_f1"]["mean"]
    best_single = max(scores["t"], scores["a"], scores["v"])
    assert scores["t,a,v"] > best_single + 0.03, scores


@pytest.mark.parametrize("model", ["bigru", "ar-iigcn"])  # ar-iigcn: graph scatter, nondeterministic before
def test_cpu_training_is_deterministic_for_a_seed(corpus, model):
    torch.set_num_threads(2)  # several threads is where reduction order can vary
    fold = make_folds(corpus, "standard", "dev", "dialogue")[0]
    cfg = make_train_config(model, {"epochs": 3, "lr": 3e-3})
    a, b = (fit(model, None, corpus, ("t", "a", "v"), fold, cfg, seed=7) for _ in range(2))
    c = fit(model, None, corpus, ("t", "a", "v"), fold, cfg, seed=8)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    np.testing.assert_array_equal(a.test_predictions.probs, b.test_predictions.probs)
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_run_dir_files_and_evaluate_reproduces_exactly(synth_cache, tmp_path):
    run, metrics = _train("jv-icl", synth_cache, tmp_path / "run", seeds="0,1", epochs=3)
    for f in ("config.yaml", "metrics.json", "predictions.csv", "confusion.png", "curves.png", "checkpoint.pt"):
        assert (run / f).stat().st_size > 0, f
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "jv-icl" and cfg["model_config"]["d"] == 64 and cfg["trainer"]["epochs"] == 3
    assert cfg["features"]["t"]["key"] and cfg["protocol"] == "standard" and cfg["select_on"] == "dev"
    stored = json.loads((run / "metrics.json").read_text())
    assert set(stored["per_seed"]) == {"0", "1"} and stored["aggregate"]["test"]["weighted_f1"]["n"] == 2
    res = evaluate_run(run, synth_cache, "cpu", log=None)
    assert res["reproduced"]
    for r_new, r_old in zip(res["runs"], stored["runs"]):
        assert r_new["test"] == r_old["test"]
    lines = (run / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("seed,fold,selected_on,id,gold,predicted,p_neutral")
    assert len(lines) - 1 == 2 * stored["runs"][0]["test"]["n"]


def test_evaluate_refuses_features_with_a_different_key(synth_cache, tmp_path):
    import shutil

    run, _ = _train("mlp", synth_cache, tmp_path / "run", epochs=1)
    cache2 = tmp_path / "cache2"
    shutil.copytree(synth_cache, cache2)
    lock_path = cache2 / DATASET / "lock.json"
    lock = json.loads(lock_path.read_text())
    old = lock["t"]["key"]
    lock["t"]["key"] = "0" * 16
    lock_path.write_text(json.dumps(lock))
    with pytest.raises(CacheError) as e:
        evaluate_run(run, cache2, "cpu", log=None)
    msg = str(e.value)
    assert old in msg and "0" * 16 in msg and "mer-pipe features --dataset synth-meld" in msg


def test_select_on_test_is_flagged_in_every_output(synth_cache, tmp_path):
    run, m = _train("mlp", synth_cache, tmp_path / "run", epochs=2, select_on="test")
    assert (run / "config.yaml").read_text().startswith("# " + SELECT_ON_TEST_WARNING)
    assert SELECT_ON_TEST_WARNING in json.loads((run / "metrics.json").read_text())["notes"]
    assert (run / "predictions.csv").read_text().splitlines()[1].split(",")[2] == "test"
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert SELECT_ON_TEST_WARNING in ck["notes"]


def test_kfold10_utterance_matches_sklearn_folds(corpus):
    labelled = np.flatnonzero(corpus.label[:-1].numpy() >= 0)
    folds = make_folds(corpus, "kfold10-utterance", "test", "utterance")
    ref = list(KFold(10, shuffle=True, random_state=42).split(labelled))
    assert len(folds) == 10
    for f, (tr, te) in zip(folds, ref):
        assert set(np.flatnonzero(f.test.keep)) == set(labelled[te])
        assert set(np.flatnonzero(f.train.keep)) == set(labelled[tr])
        assert f.dev is f.test  # the paper's habit: select on the evaluation fold
    honest = make_folds(corpus, "kfold10-utterance", "dev", "dialogue")
    for f in honest:
        tr, dv, te = (np.flatnonzero(v.keep) for v in (f.train, f.dev, f.test))
        assert not (set(tr) & set(dv)) and not (set(dv) & set(te)) and len(dv) > 0


def test_kfold_run_writes_the_protocol_note(synth_cache, tmp_path):
    run, m = _train("mlp", synth_cache, tmp_path / "run", epochs=1, protocol="kfold10-utterance")
    assert KFOLD_WARNING in m["notes"] and len(m["runs"]) == 10
    assert evaluate_run(run, synth_cache, "cpu", log=None)["reproduced"]
