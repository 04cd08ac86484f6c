"""`mer-pipe train / evaluate / demo` through the real CLI entry point: happy path and bad input."""
import json

import pytest
import torch

from conftest import run_cli
from test_train import DATASET, build_synth_features  # shared, built once per session


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    torch.set_num_threads(1)
    return build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")


def test_train_then_evaluate_reproduces(cache, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--model", "bigru", "--dataset", DATASET, "--cache-dir", cache, "--seeds", "0,1",
                              "--epochs", "2", "--set", "trainer.lr=3e-3", "--set", "model.hidden=32", "--out", run,
                              "--device", "cpu"], capsys)
    assert code == 0, err
    assert "run directory" in out and "test: acc" in out
    cfg = (run / "config.yaml").read_text()
    assert "hidden: 32" in cfg and "lr: 0.003" in cfg
    code, out, err = run_cli(["evaluate", run, "--cache-dir", cache, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "reproduced exactly" in out
    # the run's own config.yaml is a valid --config and reproduces the settings
    run2 = tmp_path / "run2"
    code, out, err = run_cli(["train", "--config", run / "config.yaml", "--cache-dir", cache, "--seeds", "0", "--out", run2], capsys)
    assert code == 0, err
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (run, run2))
    assert m1["runs"][0]["test"] == m2["runs"][0]["test"]


def test_unknown_model_lists_the_choices(capsys):
    code, _, err = run_cli(["train", "--model", "gpt5", "--dataset", DATASET], capsys)
    assert code == 2
    for name in ("ts-gcl", "ar-iigcn", "jv-icl", "deepmsi-mer", "mlp", "bigru"):
        assert name in err
    assert "gpt5" in err


def test_model_names_in_help_come_from_the_registry(capsys):
    """Help texts list the models read from the model modules' source (no torch import); that list is the
    populated registry's, so a new model file needs no edit elsewhere."""
    from mer_pipe.models import _all  # noqa: F401
    from mer_pipe.models.registry import MODELS
    from mer_pipe.pipeline import api

    assert api.names("model") == MODELS.names()
    for argv in (["train", "--help"], ["sweep", "--help"]):
        code, out, _ = run_cli(argv, capsys)
        assert code == 0
        assert all(name in " ".join(out.split()) for name in MODELS.names()), argv


def test_missing_features_names_the_features_command(cache, tmp_path, capsys):
    from mer_pipe.pipeline.corpus.prepare import prepare

    bare = tmp_path / "bare-cache"
    prepare("meld", cache.parent / "corpus", name=DATASET, cache_dir=bare)
    code, _, err = run_cli(["train", "--model", "mlp", "--dataset", DATASET, "--cache-dir", bare, "--modalities", "t"], capsys)
    assert code == 2
    assert f"`mer-pipe features --dataset {DATASET} --only t --cache-dir {bare}`" in err


def test_unprepared_dataset_names_prepare(tmp_path, capsys):
    code, _, err = run_cli(["train", "--model", "mlp", "--dataset", "nope", "--cache-dir", tmp_path], capsys)
    assert code == 2 and "mer-pipe prepare" in err


@pytest.mark.parametrize("argv, words", [
    (["--modalities", "t,x"], ["--modalities", "t,a,v"]),
    (["--set", "trainer.optimizer=sgd"], ["optimizer", "adam", "adamw"]),
    (["--set", "trainer.bogus=1"], ["bogus", "valid options"]),
    (["--set", "model.bogus=1"], ["bogus", "valid options"]),
    (["--select-on", "val"], ["--select-on", "dev", "test"]),
    (["--protocol", "loo"], ["--protocol", "kfold10-utterance"]),
    (["--seeds", "a,b"], ["--seeds", "0,1,2"]),
    (["--slot", "x=a_w2v"], ["--slot", "a=a_w2v"]),
])
def test_bad_options_are_one_line_errors(cache, argv, words, capsys):
    code, _, err = run_cli(["train", "--model", "mlp", "--dataset", DATASET, "--cache-dir", cache, "--epochs", "1", *argv], capsys)
    assert code == 2, err
    assert err.startswith("mer-pipe: error:") and err.count("\n") == 1
    for w in words:
        assert w in err


def test_evaluate_refuses_a_non_run_dir(tmp_path, capsys):
    code, _, err = run_cli(["evaluate", tmp_path], capsys)
    assert code == 2 and "checkpoint.pt" in err and "mer-pipe train" in err


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", tmp_path / "demo"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "demo" / "run" / "metrics.json").read_text())
    assert m["model"] == "ar-iigcn" and m["aggregate"]["test"]["weighted_f1"]["mean"] > 0.4
    assert "run directory" in out
