"""Reference scores measured on a dataset's own cached features, to read a run's test W-F1 against.

Per modality a linear probe (standardised features, logistic regression fitted on the train split; frames
mean-pooled); a majority vote of the probes (ties go to the summed probabilities); and the majority-class
baseline. `reading(metrics, refs)` turns them and a run's metrics.json into the demo's "how to read these
numbers", so the sentence follows what this run shows instead of a fixed claim its own result can contradict.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mer_pipe.common.commands import command
from mer_pipe.common.modalities import MODALITIES, MODALITY_NAMES as NAMES


@dataclass(frozen=True)
class References:
    single: dict[str, float]  # modality -> test W-F1 of its linear probe
    vote: float  # test W-F1 of the majority vote of the probes
    majority: float  # test W-F1 of always predicting the most frequent training class
    n_test: int


def _pooled(values, valid: np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values if values.ndim == 2 else values.mean(axis=1)
    return np.stack([v.mean(axis=0) if len(v) and ok else np.zeros(v.shape[-1] if v.ndim == 2 else 0, np.float32)
                     for v, ok in zip(values, valid)])


def measure(dataset: str, cache_dir: str | Path, modalities: tuple[str, ...] = MODALITIES,
            slots: dict[str, str] | None = None, seed: int = 0) -> References:
    """Probe each modality's locked slot of `dataset` (train -> test); failed rows predict the majority class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from mer_pipe.cache.loading import load_table
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    info, utts = load_dataset(dataset, cache_dir)
    store = FeatureStore(cache_dir)
    y = np.array([-1 if u.label_id is None else u.label_id for u in utts])
    split = np.array([u.split for u in utts])
    train, test = (split == "train") & (y >= 0), (split == "test") & (y >= 0)
    n_classes = len(info["label_names"])
    majority = int(np.bincount(y[train], minlength=n_classes).argmax())
    probs: dict[str, np.ndarray] = {}
    for m in modalities:
        table = load_table(store, dataset, (slots or {}).get(m, m), info["manifest_digest"])
        pos = table.index()
        order = [pos[u.id] for u in utts]
        x = _pooled(table.values, table.valid)[order]
        ok = table.valid[order]
        fit = train & ok
        scaler = StandardScaler().fit(x[fit])
        clf = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(x[fit]), y[fit])
        p = np.zeros((len(utts), n_classes))
        p[:, clf.classes_] = clf.predict_proba(scaler.transform(x))
        p[~ok] = np.eye(n_classes)[majority]
        probs[m] = p
    gold = y[test]
    single = {m: float(f1_score(gold, p[test].argmax(1), average="weighted", zero_division=0)) for m, p in probs.items()}
    votes = sum(np.eye(n_classes)[p[test].argmax(1)] for p in probs.values())
    soft = sum(p[test] for p in probs.values())
    vote_pred = (votes + 1e-6 * soft).argmax(1)  # most votes; ties go to the summed probabilities
    return References(single=single, vote=float(f1_score(gold, vote_pred, average="weighted", zero_division=0)),
                      majority=float(f1_score(gold, np.full_like(gold, majority), average="weighted", zero_division=0)),
                      n_test=int(test.sum()))


def reading(metrics: dict, refs: References) -> str:
    """'How to read these numbers', stated from this run's metrics and the measured references."""
    agg = metrics["aggregate"]
    test, dev = agg["test"]["weighted_f1"]["mean"], agg["dev"]["weighted_f1"]["mean"]
    std = agg["test"]["weighted_f1"].get("std", 0.0)
    best_m = max(refs.single, key=refs.single.get)
    best = refs.single[best_m]
    singles = ", ".join(f"{NAMES.get(m, m)} {v:.4f}" for m, v in refs.single.items())
    head = (f"How to read these numbers (measured on this corpus's {refs.n_test} test utterances): a linear probe on "
            f"one modality alone reaches test W-F1 {singles}; a majority vote of the {len(refs.single)} probes "
            f"{refs.vote:.4f}; always predicting the most frequent class {refs.majority:.4f}. This run's test W-F1 "
            f"is {test:.4f} (± {std:.4f} over seeds): ")
    margin = max(std, 0.01)
    if test > refs.vote + margin:
        verdict = "above the vote of separate single-modality probes, so the model fuses the modalities better than voting."
    elif test > best + margin:
        verdict = (f"above every single modality (best: {NAMES.get(best_m, best_m)} {best:.4f}), so it combines them, "
                   f"but not above the vote of the probes ({refs.vote:.4f}): fusion here does not beat a simple vote.")
    elif test > refs.majority + margin:
        verdict = (f"not above the best single modality ({NAMES.get(best_m, best_m)} {best:.4f}) by more than the "
                   "seed noise, so this run does not show that the model fuses the modalities.")
    else:
        verdict = ("no better than predicting the most frequent class: the model learned nothing usable; check the "
                   f"features (`{command('cache', 'verify')}`) and the training curves.")
    if dev > test:
        tail = (f" Dev ({dev:.4f}) sits above test because the epoch and weights were selected on dev; test is "
                "reported once, untouched.")
    else:
        tail = (f" Dev ({dev:.4f}) is not above test here although the epoch was selected on dev: with this few dev "
                "utterances the selection score is noisy.")
    return head + verdict + tail
