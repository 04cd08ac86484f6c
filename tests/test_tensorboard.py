"""TensorBoard event files of a run, read back with TensorBoard's own EventAccumulator."""
import json

import pytest
import torch

from test_train import DATASET, build_synth_features  # shared, built once per session


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from mer_pipe.pipeline import api

    torch.set_num_threads(1)
    cache = build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")
    out = tmp_path_factory.mktemp("tb") / "run"
    cfg = api.train_config("bigru", DATASET, seeds="0,1", epochs=3, sets=["trainer.lr=3e-3", "model.hidden=16"],
                           device="cpu")
    api.train(config=cfg, out=out, cache_dir=cache, log=lambda s: None, progress=False)
    return out


def _load(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    """(step, value) pairs of a scalar tag (written by torch as scalars, or as tensors by newer writers)."""
    if tag in acc.Tags().get("scalars", []):
        return [(e.step, e.value) for e in acc.Scalars(tag)]
    from tensorboard.util import tensor_util

    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def test_every_fit_logs_its_epochs(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1]
    for seed in (0, 1):
        acc = _load(run_dir / "tensorboard" / f"seed-{seed}")
        tags = set(acc.Tags()["scalars"])
        assert {"train/loss", "train/loss_main", "dev/weighted_f1", "dev/accuracy", "dev/loss", "lr"} <= tags
        assert [s for s, _ in _scalars(acc, "train/loss")] == [1, 2, 3]
        assert all(v == pytest.approx(3e-3) for _, v in _scalars(acc, "lr"))
        dev = dict(_scalars(acc, "dev/weighted_f1"))
        run = next(r for r in metrics["runs"] if r["seed"] == seed)
        # the selected epoch's dev W-F1 is the best logged one, and it is the one metrics.json reports
        assert max(dev.values()) == pytest.approx(run["dev"]["weighted_f1"], abs=1e-6)
        assert dev[run["best_epoch"]] == pytest.approx(run["dev"]["weighted_f1"], abs=1e-6)


def test_hparams_and_final_metrics(run_dir):
    from tensorboard.plugins.hparams import metadata

    metrics = json.loads((run_dir / "metrics.json").read_text())
    acc = _load(run_dir / "tensorboard")
    agg = metrics["aggregate"]
    for part in ("dev", "test"):
        (step, value), = _scalars(acc, f"final/{part}_weighted_f1")
        assert value == pytest.approx(agg[part]["weighted_f1"]["mean"], abs=1e-6)
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert hp["model"] == "bigru" and hp["dataset"] == DATASET and hp["seeds"] == "0,1"
    assert hp["trainer.lr"] == pytest.approx(3e-3) and hp["model_config.hidden"] == 16 and hp["trainer.epochs"] == 3
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    names = {m.name.tag for m in experiment.metric_infos}
    assert {"final/dev_weighted_f1", "final/test_weighted_f1", "final/test_accuracy"} <= names


def test_overwrite_replaces_the_curves(run_dir, tmp_path):
    import shutil

    from mer_pipe.pipeline.train.progress import RunBoard, flat_hparams

    shutil.copytree(run_dir / "tensorboard", tmp_path / "tensorboard")
    board = RunBoard(tmp_path, {"model": "x"}, log=lambda s: None)  # what --overwrite does before training
    assert not (tmp_path / "tensorboard").exists() and board.enabled
    assert flat_hparams({"a": {"b": 1, "c": None}, "t": (1, 2), "x": [{"no": 1}], "f": True}) == \
        {"a.b": 1, "a.c": "none", "t": "1,2", "f": True}
