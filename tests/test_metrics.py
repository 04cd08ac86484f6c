"""Metrics against sklearn, DeepMSI's per-class artefact (models.md §8.7.1), class weights (§8.7.2), focal loss."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from mer_pipe.pipeline.train.metrics import (aggregate, class_counts, class_weights_from_counts, classification_metrics,
                                       deepmsi_per_class_metrics, focal_loss)

NAMES = ("happy", "sad", "neutral", "angry", "excited", "frustrated")


def test_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 500)
    p = np.where(rng.random(500) < 0.6, y, rng.integers(0, 6, 500))
    m = classification_metrics(y, p, NAMES)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    pr, rc, f, s = precision_recall_fscore_support(y, p, labels=range(6))
    for c, name in enumerate(NAMES):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((pr[c], rc[c], f[c], s[c]))
    assert m["confusion"] == confusion_matrix(y, p, labels=range(6)).tolist()


def test_absent_class_gets_zero_row_and_full_confusion():
    m = classification_metrics([0, 0, 1], [0, 1, 1], ("a", "b", "c"))
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert np.array(m["confusion"]).shape == (3, 3)


def test_deepmsi_per_class_is_2r_over_1_plus_r_and_not_the_true_f1():
    # class 1 ("sad"): 8 gold, 7 right (R = 0.875); two other-class utterances predicted as sad.
    y = np.array([1] * 8 + [0] * 10 + [2] * 10)
    p = np.array([1] * 7 + [0] + [0] * 9 + [1] + [2] * 9 + [1])
    compat = deepmsi_per_class_metrics(y, p, NAMES)
    true = classification_metrics(y, p, NAMES)["per_class"]
    assert compat["sad"]["acc"] == pytest.approx(0.875)
    assert compat["sad"]["f1"] == pytest.approx(2 * 0.875 / 1.875, abs=1e-12)
    assert round(compat["sad"]["f1"], 4) == 0.9333
    for name in ("happy", "sad", "neutral"):
        r = compat[name]["acc"]
        assert compat[name]["f1"] == pytest.approx(2 * r / (1 + r))
        assert true[name]["recall"] == pytest.approx(r)
    assert abs(true["sad"]["f1"] - compat["sad"]["f1"]) > 0.1  # precision 7/9 pulls the true F1 down
    assert "angry" not in compat  # no gold utterances: the artefact is undefined


def test_iemocap_class_weights_sessions_1_to_4():
    counts = class_counts(np.repeat(np.arange(6), [504, 839, 1324, 933, 742, 1468]), 6)
    assert counts.tolist() == [504, 839, 1324, 933, 742, 1468]
    w = class_weights_from_counts(counts)
    ref = 1.0 / np.array([0.086747, 0.144406, 0.227883, 0.160585, 0.127711, 0.252668])
    np.testing.assert_allclose(1.0 / w, [0.086747, 0.144406, 0.227883, 0.160585, 0.127711, 0.252668], atol=5e-7)
    np.testing.assert_allclose(w, ref, rtol=1e-5)


def test_class_weights_ignore_unlabelled_and_zero_for_empty_class():
    c = class_counts([0, 0, 1, -1, -1], 3)
    assert c.tolist() == [2, 1, 0]
    assert class_weights_from_counts(c).tolist() == pytest.approx([1.5, 3.0, 0.0])


def test_focal_loss_gamma_zero_is_weighted_cross_entropy_and_downweights_easy():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(40, 5, generator=g), torch.randint(0, 5, (40,), generator=g)
    w = torch.rand(5, generator=g) + 0.5
    ce = torch.nn.functional.cross_entropy(logits, target, weight=w)
    assert focal_loss(logits, target, 0.0, w).item() == pytest.approx(ce.item(), rel=1e-6)
    assert focal_loss(logits, target, 2.0, w).item() < ce.item()


def test_aggregate_mean_and_sample_std():
    a = aggregate([0.5, 0.6, 0.7])
    assert a["mean"] == pytest.approx(0.6) and a["std"] == pytest.approx(0.1) and a["n"] == 3
    assert aggregate([0.4])["std"] == 0.0
