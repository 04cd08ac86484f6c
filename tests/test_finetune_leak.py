"""The memorised-training-feature leak made visible (issue 19): every fine-tune's train/dev report keyed with its
checkpoint, fold membership of cross-fitted features checked utterance by utterance, the gap in `cache ls` and the
features summary, and the one-line warning of `train`. Uses the tiny fine-tune set-up of tests/test_finetune.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.cache.loading import load_table
from mer_pipe.cache.store import FeatureStore
from mer_pipe.pipeline.corpus.manifest import load_dataset

from test_finetune import DATASET, FT, _plan, _run

CROSSFIT = ["t.finetune.crossfit=2", "t.finetune.epochs=1"]


def _meta(path: str | Path) -> dict:
    return json.loads((Path(path) / "finetune.json").read_text())


def test_every_finetune_records_train_and_dev_scores_keyed_with_its_checkpoint(fresh_cache):
    from sklearn.metrics import f1_score

    from mer_pipe.cache import checkpoints
    from mer_pipe.extractors.finetune import FinetuneConfig, load_classifier

    plan = _plan(fresh_cache, CROSSFIT)
    _run(fresh_cache, CROSSFIT)
    _, utts = load_dataset(DATASET, fresh_cache)
    by_id = {u.id: u for u in utts}
    train_all = {u.id for u in utts if u.split == "train" and u.label_id is not None}
    assert len(plan.finetunes) == 3
    for st in plan.finetunes:  # the all-train encoder and both fold encoders
        meta = _meta(st.path)
        assert meta["key"] == st.key == Path(st.path).name  # keyed with the checkpoint
        s = meta["scores"]
        assert s["epoch"] == meta["record"]["best_epoch"] and s["weights"].startswith("kept")
        assert s["train"]["n"] == len(st.train_ids) and 0 <= s["train"]["weighted_f1"] <= 1
        assert s["dev"]["weighted_f1"] == meta["record"]["dev_weighted_f1"]
        assert s["gap"] == pytest.approx(s["train"]["weighted_f1"] - s["dev"]["weighted_f1"])
        held = train_all - set(st.train_ids)
        assert meta["dialogues"]["train"] == sorted({by_id[i].dialogue_id for i in st.train_ids})
        assert meta["dialogues"]["heldout"] == sorted({by_id[i].dialogue_id for i in held})
        if st.fold is None:
            assert s["heldout"] is None and meta["dialogues"]["heldout"] == []
        else:
            assert s["heldout"]["n"] == len(held) > 0 and 0 <= s["heldout"]["weighted_f1"] <= 1
        # the train score is the kept weights' in eval mode: the checkpoint's own classifier agrees
        predict = load_classifier(st.path, FinetuneConfig.from_dict(meta["config"]))
        ids = list(st.train_ids)
        pred = predict([by_id[i].text for i in ids]).argmax(1)
        assert f1_score([by_id[i].label_id for i in ids], pred, average="weighted", zero_division=0) == \
            pytest.approx(s["train"]["weighted_f1"], abs=1e-9)
    assert checkpoints.verify(FeatureStore(fresh_cache), DATASET) == []  # the record does not break the checksum


def test_crossfit_train_rows_come_from_an_encoder_whose_folds_exclude_their_dialogue(fresh_cache):
    from mer_pipe.extractors import build_extractor

    plan = _plan(fresh_cache, CROSSFIT)
    _run(fresh_cache, CROSSFIT)
    (b,) = plan.crossfit
    metas = {k: _meta(next(st.path for st in plan.finetunes if st.key == k)) for k in (b.all_key, *b.fold_keys)}
    _, utts = load_dataset(DATASET, fresh_cache)
    tab = load_table(FeatureStore(fresh_cache), DATASET, "t")
    row = {uid: np.asarray(tab.values[i]) for i, uid in enumerate(tab.ids)}
    base_cfg = plan.stages[0].config
    encoders = {}

    def features_of(key: str, texts: list[str]) -> np.ndarray:
        if key not in encoders:
            ext = build_extractor("text-hf", {**base_cfg, "model": str(Path(plan.stages[0].config["model"]).parent / key)})
            ext.setup("cpu")
            encoders[key] = ext
        return np.stack(encoders[key].extract(texts))

    checked = 0
    for u in utts:
        if u.split != "train" or u.label_id is None:
            # dev/test rows come from the all-train encoder, which trained on every training dialogue
            assert metas[b.all_key]["dialogues"]["heldout"] == []
            continue
        # the fold membership recorded with the checkpoints, not only counts
        holders = [k for k in b.fold_keys if u.dialogue_id in metas[k]["dialogues"]["heldout"]]
        assert len(holders) == 1, u.id
        (k,) = holders
        assert u.dialogue_id not in metas[k]["dialogues"]["train"]
        assert all(u.dialogue_id in metas[j]["dialogues"]["train"] for j in b.fold_keys if j != k)
        # ... and the row in the cross-fitted feature set is that encoder's output for the utterance
        assert np.allclose(row[u.id], features_of(k, [u.text])[0], atol=1e-5), u.id
        assert not np.allclose(row[u.id], features_of(b.all_key, [u.text])[0], atol=1e-5), u.id
        checked += 1
    assert checked == len(b.fold_of) > 0


def test_cache_ls_and_the_features_summary_show_the_gap(fresh_cache, capsys):
    from mer_pipe.cache import checkpoints
    from mer_pipe.pipeline.cli import main

    args = ["features", "-d", DATASET, "--cache-dir", str(fresh_cache), "--only", "t", "--executor", "serial",
            "--no-progress", *[x for s in FT for x in ("--set", s)]]
    main(args)
    out = capsys.readouterr()
    assert "encoder W-F1 train" in out.err and "gap" in out.err  # the fine-tune's own line
    assert "t: fine-tuned encoder, epoch" in out.out and "W-F1 on its training rows" in out.out and "gap" in out.out
    main(args)  # cached: the summary still says it
    assert "W-F1 on its training rows" in capsys.readouterr().out
    (info,) = checkpoints.ls(FeatureStore(fresh_cache), DATASET)
    row = info.row()
    assert list(row)[6:9] == ["train W-F1", "dev W-F1", "gap"] and row["gap"] != "-" and row["held-out W-F1"] == "-"
    main(["cache", "ls", "--cache-dir", str(fresh_cache)])
    listing = capsys.readouterr().out
    assert "train W-F1" in listing and "gap" in listing and row["gap"] in listing


def _set_gap(path: str, train: float, dev: float) -> None:
    meta = _meta(path)
    meta["scores"]["train"]["weighted_f1"], meta["scores"]["dev"]["weighted_f1"] = train, dev
    meta["scores"]["gap"] = train - dev
    (Path(path) / "finetune.json").write_text(json.dumps(meta))


def test_train_warns_once_about_memorised_features_and_not_for_crossfitted_sets(fresh_cache):
    from mer_pipe.pipeline import api
    from mer_pipe.pipeline.corpus.leak import LEAK_GAP_POINTS, leak_warnings, slot_reports

    _run(fresh_cache)
    (st,) = _plan(fresh_cache).finetunes
    sf, = slot_reports(DATASET, ["t"], fresh_cache)
    assert sf.gap == pytest.approx(_meta(st.path)["scores"]["gap"]) and not sf.crossfit
    _set_gap(st.path, 0.90, 0.50)  # a memorising encoder: 40 points
    lines: list[str] = []
    api.train("mlp", DATASET, modalities="t", seeds="0", epochs=1, cache_dir=fresh_cache, out=fresh_cache / "run1",
              log=lines.append, progress=False, device="cpu")
    warned = [x for x in lines if "memorised training features" in x]
    assert len(warned) == 1 and "crossfit=5" in warned[0] and "40.0 W-F1 points" in warned[0]
    _set_gap(st.path, 0.50 + (LEAK_GAP_POINTS - 1) / 100, 0.50)  # under the threshold: silent
    assert leak_warnings(DATASET, ["t"], fresh_cache) == []

    # a cross-fitted set is never warned about, however memorised its fold encoders are
    plan = _plan(fresh_cache, CROSSFIT)
    _run(fresh_cache, CROSSFIT)
    for ft in plan.finetunes:
        _set_gap(ft.path, 0.95, 0.40)
    (sf,) = slot_reports(DATASET, ["t"], fresh_cache)
    assert sf.crossfit == 2 and sf.train_rows is not None
    lines = []
    api.train("mlp", DATASET, modalities="t", seeds="0", epochs=1, cache_dir=fresh_cache, out=fresh_cache / "run2",
              log=lines.append, progress=False, device="cpu")
    assert not [x for x in lines if "memorised" in x]
