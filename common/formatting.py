"""Scores as text: mean ± std over seeds, and fractions as percent, the one rule for every table, figure and
message (run tables, sweep.md, summaries, the leak warning)."""
from __future__ import annotations

from typing import Mapping


def format_mean_std(mean: float | Mapping[str, float], std: float = 0.0, n: int | None = 2, digits: int = 4) -> str:
    """'0.6123 ± 0.0110' over n > 1 seeds; '0.6123' for a single seed (a std of one value means nothing).
    `mean` may also be an aggregate {"mean", "std", "n"} (metrics.aggregate), whose missing std / n count as 0 / 2."""
    if isinstance(mean, Mapping):
        return format_mean_std(mean["mean"], mean.get("std", 0.0), mean.get("n", 2), digits)
    if n is not None and n > 1:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def pct(mean: float | None, std: float | None = None, n: int | None = 1) -> str:
    """A fraction in percent with 2 decimals, '± std' over n > 1 seeds when a std is given; '-' for None."""
    if mean is None:
        return "-"
    if std is None:
        return format_mean_std(100 * mean, 0.0, 1, 2)
    return format_mean_std(100 * mean, 100 * std, n, 2)
