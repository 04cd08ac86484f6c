"""The memorised-training-feature leak in words (issue 19): one line per fine-tuned slot for the `features`
summary, and the warning `train` / `sweep` print when the gap is large.

Threshold: LEAK_GAP_POINTS = 10 W-F1 points between the encoder's score on the training rows the downstream
model sees and its dev score. It is a warning level, not a measured optimum: well above the seed-to-seed spread
of a dev W-F1 (about one point) and the few points any classifier loses between splits, and below the gaps of
encoders that have clearly memorised their training utterances. bench/bench_finetune_leak.py records every
fine-tune's gap next to what it does to the downstream models, so the level can be recalibrated from evidence.
Cross-fitted sets are never warned about: their training rows come from encoders that did not see them (their gap
is the out-of-fold score - dev, and is shown, not judged).
The data come from `cache/finetune_gap.py`; this module owns the wording and the threshold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from mer_pipe.common.commands import command
from mer_pipe.common.formatting import pct

LEAK_GAP_POINTS = 10.0
CROSSFIT_ADVICE = 5  # the fold count recommended in the message


def describe(sf) -> str:
    """`t: fine-tuned encoder, 2/2 epochs: W-F1 on its training rows 71.20, dev 57.30 (gap +13.90 points)`."""
    gap = sf.gap
    tail = "" if gap is None else f" (gap {100 * gap:+.2f} points)"
    if sf.crossfit:
        what = (f"cross-fitted ({sf.crossfit} folds): training rows from the fold encoders that did not see them, "
                f"out-of-fold W-F1 {pct(sf.train_rows)}")
        inner = [f.train for f in sf.folds if f.train is not None]
        if inner:
            what += f" (in-fold train {pct(sum(inner) / len(inner))})"
    else:
        ep = f", epoch {sf.all.best_epoch}/{sf.all.epochs}" if sf.all and sf.all.best_epoch is not None else ""
        what = f"fine-tuned encoder{ep}: W-F1 on its training rows {pct(sf.train_rows)}"
    line = f"{sf.slot}: {what}, dev {pct(sf.dev)}{tail}"
    if sf.missing:
        line += f"; no record for checkpoint(s) {', '.join(k[:8] for k in sf.missing)}"
    elif sf.train_rows is None:
        line += "; no train score recorded (a checkpoint made before train/dev reports: re-fine-tune to get one)"
    return line


def leaks(sf) -> bool:
    """A plain fine-tune whose train - dev gap exceeds LEAK_GAP_POINTS."""
    return sf is not None and not sf.crossfit and sf.gap is not None and 100 * sf.gap > LEAK_GAP_POINTS


def warning(sf) -> str:
    """The one line `train` prints for a leaking slot."""
    return (f"mer-pipe: warning: slot {sf.slot}: the fine-tuned encoder scores {100 * sf.gap:.1f} W-F1 points higher on "
            f"its training utterances than on dev ({pct(sf.train_rows)} vs {pct(sf.dev)}; threshold "
            f"{LEAK_GAP_POINTS:g}): downstream models will see memorised training features; cross-fit it "
            f"(rerun the same `{command('features')}` command with --set {sf.slot}.finetune.crossfit={CROSSFIT_ADVICE})")


def slot_reports(dataset: str, slots: Iterable[str], cache_dir: str | Path | None = None, *,
                 lock: Mapping[str, Any] | None = None) -> list:
    """SlotFinetune of every fine-tuned slot among `slots` (frozen and unknown slots are skipped). `lock`: the
    dataset's lock.json when the caller has read it already."""
    from mer_pipe.cache.finetune_gap import slot_finetune
    from mer_pipe.cache.store import FeatureStore

    from .manifest import cache_root

    store = FeatureStore(cache_root(cache_dir))
    out = []
    for slot in dict.fromkeys(slots):
        sf = slot_finetune(store, dataset, slot, lock)
        if sf is not None:
            out.append(sf)
    return out


def leak_warnings(dataset: str, slots: Iterable[str], cache_dir: str | Path | None = None, *,
                  lock: Mapping[str, Any] | None = None) -> list[str]:
    """One warning line per plain fine-tuned slot among `slots` whose gap exceeds the threshold."""
    return [warning(sf) for sf in slot_reports(dataset, slots, cache_dir, lock=lock) if leaks(sf)]


__all__ = ["LEAK_GAP_POINTS", "describe", "leak_warnings", "leaks", "slot_reports", "warning"]
