"""Classification metrics, class weights and the focal loss (models.md §1.3).

Weighted F1 and accuracy are `common.training`'s (`sklearn.metrics.f1_score(average="weighted")`, shared with the
fine-tune stage), and so are class counts and weights (re-exported here); per-class numbers are the true
per-class precision / recall / F1. `deepmsi_per_class_metrics` reproduces DeepMSI's non-standard per-class
"Acc"/"F1" columns (recall and 2R/(1+R)) for reproduction checks only: never report it as per-class F1.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mer_pipe.common.training import accuracy, class_counts, class_weights_from_counts, weighted_f1


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted F1, macro F1, per-class P/R/F1/support and the confusion matrix.

    y_true, y_pred: [U] class ids in 0..C-1. Classes absent from both count with F1 = 0 in the macro
    average only if they appear (sklearn `labels=` over all C classes, zero_division=0).
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(len(class_names)))
    if y_true.size == 0:
        return {"n": 0, "accuracy": float("nan"), "weighted_f1": float("nan"), "macro_f1": float("nan"),
                "per_class": {}, "confusion": [[0] * len(labels) for _ in labels]}
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(y_true.size),
        "accuracy": accuracy(y_true, y_pred),
        "weighted_f1": weighted_f1(y_true, y_pred, labels),  # the fine-tune stage's score too (common/training.py)
        # sklearn's default macro: over the classes seen in gold or predictions (the usual convention).
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "support": int(s[c])}
            for c, name in enumerate(class_names)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def deepmsi_per_class_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """DeepMSI's per-class columns, computed the way its runner does (models.md §5.8).

    For each class c: "acc" = recall of c; "f1" = weighted F1 on the subset whose *true* label is c,
    which equals 2R/(1+R) because precision is trivially 1 there. Reproduction only.
    """
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(class_names):
        sel = y_true == c
        if not sel.any():
            continue
        t, pr = y_true[sel], y_pred[sel]
        out[name] = {"acc": float((t == pr).mean()), "f1": float(f1_score(t, pr, average="weighted", zero_division=0))}
    return out


def focal_loss(logits, target, gamma: float = 2.0, weight=None):
    """Mean focal loss. logits [M, C], target [M] long; weight [C] optional class weights (alpha).

    FL = -w_y (1 - p_y)^gamma log p_y, averaged like weighted cross-entropy (sum / sum of w_y) so that
    gamma = 0 equals `F.cross_entropy(logits, target, weight=weight)`.
    """
    import torch
    import torch.nn.functional as F

    logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
    mod = (1.0 - logp.exp()).clamp_min(0.0) ** gamma
    w = torch.ones_like(logp) if weight is None else weight.to(logp)[target]
    return -(w * mod * logp).sum() / w.sum().clamp_min(1e-12)


def aggregate(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std (ddof=1; 0 for a single value) of a list of numbers."""
    v = np.asarray(list(values), dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


__all__ = ["aggregate", "class_counts", "class_weights_from_counts", "classification_metrics",
           "deepmsi_per_class_metrics", "focal_loss"]
