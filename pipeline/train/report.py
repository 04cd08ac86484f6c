"""The run directory: config.yaml, metrics.json, predictions.csv, confusion.png, curves.png, checkpoint.pt.

Every file of a run selected on the test set, or run under the pooled k-fold protocol, carries the
protocol's warning (protocols.protocol_notes).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mer_pipe.common.commands import command
from mer_pipe.common.errors import CacheError
from mer_pipe.common.formatting import format_mean_std  # of an aggregate: mean ± std over seeds

from .metrics import aggregate
from .protocols import RunRecord
from .runcheck import FIGURES

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


def write_predictions(fh, records: Sequence[RunRecord], ids: Sequence[str], class_names: Sequence[str],
                      selected_on: str) -> None:
    """One row per (seed, fold, test utterance): id, gold, predicted, class probabilities. The
    `selected_on` column flags runs whose model was selected on the test set."""
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(["seed", "fold", "selected_on", "id", "gold", "predicted", *[f"p_{c}" for c in class_names]])
    for r in records:
        p = r.result.test_predictions
        for i, g, y, pr in zip(p.idx, p.gold, p.pred, p.probs):
            w.writerow([r.seed, r.fold, selected_on, ids[i], class_names[g], class_names[y], *[f"{x:.6f}" for x in pr]])


def default_run_dir(model: str, dataset: str, base: str | Path = "runs") -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(base) / f"{dataset}-{model}-{stamp}"


def write_run(run_dir: Path, cfg, records: Sequence[RunRecord], corpus, *, notes: Sequence[str],
              cache_root: Path, complete: bool, wall_seconds: float) -> dict[str, Any]:
    """Write every run file atomically; returns the metrics dict. Called after each finished seed too
    (`complete=False`), so an interrupted multi-seed run keeps the seeds it finished.

    Order: checkpoint.pt (with the record of the metrics and predictions, runcheck.py), then config.yaml,
    predictions.csv and the figures, and metrics.json last, holding the checksums of the others: a write that
    fails (a full disk) leaves no metrics.json that claims what is not there."""
    import io

    import torch

    from mer_pipe.common.config import to_plain
    from mer_pipe.common.files import atomic_path, write_json_atomic, write_text_atomic

    from .runcheck import DIGEST_KEY, FILES_KEY, metrics_digest, plain_metrics, sha256_bytes, sha256_file
    from .runconfig import config_yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"cache_dir": str(cache_root), "features": corpus.features}
    config_text = config_yaml(cfg, notes) + yaml_block(meta)
    metrics = {"model": cfg.model, "dataset": cfg.dataset, "modalities": list(cfg.modalities),
               "protocol": cfg.protocol, "select_on": cfg.select_on, "profile": cfg.profile, "complete": complete,
               "seeds_planned": list(cfg.seeds), "wall_seconds": wall_seconds, **meta,
               "manifest_digest": corpus.manifest_digest,  # runs compare: same utterances under two dataset names
               **summarize(records, corpus.class_names, notes)}
    buf = io.StringIO()
    write_predictions(buf, records, corpus.ids, corpus.class_names, cfg.select_on)
    predictions = buf.getvalue()
    texts = {"config.yaml": config_text, "predictions.csv": predictions}
    text_shas = {n: sha256_bytes(t.encode("utf-8")) for n, t in texts.items()}  # the bytes write_text_atomic writes
    blob = io.BytesIO()  # serialised in memory: torch's zip writer turns ENOSPC into a bare RuntimeError
    torch.save({
        "format": CHECKPOINT_FORMAT, "model": cfg.model, "model_config": cfg.model_config.to_dict(),
        "trainer": cfg.trainer.to_dict(), "dataset": cfg.dataset, "cache_dir": str(cache_root),
        "modalities": list(cfg.modalities), "features": to_plain(corpus.features),
        "protocol": cfg.protocol, "select_on": cfg.select_on, "notes": list(notes),
        "task": to_plain(dataclasses.asdict(corpus.task)), "manifest_digest": corpus.manifest_digest,
        "runs": [{"seed": r.seed, "fold": r.fold, "state_dict": r.result.state_dict, "test_ids": r.test_ids,
                  "feature_stats": r.result.stats,
                  "test": {k: r.result.test[k] for k in SCALARS}} for r in records],
        "record": {"metrics": plain_metrics(metrics), "predictions_csv": predictions,
                   FILES_KEY: text_shas},
    }, blob)
    with atomic_path(run_dir / "checkpoint.pt") as tmp:
        tmp.write_bytes(blob.getbuffer())
    for name, text in texts.items():
        write_text_atomic(run_dir / name, text)
    write_figures(run_dir, cfg, records, metrics, corpus.class_names)
    shas = {"checkpoint.pt": sha256_bytes(blob.getbuffer()), **text_shas}  # hashed in memory, as written
    shas.update((p, sha256_file(run_dir / p)) for p in FIGURES if (run_dir / p).is_file())
    final = {**metrics, FILES_KEY: shas}
    final[DIGEST_KEY] = metrics_digest(final)
    write_json_atomic(run_dir / "metrics.json", final, sort_keys=False)  # last: the run is complete only now
    return metrics


def yaml_block(data: dict[str, Any]) -> str:
    import yaml

    from mer_pipe.common.config import to_plain

    return f"# where the features came from (read by `{command('evaluate')}`; ignored by --config)\n" + \
        yaml.safe_dump(to_plain(data), sort_keys=False)


def write_figures(run_dir: Path, cfg, records: Sequence[RunRecord], metrics: dict[str, Any],
                  class_names: Sequence[str]) -> None:
    """confusion.png, per_class_f1.png and curves.png (pipeline/train/plots.py)."""
    from .plots import plot_confusion, plot_curves, plot_per_class_f1

    tag = " [SELECTED ON TEST]" if cfg.select_on == "test" else ""
    t = metrics["aggregate"]["test"]
    head = f"{cfg.model} on {cfg.dataset} test{tag}: W-F1 {format_mean_std(t['weighted_f1'])}"
    plot_confusion(run_dir / "confusion.png", t["confusion_sum"], class_names, f"{head}\n(counts summed over seeds)")
    plot_per_class_f1(run_dir / "per_class_f1.png", t["per_class"], class_names, f"{head}\nper-class F1 (± std over seeds)")
    runs = [{"seed": r.seed, "fold": r.fold, "best_epoch": r.result.best_epoch, "history": r.result.history}
            for r in records]
    plot_curves(run_dir / "curves.png", runs, model=cfg.model, dataset=cfg.dataset, select_on=cfg.select_on)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """checkpoint.pt of a run dir, checked for the fields evaluate needs."""
    import torch

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise CacheError(f"{path} does not exist; pass a run directory written by `{command('train')}` (it holds checkpoint.pt)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unpickling errors; all mean the same to the user
        raise CacheError(f"{path} cannot be read ({type(exc).__name__}: {exc}); retrain with `{command('train')}`") from None
    need = ("format", "model", "model_config", "trainer", "dataset", "modalities", "features", "task", "runs")
    missing = [k for k in need if k not in ck] if isinstance(ck, dict) else list(need)
    if missing or ck.get("format") != CHECKPOINT_FORMAT:
        raise CacheError(f"{path} is not a mer-pipe checkpoint of format {CHECKPOINT_FORMAT} (missing {missing}); "
                         f"retrain with `{command('train')}`")
    return ck


def format_summary(metrics: dict[str, Any]) -> str:
    """A few human lines: test/dev accuracy and weighted F1, mean ± std over seeds."""
    lines = [*metrics.get("notes", [])]
    for part in ("dev", "test"):
        a = metrics["aggregate"][part]
        label = "selection (test)" if part == "dev" and metrics["select_on"] == "test" else part
        lines.append(f"{label:>16}: acc {format_mean_std(a['accuracy'])}   W-F1 {format_mean_std(a['weighted_f1'])}   "
                     f"macro-F1 {format_mean_std(a['macro_f1'])}   (seeds {','.join(map(str, metrics['seeds']))})")
    return "\n".join(lines)
