"""The demo's "how to read these numbers": references measured on the corpus, a verdict that follows the run."""
import pytest
import torch

from test_train import DATASET, build_synth_features  # shared, built once per session


def _metrics(test, dev, std=0.005):
    return {"aggregate": {"test": {"weighted_f1": {"mean": test, "std": std}}, "dev": {"weighted_f1": {"mean": dev}}}}


@pytest.mark.parametrize("test, words", [
    (0.90, "fuses the modalities better than voting"),
    (0.75, "combines them, but not above the vote of the probes (0.8000)"),
    (0.70, "does not show that the model fuses the modalities"),
    (0.20, "no better than predicting the most frequent class"),
])
def test_the_verdict_follows_the_run(test, words):
    from mer_pipe.pipeline.experiments.references import References, reading

    refs = References(single={"t": 0.66, "a": 0.70, "v": 0.68}, vote=0.80, majority=0.19, n_test=100)
    text = reading(_metrics(test, test + 0.05), refs)
    assert words in text and f"is {test:.4f}" in text and "text 0.6600, audio 0.7000, video 0.6800" in text
    assert "well above 0.7" not in text
    assert "not above test here" in reading(_metrics(0.75, 0.70), refs)


def test_measured_on_the_cached_features(tmp_path_factory):
    from mer_pipe.pipeline.experiments.references import measure

    torch.set_num_threads(1)
    cache = build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")
    refs = measure(DATASET, cache)
    assert set(refs.single) == {"t", "a", "v"} and refs.n_test > 0
    assert all(refs.majority < v <= 1 for v in [*refs.single.values(), refs.vote])  # every planted cue is learnable
