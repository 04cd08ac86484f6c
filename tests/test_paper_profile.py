"""`--profile paper`: the specification's model and trainer values per model (each class's `paper_profile`
rows), the table in docs/models.md generated from them, what --print-config, the run dir and `runs` show, and
the k-fold remainder of one through the CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli
from mer_pipe.common.config import to_plain
from mer_pipe.models import _all  # noqa: F401  (registers every model)
from mer_pipe.models.base import SOURCES
from mer_pipe.models.registry import MODELS
from mer_pipe.pipeline.train.runconfig import paper_table, paper_table_markdown, resolve_run_config

NAMES = MODELS.names()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"
TABLE_START, TABLE_END = "<!-- paper-profile-table:start -->", "<!-- paper-profile-table:end -->"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resolved(name: str, profile: str, sets=()) -> dict:
    cfg = resolve_run_config({}, sets, model=name, dataset="x", profile=profile)
    return {**_flat(to_plain(cfg.model_config.to_dict()), "model."), **_flat(cfg.trainer.to_dict(), "trainer.")}


@pytest.mark.parametrize("name", NAMES)
def test_profile_paper_is_exactly_the_table(name):
    """Every row of the class's table is in the resolved config, and nothing else differs from the dev profile."""
    paper, dev = _resolved(name, "paper"), _resolved(name, "dev")
    rows = {r.key: to_plain(r.value) for r in MODELS.get(name).paper_profile}
    assert {k: paper[k] for k in rows} == rows
    assert {k for k in paper if paper[k] != dev[k]} == set(rows)


@pytest.mark.parametrize("name", NAMES)
def test_table_rows_are_well_formed(name):
    rows = paper_table(name)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a field listed twice"
    for r in rows:
        assert r["source"] in SOURCES and r["ref"], r
        assert r["paper"] != r["dev"], f"{r['key']}: the paper value equals the dev default, drop the row"
        assert r["key"].split(".")[0] in ("model", "trainer"), r


def test_the_four_published_models_set_their_specified_architecture():
    """The values issue 18 names, read from the table (not a copy of it)."""
    get = lambda name: {r.key: r.value for r in MODELS.get(name).paper_profile}  # noqa: E731
    assert get("ts-gcl")["model.d"] == 512 and get("ts-gcl")["model.context_layers"] == 2
    assert get("ts-gcl")["model.graph_window"] == 0 and get("ts-gcl")["model.head_skip"] == "none"
    assert get("ar-iigcn")["model.gen_residual"] is False
    assert get("jv-icl")["model.objective"] == "per_head"
    assert get("deepmsi-mer")["model.cls_norm"] == "batch"


def test_docs_table_matches_the_code():
    """docs/models.md carries the generated table verbatim; regenerate it with
    `python -c "from mer_pipe.pipeline.train.runconfig import paper_table_markdown as t; print(t())"`."""
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(re.escape(TABLE_START) + r"\n(.*?)\n" + re.escape(TABLE_END), text, re.S)
    assert m, f"docs/models.md lacks the {TABLE_START} ... {TABLE_END} block"
    assert m.group(1).strip() == paper_table_markdown()


def test_print_config_shows_the_paper_values_and_set_still_wins(capsys):
    code, out, err = run_cli(["train", "--model", "jv-icl", "--dataset", "x", "--profile", "paper", "--print-config",
                              "--set", "model.heads=4"], capsys)
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["profile"] == "paper"
    assert cfg["model_config"]["objective"] == "per_head" and cfg["model_config"]["d"] == 512
    assert cfg["model_config"]["heads"] == 4 and cfg["trainer"]["scheduler"] == "cosine"
    assert "# profile paper" in out and "model.objective: per_head (dev averaged" in out
    code, out, _ = run_cli(["train", "--model", "jv-icl", "--dataset", "x", "--profile", "paper", "--print-config",
                            "--set", "model.d=256"], capsys)
    assert code == 0 and yaml.safe_load(out)["model_config"]["d"] == 256


@pytest.mark.parametrize("model,key", [("ts-gcl", "d"), ("ts-gcl", "gnn_layers"), ("ts-gcl", "context_layers"),
                                       ("ar-iigcn", "d"), ("ar-iigcn", "head_hidden"), ("jv-icl", "d"),
                                       ("jv-icl", "heads"), ("jv-icl", "fusion_layers"), ("deepmsi-mer", "proj_dim"),
                                       ("deepmsi-mer", "cls_hidden"), ("mlp", "hidden"), ("bigru", "layers")])
def test_non_positive_widths_and_layer_counts_are_one_line_refusals(model, key, capsys):
    value = "[0]" if key in ("cls_hidden", "hidden") and model != "bigru" else "0"
    # an unprepared dataset: the config is refused before anything looks for data
    code, out, err = run_cli(["train", "--model", model, "--dataset", "nosuch", "--set", f"model.{key}={value}"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and f"model.{key}=" in err and "Traceback" not in err, err


def test_kfold_remainder_of_one_trains_and_the_run_records_the_profile(tmp_path, tmp_path_factory, capsys):
    """DeepMSI-MER, paper profile (BatchNorm classifier), its own protocol, a batch size that leaves one
    utterance in the last batch of the training folds: exit 0; config.yaml, metrics.json and `runs` say paper."""
    from test_train import DATASET, SMALL, build_synth_features

    from mer_pipe.pipeline.train.data import load_corpus
    from mer_pipe.pipeline.train.protocols import make_folds

    torch.set_num_threads(1)
    cache = build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")  # shared per session
    corpus = load_corpus(DATASET, ("t", "a", "v"), cache)
    sizes = [f.train.n_labelled for f in make_folds(corpus, "kfold10-utterance", "test", "utterance")]
    batch = min(sizes) - 1  # the smallest training folds leave exactly one utterance
    assert any(n % batch == 1 for n in sizes)
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--model", "deepmsi-mer", "--dataset", DATASET, "--cache-dir", cache,
                              "--protocol", "kfold10-utterance", "--select-on", "test", "--profile", "paper",
                              "--seeds", "0", "--epochs", "1", "--set", f"trainer.batch_size={batch}",
                              *[a for s in SMALL["deepmsi-mer"] for a in ("--set", s)],
                              "--out", run, "--device", "cpu", "--no-progress"], capsys)
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["profile"] == "paper"
    assert json.loads((run / "metrics.json").read_text())["profile"] == "paper"
    code, out, err = run_cli(["runs", run, "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["profile"] == "paper"


def test_jv_icl_per_head_objective_learns_through_the_trainer(tmp_path, tmp_path_factory):
    """objective=per_head: the trainer applies its loss to each head (ModelOutput.train_logits) and the model
    still learns the planted signal (same bar as tests/test_train.py)."""
    import numpy as np
    from sklearn.metrics import f1_score
    from test_train import DATASET, _train, build_synth_features

    from mer_pipe.pipeline.train.data import load_corpus

    cache = build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")
    _, metrics = _train("jv-icl", cache, tmp_path / "run", extra=["model.objective=per_head", "model.dual_ce_weight=0"])
    gold = load_corpus(DATASET, ("t", "a", "v"), cache)
    gold = gold.label[:-1].numpy()[gold.splits == "test"]
    base = f1_score(gold, np.full_like(gold, np.bincount(gold).argmax()), average="weighted")
    assert metrics["aggregate"]["test"]["weighted_f1"]["mean"] > base + 0.3
