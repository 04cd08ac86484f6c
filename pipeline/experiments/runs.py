"""Run directories as rows of a table: discovery, reading, filtering, sorting and the four formats of `mer-pipe runs`.

A run dir is a folder holding metrics.json (report.write_run, which writes it last). A folder with config.yaml,
predictions.csv or checkpoint.pt but no metrics.json is an incomplete run: it is listed with a note, never a
traceback. A run whose files no longer match the checksums metrics.json recorded (train/runcheck.py) is noted MODIFIED. Fields that an
older or interrupted run lacks are None: `-` in table and md, an empty cell in csv, null in json.
Scores in csv/json are fractions (0..1); table and md show percent. A run selected on the test set has no dev
score (its metrics.json "dev" part is the test set), so by default it ranks last, flagged TEST!.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mer_pipe.common.commands import command
from mer_pipe.common.errors import ConfigError
from mer_pipe.common.formatting import pct

from mer_pipe.pipeline.train.runcheck import describe_problems, file_problems

RUN_MARKERS = ("config.yaml", "predictions.csv", "checkpoint.pt")
FORMATS = ("table", "csv", "md", "json")
DEFAULT_SORT = "dev_wf1"
HIGHER_IS_BETTER = ("dev_wf1", "test_wf1", "dev_acc", "test_acc")  # sorted best first
TEST_FLAG = "TEST!"
TEST_FOOTNOTE = f"{TEST_FLAG} = model selected on the test set: its test scores are optimistic and not comparable"


@dataclass
class RunRow:
    """One run dir, flattened. Scores are mean (and sample std) over seeds, as in metrics.json's aggregate."""

    run: str
    path: str
    model: str | None = None
    dataset: str | None = None
    modalities: str | None = None
    features: str | None = None  # "t:dd518d a:9433b1" (extractor key prefixes)
    protocol: str | None = None
    profile: str | None = None  # dev | paper (train --profile)
    selection: str | None = None  # dev | test
    seeds: str | None = None
    n_seeds: int | None = None
    dev_wf1: float | None = None
    dev_wf1_std: float | None = None
    test_wf1: float | None = None
    test_wf1_std: float | None = None
    dev_acc: float | None = None
    dev_acc_std: float | None = None
    test_acc: float | None = None
    test_acc_std: float | None = None
    epochs: float | None = None  # mean epochs run per (seed, fold)
    best_epoch: float | None = None  # mean 1-based selected epoch
    wall_s: float | None = None  # training seconds summed over (seed, fold)
    note: str = ""
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # config.yaml, not an output column
    problems: list[str] = field(default_factory=list, repr=False)  # files that no longer match their record
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)  # metrics.json ({} unreadable), read once


COLUMNS = tuple(f.name for f in fields(RunRow) if f.name not in ("config", "problems", "metrics"))


def _is_run_dir(d: Path) -> bool:
    return (d / "metrics.json").is_file() or (
        not (d / "sweep.json").is_file() and any((d / m).is_file() for m in RUN_MARKERS))


def find_run_dirs(root: Path) -> list[tuple[Path, str]]:
    """(run dir, display name) under `root`, which may itself be a run dir; names are relative to root."""
    root = Path(root)
    if root.is_file() and root.name == "metrics.json":
        root = root.parent
    if not root.is_dir():
        raise ConfigError(f"runs: {root} is not a directory; pass a run dir (holding metrics.json) or a folder of runs")
    if _is_run_dir(root):
        return [(root, root.name or str(root))]
    found = []
    for here, subdirs, _ in os.walk(root):
        subdirs.sort()
        d = Path(here)
        if d != root and _is_run_dir(d):
            found.append((d, d.relative_to(root).as_posix()))
            subdirs.clear()  # a run dir's own folders are not runs
    return found


def _read(path: Path, loader, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = loader(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        notes.append(f"{path.name} unreadable ({type(exc).__name__})")
        return {}
    if not isinstance(data, dict):
        notes.append(f"{path.name} is not a mapping")
        return {}
    return data


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _mean(values: Iterable[Any], reduce=np.mean) -> float | None:
    v = [x for x in map(_num, values) if x is not None]
    return float(reduce(v)) if v else None


def _short_features(feats: Any) -> str | None:
    if not isinstance(feats, dict) or not feats:
        return None
    parts = [f"{m}:{str(f.get('key'))[:6]}" for m, f in feats.items() if isinstance(f, dict) and f.get("key")]
    return " ".join(parts) or None


def _seed_list(x: Any) -> list | None:
    return [s for s in x if isinstance(s, (int, str))] if isinstance(x, list) else None


def _describe(row: RunRow, met: dict[str, Any], cfg: dict[str, Any]) -> None:
    """What was run: model, dataset, modalities, feature keys, protocol, selection, seeds (metrics.json first)."""
    pick = lambda key: met.get(key) if met.get(key) not in (None, [], {}) else cfg.get(key)
    row.model, row.dataset, row.protocol, row.selection = (pick(k) for k in ("model", "dataset", "protocol", "select_on"))
    row.profile = pick("profile")
    feats = pick("features")
    mods = pick("modalities") or (list(feats) if isinstance(feats, dict) else None)  # [] in config = all there were
    row.modalities = ",".join(map(str, mods)) if isinstance(mods, list) and mods else None
    row.features = _short_features(feats)
    seeds = _seed_list(met.get("seeds")) or _seed_list(cfg.get("seeds"))
    if seeds:
        row.seeds, row.n_seeds = ",".join(map(str, seeds)), len(seeds)


def _score(row: RunRow, met: dict[str, Any], notes: list[str]) -> None:
    """Dev/test W-F1 and accuracy (mean, std over seeds), epochs and wall time."""
    for part in ("dev", "test"):
        for metric, col in (("weighted_f1", "wf1"), ("accuracy", "acc")):
            setattr(row, f"{part}_{col}", _num(_dig(met, "aggregate", part, metric, "mean")))
            setattr(row, f"{part}_{col}_std", _num(_dig(met, "aggregate", part, metric, "std")))
    if row.selection == "test" and row.dev_wf1 is not None:
        # metrics.json's "dev" part is the selection set, here the test set: it is no dev score and must not rank
        row.dev_wf1 = row.dev_wf1_std = row.dev_acc = row.dev_acc_std = None
        notes.append("selected on test: no dev score")
    runs = [r for r in met["runs"] if isinstance(r, dict)] if isinstance(met.get("runs"), list) else []
    row.epochs = _mean(r.get("epochs_run") for r in runs)
    row.best_epoch = _mean(r.get("best_epoch") for r in runs)
    row.wall_s = _num(met.get("wall_seconds"))
    if row.wall_s is None:
        row.wall_s = _mean((r.get("seconds") for r in runs), np.sum)
    if met and row.test_wf1 is None:
        notes.append("metrics.json has no aggregate test W-F1")
    if met.get("complete") is False:
        planned = _seed_list(met.get("seeds_planned"))
        notes.append(f"incomplete: seeds {row.seeds or '-'} of {','.join(map(str, planned)) if planned else '?'} done")


def read_run(path: Path, name: str | None = None) -> RunRow:
    """A RunRow for one run dir; problems with its files become the row's note."""
    path = Path(path)
    row, notes = RunRow(run=name or path.name, path=str(path)), []
    cfg = _read(path / "config.yaml", yaml.safe_load, notes)
    met = _read(path / "metrics.json", json.loads, notes)
    if not (path / "metrics.json").is_file():
        notes.append("incomplete: no metrics.json (training unfinished, interrupted, or a write failed)")
    row.config, row.metrics = cfg, met
    _describe(row, met, cfg)
    _score(row, met, notes)
    row.problems = file_problems(path, met) if met else []
    if row.problems:  # first: the scores shown may not be the ones training wrote
        notes.insert(0, describe_problems(row.problems))
    row.note = "; ".join(notes)
    return row


def _split(spec: str | None) -> set[str] | None:
    return {s.strip() for s in spec.split(",") if s.strip()} if spec else None


def load_runs(dirs: Sequence[Path], model: str | None = None, dataset: str | None = None) -> list[RunRow]:
    """Rows for every run dir under `dirs`, keeping those whose model / dataset is in the comma lists given."""
    models, datasets = _split(model), _split(dataset)
    rows = []
    for root in dirs:
        found = find_run_dirs(Path(root))
        if not found:
            raise ConfigError(f"runs: no run directories (folders holding metrics.json) under {root}; "
                              f"pass the folder `{command('train')} --out` wrote to")
        rows += [read_run(d, name) for d, name in found]
    return [r for r in rows if (models is None or r.model in models) and (datasets is None or r.dataset in datasets)]


def sort_rows(rows: Sequence[RunRow], column: str = DEFAULT_SORT, reverse: bool = False) -> list[RunRow]:
    """Scores best first, other columns ascending (`reverse` flips); rows without the value go last."""
    if column not in COLUMNS:
        raise ConfigError(f"--sort {column!r}: choose one of {', '.join(COLUMNS)}")
    descending = (column in HIGHER_IS_BETTER) != reverse
    have = [r for r in rows if getattr(r, column) is not None]
    have.sort(key=lambda r: getattr(r, column), reverse=descending)  # stable: ties keep discovery order
    return have + [r for r in rows if getattr(r, column) is None]


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(round(s), 60)
    return f"{m}m{sec:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _epochs(r: RunRow) -> str:
    if r.epochs is None:
        return "-"
    best = "-" if r.best_epoch is None else f"{r.best_epoch:.3g}"
    return f"{r.epochs:.3g} (best {best})"


def display_cells(r: RunRow) -> dict[str, str]:
    """The human columns of table and md: scores in percent, mean ± std over seeds."""
    dash = lambda v: "-" if v is None or v == "" else str(v)
    return {
        "run": r.run, "model": dash(r.model), "dataset": dash(r.dataset), "mods": dash(r.modalities),
        "features": dash(r.features), "protocol": dash(r.protocol), "profile": dash(r.profile),
        "select": TEST_FLAG if r.selection == "test" else dash(r.selection), "seeds": dash(r.seeds),
        "dev W-F1 %": pct(r.dev_wf1, r.dev_wf1_std, r.n_seeds), "test W-F1 %": pct(r.test_wf1, r.test_wf1_std, r.n_seeds),
        "dev acc %": pct(r.dev_acc, r.dev_acc_std, r.n_seeds), "test acc %": pct(r.test_acc, r.test_acc_std, r.n_seeds),
        "epochs": _epochs(r), "wall": _seconds(r.wall_s), "note": dash(r.note.replace("|", "/")),
    }


def machine_record(r: RunRow) -> dict[str, Any]:
    return {c: getattr(r, c) for c in COLUMNS}


def _table(rows: Sequence[RunRow], sort_desc: str) -> str:
    cells = [display_cells(r) for r in rows]
    head = list(cells[0]) if cells else list(display_cells(RunRow("", "")))
    grid = [head] + [list(c.values()) for c in cells]
    widths = [max(len(line[i]) for line in grid) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in grid]
    foot = [f"{len(rows)} run(s), sorted by {sort_desc}; W-F1 and accuracy in %, mean ± std over seeds"]
    if any(r.selection == "test" for r in rows):
        foot.append(TEST_FOOTNOTE)
    return "\n".join(lines + [""] + foot)


def format_rows(rows: Sequence[RunRow], fmt: str = "table", sort_desc: str = "dev W-F1, best first") -> str:
    """table (aligned, for people), md (pipe table), csv and json (machine columns, fractions)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "table":
        return _table(rows, sort_desc)
    if fmt == "json":
        return json.dumps([machine_record(r) for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in machine_record(r).items()} for r in rows)
        return buf.getvalue().rstrip("\n")
    cells = [display_cells(r) for r in rows]
    head = list(display_cells(RunRow("", "")))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c.values()) + " |" for c in cells])
