"""Training primitives shared by the fine-tune stage (`extractors/finetune.py`), the trainer
(`pipeline/train/loop.py`) and the extractors' inference (`extractors/base.py`): the autocast precision rule,
weighted F1, class weights, the warm-up learning-rate schedule, early stopping and torch thread pinning. Each has this one
implementation. Imports nothing of mer_pipe; torch and sklearn are imported inside the functions, so importing
this module (and `mer-pipe --help`) stays free of them.

Autocast precision rule (stated here only). Autocast runs a forward pass in a 16-bit float type where torch
allows it; losses, features and scores are cast back to float32 by the callers. Whether it is on and which type
it uses depends on the use and the device type:

| use        | switch (default)                     | CPU            | CUDA     |
|------------|--------------------------------------|----------------|----------|
| `extract`  | extractor `autocast` (off)           | bfloat16       | float16  |
| `finetune` | `SLOT.finetune.autocast` (off)       | bfloat16       | bfloat16 |
| `train`    | `trainer.amp` (on)                   | off (float32)  | bfloat16 |

* CPU autocast has one type, bfloat16.
* On CUDA, a model that is being trained (fine-tune, trainer: their training steps and the evaluation passes
  that pick their epoch) uses bfloat16: float16 gradients underflow without loss scaling, which mer-pipe does
  not do. A frozen encoder (feature extraction, no gradients) uses float16, which keeps more mantissa bits and
  is closer to float32 (bench/results/features.json; `bench/bench_gpu.py` measures the CUDA arm).
* The opt-in switches (off by default) apply on every device. The trainer's `amp` is on by default, so it applies
  on CUDA only: CPU training stays float32 and reproducible for a seed unless the user asks otherwise.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np

Use = Literal["extract", "finetune", "train"]

# use -> device type -> torch dtype name when switched on (None: stays float32). The rule above, as data.
PRECISION: dict[str, dict[str, str | None]] = {
    "extract": {"cpu": "bfloat16", "cuda": "float16"},
    "finetune": {"cpu": "bfloat16", "cuda": "bfloat16"},
    "train": {"cpu": None, "cuda": "bfloat16"},
}


def device_type(device: str) -> str:
    """"cuda" for "cuda" / "cuda:N", else "cpu" (the only two device types mer-pipe runs on)."""
    return "cuda" if device.startswith("cuda") else "cpu"


def autocast_dtype(enabled: bool, device: str, use: Use) -> str | None:
    """The torch dtype name a forward pass of `use` on `device` autocasts to, or None when it stays float32
    (switch off, or the rule keeps float32 there). See the module docstring for the rule."""
    if use not in PRECISION:
        raise ValueError(f"autocast use {use!r}: choose one of {', '.join(PRECISION)}")
    return PRECISION[use][device_type(device)] if enabled else None


def autocast(enabled: bool, device: str, use: Use):
    """A context manager: `torch.autocast` with the rule's dtype, or a no-op when the pass stays float32."""
    from contextlib import nullcontext

    dtype = autocast_dtype(enabled, device, use)
    if dtype is None:
        return nullcontext()
    import torch

    return torch.autocast(device_type(device), dtype=getattr(torch, dtype))


# --- scores -------------------------------------------------------------------------------------------
def weighted_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Support-weighted F1 (`sklearn.metrics.f1_score(average="weighted", zero_division=0)`), the score every
    selection in mer-pipe uses. `labels`: the class ids to average over (default: those in gold or predictions);
    a class absent from the gold labels has support 0 and weight 0, so the value is the same either way."""
    from sklearn.metrics import f1_score

    kw = {} if labels is None else {"labels": list(labels)}
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0, **kw))


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Share of predictions equal to the gold label (nan for no utterances)."""
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return float((y == p).mean()) if y.size else float("nan")


# --- class weights --------------------------------------------------------------------------------------
def class_counts(labels: Sequence[int], n_classes: int) -> np.ndarray:
    """[C] int64 counts of labels >= 0 (unlabelled -1 ignored)."""
    y = np.asarray(labels, dtype=np.int64)
    return np.bincount(y[y >= 0], minlength=n_classes)[:n_classes]


def class_weights_from_counts(counts: Sequence[int]) -> np.ndarray:
    """[C] float64 weights 1 / p_c with p_c the class proportion (the AGF-IB sibling-code vector; up to the
    constant factor C it is scikit-learn's "balanced", and a mean-reduced weighted loss does not see constants).

    A class with no training example gets weight 0 rather than infinity: it can never be a target.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0:
        raise ValueError("class weights need at least one labelled training utterance")
    p = c / c.sum()
    with np.errstate(divide="ignore"):
        w = np.where(p > 0, 1.0 / np.where(p > 0, p, 1.0), 0.0)
    return w


# --- learning-rate schedule -------------------------------------------------------------------------------
Decay = Literal["linear", "cosine", "none"]


def lr_factor(step: int, total: int, warmup: int, decay: Decay) -> float:
    """The multiplier of the peak learning rate at optimiser step `step` (0-based) of `total`: linear warm-up
    over the first `warmup` steps ((step + 1) / warmup), then "linear" decay to 0 at `total`, "cosine" decay to
    0 at `total`, or "none" (constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if decay == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return 1.0


def lr_schedule(optimizer: Any, total: int, warmup: int, decay: Decay):
    """A per-step `torch.optim.lr_scheduler.LambdaLR` following `lr_factor` (step it after every optimiser step).
    Its state_dict holds plain values only (the factor is a function, which LambdaLR does not save)."""
    import torch

    total = max(1, total)

    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, decay)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- early stopping ----------------------------------------------------------------------------------------
def patience_ran_out(epoch: int, best_epoch: int, patience: int, epochs: int) -> bool:
    """Stop after `epoch` (1-based, of at most `epochs`)? Yes when patience is on (> 0), epochs remain, and the
    selection score has not improved for `patience` epochs since the best one (`best_epoch`, 1-based; 0 = none
    yet). The trainer's `trainer.patience` and the fine-tune's `SLOT.finetune.patience` both stop by this."""
    return patience > 0 and epoch < epochs and epoch - best_epoch >= patience


# --- threads ---------------------------------------------------------------------------------------------
_PINNED: list[int] = []  # the thread count this process was pinned to, once pinned


def pin_torch_threads(n: int | None, *, once: bool = False, if_loaded: bool = False) -> bool:
    """Set torch's intra-op thread count to `n` for this process (a worker running one task at a time: more
    threads per process would oversubscribe the cores). Nothing happens for n = None / 0; with `once`, when this
    process was already pinned; with `if_loaded`, while torch is not imported yet (a weight-free extractor such as
    openSMILE never pays for importing it). Returns whether it set the count."""
    import sys

    if not n or (once and _PINNED) or (if_loaded and "torch" not in sys.modules):
        return False
    import torch

    torch.set_num_threads(n)
    _PINNED[:] = [n]
    return True


__all__ = ["PRECISION", "accuracy", "autocast", "autocast_dtype", "class_counts", "class_weights_from_counts",
           "device_type", "lr_factor", "lr_schedule", "patience_ran_out", "pin_torch_threads", "weighted_f1"]
