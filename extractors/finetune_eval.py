"""Scores of a finished fine-tune's kept encoder: W-F1 on its own training utterances (and, for a cross-fit fold
encoder, on the dialogues it held out), so the memorisation gap train - dev is visible (issue 19).

The weights scored are exactly the ones kept: the dev-best epoch as saved in `best/` (the folder that becomes the
checkpoint), reloaded the way extraction loads it, in eval mode (no dropout). Imports only `common` and its
siblings (torch / transformers lazily)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from mer_pipe.common.training import accuracy, weighted_f1

from .finetune import FinetuneConfig, FinetuneData, load_classifier


def score_kept(best_dir: str | Path, cfg: FinetuneConfig, parts: Mapping[str, FinetuneData],
               device: str = "cpu") -> dict[str, Any]:
    """{part: {"weighted_f1", "accuracy", "n"} or None when the part is empty, "seconds": float}."""
    t0 = time.perf_counter()
    predict = load_classifier(best_dir, cfg, device)
    out: dict[str, Any] = {}
    for name, data in parts.items():
        if not data.inputs:
            out[name] = None
            continue
        pred = predict(data.inputs).argmax(1).tolist()
        out[name] = {"weighted_f1": weighted_f1(data.labels, pred), "accuracy": accuracy(data.labels, pred),
                     "n": len(data.inputs)}
    out["seconds"] = time.perf_counter() - t0
    return out


__all__ = ["score_kept"]
