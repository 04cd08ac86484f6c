"""The results of a sweep: per-config scores over seeds, the selection, the seed-aggregate run dir of a config,
and the tables of sweep.md (sweep.py explains the layout and the selection rule). The run dirs' JSON files are
read through a `read` callable; the sweep driver passes a RunFiles, which reads each once per command."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mer_pipe.common.formatting import pct
from mer_pipe.pipeline.train.runconfig import RunConfig

SCALARS = ("accuracy", "weighted_f1", "macro_f1")
NOT_FOR_SELECTION = ("NOT FOR SELECTION: test scores of every config, for reading after the choice was made on "
                     "the selection set; picking a config from this table is selecting on test")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


Read = Callable[[Path], Any]


class RunFiles:
    """read_json with memory: each file (metrics.json, cv.json, sweep_task.json of a run dir) is read once per
    sweep command, and again only after `forget(run_dir)`, which the driver calls when that dir's task finished
    (here or in another sweep) or when it wrote the dir itself."""

    def __init__(self) -> None:
        self._seen: dict[Path, Any] = {}

    def __call__(self, path: Path) -> Any:
        path = Path(path)
        if path not in self._seen:
            self._seen[path] = read_json(path)
        return self._seen[path]

    def forget(self, run_dir: Path) -> None:
        for path in [p for p in self._seen if p.parent == Path(run_dir)]:
            del self._seen[path]


def _seed_metrics(sweep_dir: Path, entry: Mapping[str, Any], read: Read) -> list[dict[str, Any]]:
    out = []
    for t in entry["tasks"]:
        if t["state"] in ("done", "reused"):
            met = read(sweep_dir / t["dir"] / "metrics.json")
            if isinstance(met, dict):
                out.append(met)
    return out


def _agg(values: Sequence[float]) -> dict[str, float]:
    from mer_pipe.pipeline.train.metrics import aggregate

    return aggregate(values)


def config_row(sweep_dir: Path, entry: Mapping[str, Any], read: Read = read_json) -> dict[str, Any]:
    """Per-config scores over its finished seeds: selection set ('sel') and test, mean ± std."""
    mets = _seed_metrics(sweep_dir, entry, read)
    row = {"config": entry["id"], "label": entry["label"], "model": entry["model"], "dir": entry["dir"],
           "seeds_done": len(mets), "seeds": len(entry["tasks"]), "complete": len(mets) == len(entry["tasks"])}
    for part, name in (("dev", "sel"), ("test", "test")):
        for k in SCALARS:
            row[f"{name}_{k}"] = _agg([m["aggregate"][part][k]["mean"] for m in mets]) if mets else None
    row["seconds"] = float(sum(r.get("seconds", 0.0) for m in mets for r in m.get("runs", [])))
    cvs = _seed_cv(sweep_dir, entry, read)
    row["cv_weighted_f1"] = _agg([c["weighted_f1"]["mean"] for c in cvs]) if cvs and len(cvs) == len(mets) else None
    row["cv_seconds"] = float(sum(c.get("seconds", 0.0) for c in cvs))
    return row


def _seed_cv(sweep_dir: Path, entry: Mapping[str, Any], read: Read) -> list[dict[str, Any]]:
    """The cv.json of every finished seed of a config that has one (--select-on cvK; cvselect.py)."""
    out = []
    for t in entry["tasks"]:
        if t["state"] in ("done", "reused"):
            rec = read(sweep_dir / t["dir"] / "cv.json")
            if isinstance(rec, dict) and rec.get("task_key") == t["key"]:
                out.append(rec)
    return out


def score_key(select_on: str) -> str:
    """The config_row field a selection reads: the selection set's (dev / test) or the CV score."""
    return "cv_weighted_f1" if select_on.startswith("cv") else "sel_weighted_f1"


def selection_metric(select_on: str) -> str:
    if select_on.startswith("cv"):
        return (f"mean held-out weighted F1 over {select_on[2:]} folds of the training dialogues (dev and test "
                "unread), mean over seeds")
    return f"mean {select_on} weighted F1 over seeds"


def select(rows: Sequence[Mapping[str, Any]], select_on: str) -> dict[str, Any]:
    """Per model: the complete config with the best mean selection-set W-F1 (ties: earlier grid point)."""
    key = score_key(select_on)
    by_model: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        cands = [r for r in rows if r["model"] == model and r["complete"] and r.get(key) is not None]
        if not cands:
            by_model[model] = None
            continue
        best = max(cands, key=lambda r: (r[key]["mean"], -rows.index(r)))
        by_model[model] = {"config": best["config"], "label": best["label"], "dir": best["dir"],
                           "selection_weighted_f1": best[key],
                           "test": {k: best[f"test_{k}"] for k in SCALARS}}
    return {"on": select_on, "metric": selection_metric(select_on), "tie_break": "earlier grid point",
            "by_model": by_model}


def write_config_aggregate(sweep_dir: Path, entry: Mapping[str, Any], cfg: RunConfig, notes: Sequence[str],
                           read: Read = read_json) -> bool:
    """configs/<id>/metrics.json, config.yaml, predictions.csv over all seeds: `mer-pipe runs` lists the config
    as one run (mean ± std over seeds) and `runs compare` pairs two configs seed by seed. False (nothing written)
    until every seed is finished."""
    from mer_pipe.common.files import write_json_atomic, write_text_atomic

    from mer_pipe.pipeline.train.report import yaml_block
    from mer_pipe.pipeline.train.runconfig import config_yaml

    mets = _seed_metrics(sweep_dir, entry, read)
    if len(mets) != len(entry["tasks"]):
        return False
    out = sweep_dir / entry["dir"]
    seeds = [int(m["seeds"][0]) for m in mets]
    per_seed = {str(s): m["per_seed"][str(s)] for s, m in zip(seeds, mets)}
    agg: dict[str, Any] = {}
    for part in ("dev", "test"):
        agg[part] = {k: _agg([per_seed[str(s)][part][k] for s in seeds]) for k in SCALARS}
        names = list(mets[0]["aggregate"][part]["per_class"])
        agg[part]["per_class"] = {n: {q: _agg([m["aggregate"][part]["per_class"][n][q]["mean"] for m in mets])
                                      for q in ("precision", "recall", "f1")} for n in names}
        agg[part]["confusion_sum"] = np.sum([m["aggregate"][part]["confusion_sum"] for m in mets], axis=0).tolist()
    meta = {"cache_dir": mets[0].get("cache_dir"), "features": mets[0].get("features")}
    metrics = {"model": cfg.model, "dataset": cfg.dataset, "modalities": list(cfg.modalities), "protocol": cfg.protocol,
               "select_on": cfg.select_on, "complete": True, "seeds_planned": seeds,
               "wall_seconds": float(sum(m.get("wall_seconds", 0.0) for m in mets)), **meta,
               "notes": list(notes), "seeds": seeds, "runs": [r for m in mets for r in m["runs"]],
               "per_seed": per_seed, "aggregate": agg,
               "sweep": {"config": entry["id"], "label": entry["label"], "seed_dirs": [t["dir"] for t in entry["tasks"]]}}
    write_text_atomic(out / "config.yaml", config_yaml(cfg, notes) + yaml_block(meta))
    write_json_atomic(out / "metrics.json", metrics, sort_keys=False)
    lines: list[str] = []
    for t in entry["tasks"]:
        text = (sweep_dir / t["dir"] / "predictions.csv").read_text(encoding="utf-8").splitlines()
        lines += text if not lines else text[1:]
    write_text_atomic(out / "predictions.csv", "\n".join(lines) + "\n")
    return True


def _pct(a: Mapping[str, float] | None) -> str:
    """An aggregate in percent (common.formatting.pct); '-' when there is none."""
    return pct(a["mean"], a.get("std"), a.get("n", 1)) if a else "-"


def format_tables(state: Mapping[str, Any]) -> str:
    """The selection table (selection set only), the choice with its test score, then the separate test table."""
    sel_on = state["selection"]["on"]
    cv = sel_on.startswith("cv")
    rows = state["configs_table"]
    chosen = {v["config"] for v in state["selection"]["by_model"].values() if v}
    w = max([len(r["label"]) for r in rows] + [6])
    head = (f"selection on {sel_on}: mean held-out W-F1 over {sel_on[2:]} folds of the training dialogues (%), per "
            "config; dev W-F1 beside it for comparison, not used" if cv else
            f"selection on {sel_on}: mean {sel_on} W-F1 over seeds (%), per config")
    lines = [*state.get("notes", []), f"{head}; * = chosen per model",
             f"  {'config':7} {'model':12} {'grid point':{w}}  {sel_on + ' W-F1':>15}  "
             + (f"{'dev W-F1':>15}  " if cv else "") + "seeds"]
    for r in rows:
        mark = "*" if r["config"] in chosen else " "
        dev = f"{_pct(r['sel_weighted_f1']):>15}  " if cv else ""
        lines.append(f"{mark} {r['config']:7} {r['model']:12} {r['label']:{w}}  {_pct(r[score_key(sel_on)]):>15}  "
                     f"{dev}{r['seeds_done']}/{r['seeds']}")
    lines.append("")
    for model, v in state["selection"]["by_model"].items():
        if v is None:
            lines.append(f"{model}: no config finished all its seeds; nothing chosen")
            continue
        t = v["test"]
        lines.append(f"chosen for {model}: {v['config']} ({v['label']}): {sel_on} W-F1 "
                     f"{_pct(v['selection_weighted_f1'])}; test W-F1 {_pct(t['weighted_f1'])}, "
                     f"acc {_pct(t['accuracy'])}, macro-F1 {_pct(t['macro_f1'])}  [{v['dir']}]")
        other = ((state.get("dev_selection") or {}).get("by_model") or {}).get(model)
        if cv and other:
            lines.append(f"  (dev would have chosen {other['config']} ({other['label']}): dev W-F1 "
                         f"{_pct(other['selection_weighted_f1'])})")
    lines += ["", NOT_FOR_SELECTION, f"  {'config':7} {'model':12} {'grid point':{w}}  {'test W-F1':>15}  {'test acc':>15}"]
    for r in rows:
        lines.append(f"  {r['config']:7} {r['model']:12} {r['label']:{w}}  {_pct(r['test_weighted_f1']):>15}  "
                     f"{_pct(r['test_accuracy']):>15}")
    return "\n".join(lines)
