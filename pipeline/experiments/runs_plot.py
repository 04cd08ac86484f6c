"""`mer-pipe runs --plot FILE.png`: dev and test W-F1 per run with std-over-seeds error bars, plus FILE.csv.

Each run is labelled `model + config tag`, the tag naming only the settings that differ between the plotted
runs of that model (e.g. `mlp [t,a] lr=0.0003`), so a sweep reads at a glance.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mer_pipe.common.errors import ConfigError

from .runs import RunRow, sort_rows

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
IGNORED = {"seeds", "device", "notes", "model", "cache_dir"}  # never part of a tag (model is the label's first word)
TAG_CHARS = 48
CSV_COLUMNS = ("label", "run", "model", "tag", "dataset", "selection", "n_seeds",
               "dev_wf1_pct", "dev_wf1_std_pct", "test_wf1_pct", "test_wf1_std_pct")


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Leaf settings of a config.yaml as `section.name -> text`; feature sets by their short key."""
    out: dict[str, str] = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if not prefix and k == "features" and isinstance(v, dict):
            out.update({f"feat.{m}": str(f.get("key", "?"))[:6] for m, f in v.items() if isinstance(f, dict)})
        elif isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        elif name not in IGNORED:
            out[name] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out


def _item(key: str, value: str) -> str:
    if key == "modalities":
        return f"[{value}]"
    if key.startswith("feat."):
        return f"{key[5:]}:{value}"
    return f"{key.rsplit('.', 1)[-1]}={value}"


def config_labels(rows: Sequence[RunRow]) -> list[tuple[str, str]]:
    """(label, tag) per row: the settings that vary among the given runs of the same model."""
    flat = [_flatten({**r.config, "modalities": r.modalities or "-"}) for r in rows]
    tags = []
    for r, f in zip(rows, flat):
        peers = [g for s, g in zip(rows, flat) if s.model == r.model]
        varying = sorted(k for k in set().union(*peers) if len({g.get(k) for g in peers}) > 1)
        tag = " ".join(_item(k, f[k]) for k in varying if k in f)
        tags.append(tag if len(tag) <= TAG_CHARS else tag[:TAG_CHARS - 1] + "…")
    labels = [f"{r.model or '?'} {t}".strip() for r, t in zip(rows, tags)]
    dup = {x for x in labels if labels.count(x) > 1}
    labels = [f"{x} ({r.run})" if x in dup else x for x, r in zip(labels, rows)]
    return [(x + (" [selected on test]" if r.selection == "test" else ""), t) for x, r, t in zip(labels, rows, tags)]


def _percent(x: float | None) -> float:
    """A fraction as a plotted percent (NaN: no point); the text form is common.formatting.pct."""
    return float("nan") if x is None else 100.0 * x


def _write_csv(path: Path, rows: Sequence[RunRow], labels: Sequence[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r, (label, tag) in zip(rows, labels):
            vals = [r.dev_wf1, r.dev_wf1_std, r.test_wf1, r.test_wf1_std]
            w.writerow([label, r.run, r.model or "", tag, r.dataset or "", r.selection or "", r.n_seeds or "",
                        *["" if v is None else f"{100 * v:.4f}" for v in vals]])


def plot_runs(rows: Sequence[RunRow], path: Path) -> Path:
    """Write the figure to `path` and its data to `path` with suffix .csv (returned); runs sorted by dev W-F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"--plot {path}: give a file ending in {', '.join(PLOT_SUFFIXES)}, e.g. --plot wf1.png")
    rows = sort_rows([r for r in rows if r.dev_wf1 is not None or r.test_wf1 is not None], "dev_wf1")
    if not rows:
        raise ConfigError(f"--plot {path}: none of the listed runs has metrics to plot; finish or rerun their training")
    labels = config_labels(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    csv_path = path.with_suffix(".csv")
    _write_csv(csv_path, rows, labels)
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8.0, 1.4 + 0.5 * len(rows)))
    for off, part, marker, color in ((-0.17, "dev", "o", "#4c72b0"), (0.17, "test", "s", "#dd8452")):
        mean = np.array([_percent(getattr(r, f"{part}_wf1")) for r in rows])
        std = np.array([0.0 if getattr(r, f"{part}_wf1_std") is None else _percent(getattr(r, f"{part}_wf1_std"))
                        for r in rows])
        ax.errorbar(mean, y + off, xerr=std, fmt=marker, color=color, capsize=3, label=part)
        for yy, m, s in zip(y + off, mean, std):
            if np.isfinite(m):
                ax.annotate(f"{m:.1f}", (m + s, yy), xytext=(4, 0), textcoords="offset points", va="center",
                            fontsize=7, color=color)
    ticks = [x + (" (1 seed)" if r.n_seeds == 1 else "") for (x, _), r in zip(labels, rows)]
    ax.set_yticks(y, ticks, fontsize=8)
    for tick, r in zip(ax.get_yticklabels(), rows):
        tick.set_color("red" if r.selection == "test" else "black")
    ax.set_ylim(len(rows) - 0.5, -0.5)  # best dev at the top
    ax.margins(x=0.12)
    ax.set_xlabel("weighted F1 (%), mean ± std over seeds")
    datasets = ", ".join(sorted({r.dataset for r in rows if r.dataset})) or "?"
    ax.set_title(f"W-F1 per run on {datasets}, sorted by dev W-F1", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return csv_path
