"""Run figures from plain data: training curves, row-normalised confusion matrix, per-class F1 bars.

Inputs are lists and dicts (no training classes), so report.py, notebooks and benchmarks share them.
matplotlib (Agg) is imported inside each function; every figure is written atomically as PNG.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mer_pipe.common.files import atomic_path
from mer_pipe.common.formatting import format_mean_std  # the one rule (report.py and the CLI use it too)

AUX_MARKERS = ("o", "s", "^", "v", "D", "x", "P", "*")
DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _aux_names(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Auxiliary loss terms (`loss_<name>` except loss_main) present in any epoch record, in first-seen order."""
    names: dict[str, None] = {}
    for r in runs:
        for rec in r["history"]:
            for k in rec:
                if k.startswith("loss_") and k != "loss_main":
                    names.setdefault(k[len("loss_"):], None)
    return list(names)


def _num(v: Any) -> float:
    """A recorded number, NaN where it is missing (None) so the line just has a gap."""
    return math.nan if v is None else float(v)


def _main_loss(rec: Mapping[str, Any], aux: Sequence[str]) -> float:
    """Classification part: recorded, or total minus the (already weighted) auxiliary terms, which is
    exact because the trainer's total is their sum."""
    if "loss_main" in rec:
        return float(rec["loss_main"])
    return float(rec["train_loss"]) - sum(_num(rec.get(f"loss_{a}", 0.0)) for a in aux)


def _seed_text(seeds: Sequence[int], folds: Sequence[str]) -> str:
    s = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {','.join(map(str, seeds))}"
    real = sorted({f for f in folds if f != "split"})
    return s + (f" × {len(real)} folds" if real else "")


def plot_curves(path: str | Path, runs: Sequence[Mapping[str, Any]], *, model: str, dataset: str,
                select_on: str) -> None:
    """Two panels per figure: (1) training classification loss, each weighted auxiliary term and the
    selection-set loss (dashed) per epoch; (2) selection-set weighted F1 per epoch with the selected
    epoch marked. runs: [{"seed", "fold", "best_epoch" (0-based), "history": [epoch records]}].
    Colour = seed (folds of a seed share it). With one seed, colours tell the loss terms apart instead."""
    runs = [r for r in runs if r.get("history")]
    if not runs:
        raise ValueError("plot_curves: no run has an epoch history; nothing to draw")
    plt = _pyplot()
    from matplotlib.lines import Line2D

    seeds = sorted({int(r["seed"]) for r in runs})
    palette = plt.get_cmap("tab10") if len(seeds) <= 10 else plt.get_cmap("viridis", len(seeds))
    seed_colour = {s: palette(i) for i, s in enumerate(seeds)}
    one_seed = len(seeds) == 1
    aux = _aux_names(runs)
    has_dev = any(rec.get("dev_loss") is not None for r in runs for rec in r["history"])
    sel = "dev" if select_on == "dev" else f"{select_on} (selection set)"
    # quantity -> (label, linestyle, marker); with one seed each quantity also gets its own colour
    qty = [("__main__", "classification (train)", "-", None)]
    qty += [(a, f"{a} (train, weighted)", ":", AUX_MARKERS[i % len(AUX_MARKERS)]) for i, a in enumerate(aux)]
    if has_dev:
        qty.append(("__dev__", f"{sel} loss", "--", None))
    q_colour = {q[0]: plt.get_cmap("tab10")(i) for i, q in enumerate(qty)}
    lw = 1.6 if len(runs) <= 3 else 1.0

    fig, (ax_l, ax_f) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    all_losses: list[float] = []
    best_vals: list[float] = []
    best_eps: list[int] = []
    f1_all: list[float] = []
    for r in runs:
        h = sorted(r["history"], key=lambda x: x["epoch"])
        ep = [int(x["epoch"]) + 1 for x in h]
        every = max(1, len(ep) // 10)
        for key, _, ls, mk in qty:
            if key == "__main__":
                ys = [_main_loss(x, aux) for x in h]
            elif key == "__dev__":
                ys = [_num(x.get("dev_loss")) for x in h]
            else:
                ys = [_num(x.get(f"loss_{key}")) for x in h]
            col = q_colour[key] if one_seed else seed_colour[int(r["seed"])]
            ax_l.plot(ep, ys, ls=ls, marker=mk, markevery=every, ms=4, lw=lw, color=col, alpha=0.9)
            all_losses += [y for y in ys if not math.isnan(y)]
        col = seed_colour[int(r["seed"])]
        f1 = [float(x["dev_weighted_f1"]) for x in h]
        f1_all += f1
        fold = "" if r.get("fold", "split") == "split" else f" {r['fold']}"
        best = next((x for x in h if int(x["epoch"]) == int(r["best_epoch"])), None)
        label = f"seed {r['seed']}{fold}"
        if best is not None:
            b_ep, b_val = int(best["epoch"]) + 1, float(best["dev_weighted_f1"])
            best_eps.append(b_ep), best_vals.append(b_val)
            label += f": epoch {b_ep}, {b_val:.4f}"
            ax_f.axvline(b_ep, color=col, ls=":", lw=1.1, alpha=0.8)
            ax_f.plot([b_ep], [b_val], marker="*", ms=13, color=col, mec="black", mew=0.6, zorder=5, ls="none")
            if len(runs) == 1:  # the selected epoch is the curve's maximum: its value goes above it
                ax_f.annotate(f"{b_val:.4f}", (b_ep, b_val), xytext=(0, 9), textcoords="offset points",
                              ha="center", fontsize=9, fontweight="bold")
        ax_f.plot(ep, f1, color=col, lw=lw, alpha=0.9, label=label if len(runs) <= 6 else None)

    positive = all_losses and min(all_losses) > 0
    log = bool(positive and max(all_losses) / min(all_losses) > 30)
    if log:
        ax_l.set_yscale("log")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss" + (" (log scale)" if log else ""))
    ax_l.set_title("loss per epoch" + ("" if one_seed else " (line style = term, colour = seed)"), fontsize=9)
    proxies = [Line2D([], [], ls=ls, marker=mk, color=q_colour[k] if one_seed else "black", label=lab)
               for k, lab, ls, mk in qty]
    ax_l.legend(handles=proxies, fontsize=7, loc="best", framealpha=0.85)
    ax_l.grid(alpha=0.3)

    ax_f.set_xlabel("epoch")
    ax_f.set_ylabel(f"{sel} weighted F1")
    lo, hi = min(f1_all), max(f1_all)
    ax_f.set_ylim(lo - 0.05 * (hi - lo + 1e-3), hi + 0.15 * (hi - lo + 1e-3))  # room above the stars
    if len(best_vals) > 1:
        spread = format_mean_std(float(np.mean(best_vals)), float(np.std(best_vals, ddof=1)), len(best_vals))
        eps = f"epoch {best_eps[0]}" if min(best_eps) == max(best_eps) else f"epochs {min(best_eps)}–{max(best_eps)}"
        sub = f"selected (★): W-F1 {spread} over {len(best_vals)} runs, {eps}"
    elif best_vals:
        sub = f"selected (★): epoch {best_eps[0]}, W-F1 {best_vals[0]:.4f}"
    else:
        sub = "selected epoch not in the history"
    ax_f.set_title(sub, fontsize=9)
    if 1 < len(runs) <= 6:
        ax_f.legend(fontsize=7, loc="lower right", framealpha=0.85)
    ax_f.grid(alpha=0.3)
    if not one_seed and len(runs) > 6:  # one compact colour key for both panels, in a row at the bottom
        fig.legend(handles=[Line2D([], [], color=seed_colour[s], lw=2.5, label=f"seed {s}") for s in seeds],
                   loc="outside lower center", ncol=min(len(seeds), 10), fontsize=8, frameon=False)

    title = f"{model} on {dataset} — {_seed_text(seeds, [str(r.get('fold', 'split')) for r in runs])}"
    if select_on == "test":
        fig.suptitle(title + "\nSELECTED ON TEST: test numbers are optimistically biased", fontsize=11,
                     color="#b00020", fontweight="bold")
    else:
        fig.suptitle(title, fontsize=11)
    _save(fig, path)


def plot_confusion(path: str | Path, confusion: Sequence[Sequence[float]], class_names: Sequence[str],
                   title: str) -> None:
    """Confusion heat map coloured by share of the gold row; each cell prints 'count\\n(share%)'."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"plot_confusion: confusion has shape {cm.shape}, expected ({n}, {n}) for {n} classes")
    totals = cm.sum(axis=1, keepdims=True)
    share = cm / np.maximum(totals, 1)
    cmap = plt.get_cmap("Blues")
    fig, ax = plt.subplots(figsize=(2.2 + 0.95 * n, 1.4 + 0.85 * n))
    im = ax.imshow(share, cmap=cmap, vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of gold class")
    cbar.ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xticks(range(n), class_names, rotation=40, ha="right")
    ax.set_yticks(range(n), [f"{c} ({int(t)})" for c, t in zip(class_names, totals[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold (row total)")
    ax.set_title(title, fontsize=9)
    fs = 8 if n <= 8 else 6.5
    for i in range(n):
        for j in range(n):
            s = share[i, j]
            r, g, b, _ = cmap(s)
            dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5  # relative luminance of the cell colour
            pct = f"{100 * s:.0f}%" if s == 0 or s >= 0.095 else f"{100 * s:.1f}%"
            ax.text(j, i, f"{int(round(cm[i, j]))}\n({pct})", ha="center", va="center", fontsize=fs,
                    color="white" if dark else "black", fontweight="bold" if i == j else "normal")
    fig.tight_layout()
    _save(fig, path)


def plot_per_class_f1(path: str | Path, per_class: Mapping[str, Mapping[str, Any]], class_names: Sequence[str],
                      title: str) -> None:
    """Horizontal bars of per-class F1 mean (classes top to bottom in the given order), std error bars
    over seeds where there is more than one, the value printed beside each bar.
    per_class[name]["f1"] = {"mean", "std"[, "n"]} (metrics.aggregate's output)."""
    plt = _pyplot()
    missing = [c for c in class_names if c not in per_class or "f1" not in per_class[c]]
    if missing:
        raise ValueError(f"plot_per_class_f1: no 'f1' entry for class(es) {missing}; per_class has {sorted(per_class)}")
    stats = [per_class[c]["f1"] for c in class_names]
    means = np.array([float(s["mean"]) for s in stats])
    ns = [int(s.get("n", per_class[c].get("n", 2 if float(s.get("std", 0)) > 0 else 1)))
          for c, s in zip(class_names, stats)]
    stds = np.array([float(s.get("std", 0.0)) if k > 1 else 0.0 for s, k in zip(stats, ns)])
    y = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * len(class_names)))
    ax.barh(y, means, color="#4c72b0", alpha=0.85, height=0.65)
    if (stds > 0).any():
        ax.errorbar(means[stds > 0], y[stds > 0], xerr=stds[stds > 0], fmt="none", ecolor="black",
                    elinewidth=1.0, capsize=3)
    for yi, m, s, k in zip(y, means, stds, ns):
        ax.text(min(m + s, 1.0) + 0.015, yi, format_mean_std(m, s, k, 3), va="center", fontsize=8)
    ax.set_yticks(y, class_names)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.25)  # room for the labels right of a bar near 1
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F1" + (f" (mean ± std over {max(ns)} seeds)" if max(ns) > 1 else ""))
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save(fig, path)
