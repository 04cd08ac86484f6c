"""`mer-pipe evaluate RUN_DIR`: reload a checkpoint and the features it was trained on, re-score the test
utterances of every stored (seed, fold) and compare with the metrics saved at training time."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mer_pipe.common.commands import command
from mer_pipe.common.errors import CacheError

from .data import load_corpus, make_view
from .metrics import aggregate, classification_metrics
from .report import SCALARS, load_checkpoint


def task_from_dict(d: dict[str, Any]):
    """TaskInfo from its checkpoint form (lists back to tuples)."""
    from mer_pipe.models.batch import TaskInfo

    return TaskInfo(
        n_classes=int(d["n_classes"]), class_names=tuple(d["class_names"]),
        in_dims={k: int(v) for k, v in d["in_dims"].items()},
        frame_shapes={k: tuple(int(x) for x in v) for k, v in d.get("frame_shapes", {}).items()},
        max_speakers=int(d.get("max_speakers", 9)),
        class_polarities=tuple(tuple(int(x) for x in p) for p in d.get("class_polarities", ())),
    )


def evaluate_run(run_dir: str | Path, cache_dir: str | Path | None = None, device: str = "cpu",
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Re-score a run. Refuses (CacheError) features whose key differs from the checkpoint's.

    Returns {"runs": [{seed, fold, test, stored, reproduced}], "aggregate": {...}, "reproduced": bool,
    "problems": [...]}: `problems` names each run file (and field) that differs from what training wrote
    (runcheck.py); any makes `reproduced` False.
    """
    from mer_pipe.models import _all  # noqa: F401  (registers every model)
    from mer_pipe.models.registry import MODELS, build_model

    from .loop import TrainConfig, predict

    met = _metrics_json(Path(run_dir))  # read once: the checksums and the record checks both use it
    tampered = checkpoint_changed(Path(run_dir), met)
    try:
        ck = load_checkpoint(Path(run_dir))
    except CacheError as exc:
        if tampered:  # corruption or tampering first: the record says the file is not what training wrote
            raise CacheError(f"{tampered}; {exc}") from None
        raise
    problems = ([tampered] if tampered else []) + record_problems(Path(run_dir), ck, met)
    if log:
        for p in problems:
            log(f"DIFFERS: {p}")
    modalities = tuple(ck["modalities"])
    feats = ck["features"]
    if cache_dir is None:
        cache_dir = ck.get("cache_dir")  # the run remembers its cache: evaluate works from any directory
    corpus = load_corpus(ck["dataset"], modalities, cache_dir,
                         slot_overrides={m: f["slot"] for m, f in feats.items()},
                         expected_keys={m: f["key"] for m, f in feats.items()})
    task = task_from_dict(ck["task"])
    if tuple(corpus.class_names) != task.class_names or corpus.task.in_dims != task.in_dims:
        raise CacheError(
            f"dataset {ck['dataset']!r} now has classes {list(corpus.class_names)} and feature widths "
            f"{corpus.task.in_dims}; the checkpoint in {run_dir} expects {list(task.class_names)} / {task.in_dims}; "
            f"re-prepare the dataset the run was trained on, or retrain with `{command('train')}`"
        )
    cfg = TrainConfig.from_dict(ck["trainer"])
    pos = corpus.index_of()
    out_runs = []
    for run in ck["runs"]:
        missing = [u for u in run["test_ids"] if u not in pos]
        if missing:
            raise CacheError(f"test utterance {missing[0]!r} of {run_dir} (seed {run['seed']}, {run['fold']}) is not in "
                             f"dataset {ck['dataset']!r} any more ({len(missing)} missing); re-prepare the same corpus")
        keep = np.zeros(corpus.n, dtype=bool)
        keep[[pos[u] for u in run["test_ids"]]] = True
        model = build_model(ck["model"], task, modalities, MODELS.get(ck["model"]).config_cls.from_saved(ck["model_config"]))
        model.load_state_dict(run["state_dict"])
        model.to(device)
        p = predict(model, corpus, make_view(corpus, keep, cfg.unit), cfg.eval_batch_size, device, cfg.amp,
                    run.get("feature_stats") or {})
        m = classification_metrics(p.gold, p.pred, corpus.class_names)
        ok = all(m[k] == run["test"][k] for k in SCALARS)
        out_runs.append({"seed": run["seed"], "fold": run["fold"], "test": m, "stored": run["test"], "reproduced": ok})
        if log:
            log(f"seed {run['seed']} {run['fold']}: test acc {m['accuracy']:.4f} W-F1 {m['weighted_f1']:.4f} "
                f"(stored {run['test']['accuracy']:.4f} / {run['test']['weighted_f1']:.4f}) "
                f"{'reproduced' if ok else 'DIFFERS'}")
    seeds = sorted({r["seed"] for r in out_runs})
    per_seed = {s: {k: float(np.mean([r["test"][k] for r in out_runs if r["seed"] == s])) for k in SCALARS} for s in seeds}
    agg = {k: aggregate([per_seed[s][k] for s in seeds]) for k in SCALARS}
    for note in ck.get("notes", []):
        if log:
            log(note)
    return {"runs": out_runs, "aggregate": {"test": agg}, "problems": problems, "recorded": "record" in ck,
            "reproduced": not problems and all(r["reproduced"] for r in out_runs)}


def _metrics_json(run_dir: Path) -> dict[str, Any] | None:
    import json

    try:
        met = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return met if isinstance(met, dict) else None


def checkpoint_changed(run_dir: Path, met: dict[str, Any] | None) -> str | None:
    """A sentence when checkpoint.pt's sha256 differs from the one metrics.json (`met`, None: unreadable)
    recorded (None when it matches or nothing was recorded)."""
    from .runcheck import FILES_KEY, sha256_file

    files = (met or {}).get(FILES_KEY)
    want = files.get("checkpoint.pt") if isinstance(files, dict) else None
    path = run_dir / "checkpoint.pt"
    if not isinstance(want, str) or not path.is_file() or sha256_file(path) == want:
        return None
    return ("checkpoint.pt: sha256 differs from the one metrics.json recorded when the run was written (the file "
            "is corrupted or was replaced)")


def record_problems(run_dir: Path, ck: dict[str, Any], met: dict[str, Any] | None) -> list[str]:
    """metrics.json (`met`, None: missing or unreadable) and predictions.csv against the checkpoint's record;
    one sentence per differing file."""
    from .runcheck import DIGEST_KEY, metrics_difference, metrics_digest, predictions_difference

    rec = ck.get("record")
    if not isinstance(rec, dict):
        return []  # a run written before records existed: re-scoring is the only check
    problems = []
    if met is None:
        problems.append("metrics.json: missing or unreadable; the checkpoint has the record of it")
    else:
        diff = metrics_difference(met, rec.get("metrics", {}))
        if diff is None and isinstance(met.get(DIGEST_KEY), str) and met[DIGEST_KEY] != metrics_digest(met):
            diff = "metrics.json: field files (the checksums) differs from what was written (its digest does not match)"
        if diff:
            problems.append(diff)
    try:
        text = (run_dir / "predictions.csv").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"predictions.csv: unreadable ({type(exc).__name__}); the checkpoint has the record of it")
    else:
        diff = predictions_difference(text, rec.get("predictions_csv", ""))
        if diff:
            problems.append(diff)
    return problems
