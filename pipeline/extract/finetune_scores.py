"""The train/dev report of every fine-tune, written into its checkpoint's finetune.json (keyed with it).

After training, the kept encoder (dev-best epoch, eval mode) is scored on the utterances it trained on; a
cross-fit fold encoder also on the training dialogues it held out (its out-of-fold score: what the downstream
model's training rows look like). The record also names the dialogues each encoder trained on and held out, so
fold membership can be checked utterance by utterance (tests/test_finetune_leak.py), not only counted.

    "scores":    {"epoch", "weights", "train": {weighted_f1, accuracy, n}, "dev": {weighted_f1, n},
                  "heldout": {weighted_f1, accuracy, n} | None, "gap": train - dev | None, "seconds"}
    "dialogues": {"train": [dialogue ids trained on], "heldout": [training dialogues held out]}

Costs one inference pass over the training utterances (forward only, batched by length: a small fraction of a
training epoch; bench/results/finetune_leak*.json record it per checkpoint as `score_seconds`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

Log = Callable[[str], None]


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def membership(st: Any, utts: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(utterance ids held out of this stage's training, `dialogues` record) for a fine-tune stage."""
    trained = set(st.train_ids)
    by_id = {u.id: u for u in utts}
    held = [u.id for u in utts if u.split == "train" and u.label_id is not None and u.id not in trained]
    dialogues = {"train": sorted({by_id[i].dialogue_id for i in st.train_ids}),
                 "heldout": sorted({by_id[i].dialogue_id for i in held})}
    return held, dialogues


def encoder_scores(st: Any, train: Any, heldout_data: Callable[[Sequence[str]], Any], utts: Sequence[Any],
                   best_dir: Path, record: Mapping[str, Any], cfg: Any,
                   device: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(scores, dialogues) of a finished fine-tune stage `st` whose kept encoder is in `best_dir`. `train` is the
    stage's training FinetuneData; `heldout_data(ids)` builds the held-out one (fold stages only)."""
    from mer_pipe.extractors.finetune_eval import score_kept

    held, dialogues = membership(st, utts)
    parts = {"train": train, **({"heldout": heldout_data(held)} if st.fold is not None else {})}
    res = score_kept(best_dir, cfg, parts, device)
    dev = _finite(record.get("dev_weighted_f1"))
    tr = _finite((res.get("train") or {}).get("weighted_f1"))
    scores = {"epoch": record.get("best_epoch"), "weights": "kept (dev-best) epoch, eval mode",
              "train": res.get("train"), "dev": {"weighted_f1": dev, "n": record.get("n_dev")},
              "heldout": res.get("heldout"), "gap": None if tr is None or dev is None else tr - dev,
              "seconds": res["seconds"]}
    return scores, dialogues


def scores_line(scores: Mapping[str, Any]) -> str:
    """`encoder W-F1 train 81.20 / dev 56.80 (gap +24.40 points), held-out 55.10`."""
    def pct(part: Any) -> str:
        v = _finite((part or {}).get("weighted_f1")) if isinstance(part, Mapping) else None
        return "-" if v is None else f"{100 * v:.2f}"

    gap = _finite(scores.get("gap"))
    line = f"encoder W-F1 train {pct(scores.get('train'))} / dev {pct(scores.get('dev'))}"
    line += "" if gap is None else f" (gap {100 * gap:+.2f} points)"
    if scores.get("heldout"):
        line += f", held-out dialogues {pct(scores['heldout'])} (out-of-fold)"
    return line


__all__ = ["encoder_scores", "membership", "scores_line"]
