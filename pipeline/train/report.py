"""The run directory: config.yaml, metrics.json, predictions.csv, confusion.png, curves.png, checkpoint.pt.

Every file of a run selected on the test set, or run under the pooled k-fold protocol, carries the
protocol's warning (protocols.protocol_notes).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mer_pipe.common.errors import CacheError

from .metrics import aggregate
from .protocols import RunRecord

CHECKPOINT_FORMAT = 1
SCALARS = ("accuracy", "weighted_f1", "macro_f1")


def _seed_summary(records: Sequence[RunRecord], part: str) -> dict[str, float]:
    """Mean over a seed's folds (a single fold under the standard split) of the scalar metrics."""
    return {k: float(np.mean([getattr(r.result, part)[k] for r in records])) for k in SCALARS}


def summarize(records: Sequence[RunRecord], class_names: Sequence[str], notes: Sequence[str]) -> dict[str, Any]:
    """metrics.json content: every run, per-seed values (mean over folds) and mean ± std over seeds."""
    seeds = sorted({r.seed for r in records})
    by_seed = {s: [r for r in records if r.seed == s] for s in seeds}
    per_seed = {str(s): {p: _seed_summary(rs, p) for p in ("dev", "test")} for s, rs in by_seed.items()}
    agg: dict[str, Any] = {}
    for part in ("dev", "test"):
        agg[part] = {k: aggregate([per_seed[str(s)][part][k] for s in seeds]) for k in SCALARS}
        agg[part]["per_class"] = {
            name: {m: aggregate([float(np.mean([getattr(r.result, part)["per_class"][name][m] for r in rs]))
                                 for rs in by_seed.values()]) for m in ("precision", "recall", "f1")}
            for name in class_names
        }
        agg[part]["confusion_sum"] = np.sum([getattr(r.result, part)["confusion"] for r in records], axis=0).tolist()
    return {
        "notes": list(notes),
        "seeds": seeds,
        "runs": [{"seed": r.seed, "fold": r.fold, "best_epoch": r.result.best_epoch + 1,
                  "epochs_run": len(r.result.history), "seconds": r.result.seconds,
                  "seconds_per_epoch": r.result.seconds_per_epoch, "dev": r.result.dev, "test": r.result.test}
                 for r in records],
        "per_seed": per_seed,
        "aggregate": agg,
    }


def write_predictions(path: Path, records: Sequence[RunRecord], ids: Sequence[str], class_names: Sequence[str],
                      selected_on: str) -> None:
    """One row per (seed, fold, test utterance): id, gold, predicted, class probabilities. The
    `selected_on` column flags runs whose model was selected on the test set."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "fold", "selected_on", "id", "gold", "predicted", *[f"p_{c}" for c in class_names]])
        for r in records:
            p = r.result.test_predictions
            for i, g, y, pr in zip(p.idx, p.gold, p.pred, p.probs):
                w.writerow([r.seed, r.fold, selected_on, ids[i], class_names[g], class_names[y],
                            *[f"{x:.6f}" for x in pr]])


def plot_confusion(path: Path, confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> None:
    """Row-normalised confusion heat map with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(class_names), 0.8 + 0.75 * len(class_names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted"); ax.set_ylabel("gold"); ax.set_title(title, fontsize=9)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def plot_curves(path: Path, records: Sequence[RunRecord], select_on: str) -> None:
    """Training loss and selection-set weighted F1 per epoch, one line per (seed, fold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in records:
        h = r.result.history
        ep = [x["epoch"] + 1 for x in h]
        label = f"seed {r.seed}" + ("" if r.fold == "split" else f" {r.fold}")
        a.plot(ep, [x["train_loss"] for x in h], label=label)
        b.plot(ep, [x["dev_weighted_f1"] for x in h], label=label)
    a.set_xlabel("epoch"); a.set_ylabel("training loss")
    b.set_xlabel("epoch"); b.set_ylabel(f"{select_on} weighted F1 (selection)")
    if len(records) <= 10:
        b.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def default_run_dir(model: str, dataset: str, base: str | Path = "runs") -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(base) / f"{dataset}-{model}-{stamp}"


def write_run(run_dir: Path, config: dict[str, Any], records: Sequence[RunRecord], corpus, task_info) -> dict[str, Any]:
    """Write every run file; returns the metrics dict. `config` is the resolved config (config.yaml)."""
    import torch
    import yaml

    from .loop import to_plain

    run_dir.mkdir(parents=True, exist_ok=True)
    notes = config.get("notes", [])
    with open(run_dir / "config.yaml", "w", encoding="utf-8") as fh:
        for note in notes:
            fh.write(f"# {note}\n")
        yaml.safe_dump(to_plain(config), fh, sort_keys=False)
    metrics = summarize(records, corpus.class_names, notes)
    metrics = {"model": config["model"], "dataset": config["dataset"], "protocol": config["protocol"],
               "select_on": config["select_on"], **metrics}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_predictions(run_dir / "predictions.csv", records, corpus.ids, corpus.class_names, config["select_on"])
    tag = " [SELECTED ON TEST]" if config["select_on"] == "test" else ""
    t = metrics["aggregate"]["test"]
    plot_confusion(run_dir / "confusion.png", t["confusion_sum"], corpus.class_names,
                   f"{config['model']} on {config['dataset']} test (summed over runs){tag}\n"
                   f"W-F1 {t['weighted_f1']['mean']:.4f} ± {t['weighted_f1']['std']:.4f}")
    plot_curves(run_dir / "curves.png", records, config["select_on"])
    torch.save({
        "format": CHECKPOINT_FORMAT,
        "model": config["model"], "model_config": to_plain(config["model_config"]),
        "trainer": to_plain(config["trainer"]), "dataset": config["dataset"],
        "modalities": list(config["modalities"]), "features": to_plain(config["features"]),
        "protocol": config["protocol"], "select_on": config["select_on"], "notes": list(notes),
        "task": to_plain(dataclasses.asdict(task_info)), "manifest_digest": corpus.manifest_digest,
        "runs": [{"seed": r.seed, "fold": r.fold, "state_dict": r.result.state_dict, "test_ids": r.test_ids,
                  "feature_stats": r.result.stats,
                  "test": {k: r.result.test[k] for k in SCALARS}} for r in records],
    }, run_dir / "checkpoint.pt")
    return metrics


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """checkpoint.pt of a run dir, checked for the fields evaluate needs."""
    import torch

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise CacheError(f"{path} does not exist; pass a run directory written by `mer-pipe train` (it holds checkpoint.pt)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unpickling errors; all mean the same to the user
        raise CacheError(f"{path} cannot be read ({type(exc).__name__}: {exc}); retrain with `mer-pipe train`") from None
    need = ("format", "model", "model_config", "trainer", "dataset", "modalities", "features", "task", "runs")
    missing = [k for k in need if k not in ck] if isinstance(ck, dict) else list(need)
    if missing or ck.get("format") != CHECKPOINT_FORMAT:
        raise CacheError(f"{path} is not a mer-pipe checkpoint of format {CHECKPOINT_FORMAT} (missing {missing}); "
                         "retrain with `mer-pipe train`")
    return ck


def format_summary(metrics: dict[str, Any]) -> str:
    """A few human lines: test/dev accuracy and weighted F1, mean ± std over seeds."""
    lines = [*metrics.get("notes", [])]
    for part in ("dev", "test"):
        a = metrics["aggregate"][part]
        label = "selection (test)" if part == "dev" and metrics["select_on"] == "test" else part
        lines.append(f"{label:>16}: acc {a['accuracy']['mean']:.4f} ± {a['accuracy']['std']:.4f}   "
                     f"W-F1 {a['weighted_f1']['mean']:.4f} ± {a['weighted_f1']['std']:.4f}   "
                     f"macro-F1 {a['macro_f1']['mean']:.4f} ± {a['macro_f1']['std']:.4f}   "
                     f"(seeds {','.join(map(str, metrics['seeds']))})")
    return "\n".join(lines)
