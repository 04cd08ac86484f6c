"""One training loop for every model: cached-tensor batches in, best-on-selection-set weights out.

Main loss = cross-entropy (optionally class-weighted, or focal) on logits[mask & label >= 0], plus the
sum of the model's auxiliary `ModelOutput.losses`. Early stopping on the selection set's weighted F1.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from mer_pipe.common.config import Config
from mer_pipe.common.training import autocast, lr_schedule, patience_ran_out

from .data import Corpus, View, feature_stats, iter_batches
from .metrics import class_counts, class_weights_from_counts, classification_metrics, focal_loss
from .protocols import Fold

MAX_LR = 10.0  # larger rates only ever diverge; refused before any work
MAX_WEIGHT_DECAY = 10.0


@dataclass(frozen=True)
class TrainConfig(Config):
    """Trainer settings. Defaults here < the model class's `train_defaults` < `--config` < `--set trainer.K=V`.

    unit: batch whole dialogues (context models) or single utterances (N = 1); batch_size counts units.
    patience: epochs without a better selection-set weighted F1 before stopping (0 = never stop early).
    class_weights: weight the loss by 1/p_c from the training counts (AGF-IB habit).
    amp: bfloat16 autocast on CUDA, ignored on CPU, where runs stay float32 and deterministic for a seed (the
    "train" row of the precision rule in `common/training.py`).
    standardize: z-score every feature dimension with training-set statistics (stored with the weights).
    """

    section: ClassVar[str] = "trainer"

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    epochs: int = 30
    batch_size: int = 16
    eval_batch_size: int = 64
    unit: Literal["dialogue", "utterance"] = "dialogue"
    patience: int = 10
    scheduler: Literal["none", "cosine", "plateau"] = "none"
    warmup_epochs: int = 0
    grad_clip: float = 5.0
    class_weights: bool = False
    loss: Literal["ce", "focal"] = "ce"
    focal_gamma: float = 2.0
    amp: bool = True
    standardize: bool = True

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("lr", "weight_decay", "grad_clip", "focal_gamma"):  # nan fails every comparison: say so first
            self.require(math.isfinite(getattr(self, name)), name, "must be a finite number")
        for name in ("patience", "warmup_epochs", "weight_decay", "grad_clip"):
            self.require(getattr(self, name) >= 0, name, "must be >= 0")
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(self.lr <= MAX_LR, "lr", f"must be in (0, {MAX_LR:g}] (typical 1e-4 .. 1e-2)")
        self.require(self.weight_decay <= MAX_WEIGHT_DECAY, "weight_decay", f"must be in [0, {MAX_WEIGHT_DECAY:g}]")
        self.require(0 <= self.focal_gamma <= 100, "focal_gamma", "must be in [0, 100]")


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Predictions:
    """Gold labels, argmax predictions and class probabilities of the kept utterances of a view,
    ordered by utterance index. idx [M], gold [M], pred [M], probs [M, C]; loss = mean cross-entropy."""

    idx: np.ndarray
    gold: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    loss: float = float("nan")


def predict(model, corpus: Corpus, view: View, batch_size: int, device: str, amp: bool = True,
            stats: dict[str, Any] | None = None) -> Predictions:
    """Forward the view in a fixed order (no shuffling) so evaluation is reproducible."""
    import torch
    import torch.nn.functional as F

    model.eval()
    idxs, golds, probs, loss_sum = [], [], [], 0.0
    with torch.no_grad():
        for batch, idx in iter_batches(corpus, view, batch_size, shuffle=False, stats=stats):
            sel = batch.mask & (batch.label >= 0)
            batch = batch.to(device)
            with autocast(amp, device, "train"):
                out = model(batch)
            logits = out.logits.float()[sel.to(device)]
            loss_sum += float(F.cross_entropy(logits, batch.label[sel.to(device)], reduction="sum")) if len(logits) else 0.0
            idxs.append(idx[sel])
            golds.append(batch.label.cpu()[sel])
            probs.append(torch.softmax(logits, -1).cpu())
    idx = torch.cat(idxs).numpy() if idxs else np.zeros(0, np.int64)
    order = np.argsort(idx, kind="stable")
    pr = torch.cat(probs).numpy()[order] if probs else np.zeros((0, corpus.task.n_classes), np.float32)
    return Predictions(idx=idx[order], gold=torch.cat(golds).numpy()[order] if golds else np.zeros(0, np.int64),
                       pred=pr.argmax(axis=1) if len(pr) else np.zeros(0, np.int64), probs=pr,
                       loss=loss_sum / max(1, len(idx)))


@dataclass
class FitResult:
    """One trained model (best epoch's weights, on CPU) with its selection and test results."""

    state_dict: dict[str, Any]
    best_epoch: int
    history: list[dict[str, float]]
    dev: dict[str, Any]
    test: dict[str, Any]
    test_predictions: Predictions
    seconds: float
    seconds_per_epoch: float
    stats: dict[str, Any] = field(default_factory=dict)  # feature standardisation (data.feature_stats)
    stop_reason: str = ""


def _make_optimizers(model, cfg: TrainConfig) -> tuple[dict[str, Any], list]:
    """One optimiser per `model.param_groups()` entry (models/base.py); the main groups' parameters
    are the ones the trainer clips and steps."""
    import torch

    opts, main_params = {}, []
    for name, g in model.param_groups().items():
        params = [p for p in g.params if p.requires_grad]
        kind = g.optimizer or cfg.optimizer
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        opts[name] = cls(params, lr=cfg.lr if g.lr is None else g.lr,
                         weight_decay=cfg.weight_decay if g.weight_decay is None else g.weight_decay)
        if g.main:
            main_params += params
    return opts, main_params


def _make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step LR schedule (linear warm-up, then cosine or constant: `common.training.lr_schedule`) or per-epoch
    plateau on selection W-F1."""
    import torch

    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=max(1, cfg.patience // 3))
    return lr_schedule(opt, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch,
                       "cosine" if cfg.scheduler == "cosine" else "none")


@dataclass
class _Run:
    """What one fit carries between epochs (model, optimisers, schedule, class weights, statistics)."""

    model: Any
    opts: dict[str, Any]
    main_params: list
    sched: Any
    weight: Any
    stats: dict[str, Any]
    gen: Any


def _setup(model_name: str, model_config, corpus: Corpus, modalities: tuple[str, ...], fold: Fold,
           cfg: TrainConfig, seed: int, device: str) -> _Run:
    import torch

    from mer_pipe.models.registry import build_model

    set_seed(seed)
    if device == "cpu":
        # Multi-threaded CPU scatter/index_add (graph message passing) otherwise sums in a thread-dependent
        # order, and AR-IIGCN drifted by 0.5 W-F1 between two identical MELD runs on 2 threads.
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_model(model_name, corpus.task, modalities, model_config).to(device)
    opts, main_params = _make_optimizers(model, cfg)
    sched = _make_scheduler(opts["main"], cfg, math.ceil(len(fold.train.units) / cfg.batch_size))
    weight = None
    if cfg.class_weights:
        train_labels = corpus.label[:-1].numpy()[fold.train.keep]
        weight = torch.tensor(class_weights_from_counts(class_counts(train_labels, corpus.task.n_classes)),
                              dtype=torch.float32, device=device)
    stats = feature_stats(corpus, fold.train.keep) if cfg.standardize else {}
    return _Run(model, opts, main_params, sched, weight, stats, torch.Generator().manual_seed(seed))


def _main_loss(logits, target, cfg: TrainConfig, weight):
    import torch.nn.functional as F

    if target.numel() == 0:
        return logits.sum() * 0.0
    if cfg.loss == "focal":
        return focal_loss(logits, target, cfg.focal_gamma, weight)
    return F.cross_entropy(logits, target, weight=weight)


def _train_epoch(run: _Run, corpus: Corpus, fold: Fold, cfg: TrainConfig, device: str, where: str) -> dict[str, float]:
    """One pass over the training units; returns the mean total loss and each of its parts."""
    import torch

    model, opt = run.model, run.opts["main"]
    model.train()
    parts: dict[str, float] = {"train_loss": 0.0, "loss_main": 0.0}
    n_b = 0
    for batch, _ in iter_batches(corpus, fold.train, cfg.batch_size, shuffle=True, generator=run.gen, stats=run.stats):
        batch = batch.to(device)
        model.before_step(batch, run.opts)
        with autocast(cfg.amp, device, "train"):
            out = model(batch)
        sel = batch.mask & (batch.label >= 0)
        main = sum(_main_loss(lg[sel].float(), batch.label[sel], cfg, run.weight)  # per head with train_logits
                   for lg in (out.train_logits or (out.logits,)))
        loss = main + sum((v.float() for v in out.losses.values()), torch.zeros((), device=device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{where}: non-finite loss; lower trainer.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.main_params, cfg.grad_clip)
        opt.step()
        if cfg.scheduler != "plateau":
            run.sched.step()
        n_b += 1
        parts["train_loss"] += float(loss.detach())
        parts["loss_main"] += float(main.detach())
        for k, v in out.losses.items():
            parts[f"loss_{k}"] = parts.get(f"loss_{k}", 0.0) + float(v.detach())
    return {k: v / max(1, n_b) for k, v in parts.items()}


EpochHook = Callable[[dict[str, Any]], None]


def fit(model_name: str, model_config, corpus: Corpus, modalities: tuple[str, ...], fold: Fold, cfg: TrainConfig,
        seed: int, device: str = "cpu", on_epoch: EpochHook | None = None) -> FitResult:
    """Train one model on fold.train, keep the epoch with the best fold.dev weighted F1, score fold.test.

    on_epoch receives each epoch's record (epoch, losses, dev_loss, dev W-F1/accuracy, seconds, best,
    stop) as it ends; the record with `stop` set says why training ended early."""
    run = _setup(model_name, model_config, corpus, modalities, fold, cfg, seed, device)
    best, best_state, best_epoch, history, stop = -1.0, None, -1, [], ""
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        te = time.perf_counter()
        losses = _train_epoch(run, corpus, fold, cfg, device, f"{model_name} epoch {epoch + 1} seed {seed}")
        p = predict(run.model, corpus, fold.dev, cfg.eval_batch_size, device, cfg.amp, run.stats)
        dev_m = classification_metrics(p.gold, p.pred, corpus.class_names)
        score = dev_m["weighted_f1"]
        if cfg.scheduler == "plateau":
            run.sched.step(score)
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        if patience_ran_out(epoch + 1, best_epoch + 1, cfg.patience, cfg.epochs):  # 0-based epochs here
            stop = f"early stop: no better {fold.select_on} W-F1 for {cfg.patience} epochs (best {best:.4f} at epoch {best_epoch + 1})"
        rec = {"epoch": epoch, **losses, "dev_loss": p.loss, "dev_weighted_f1": score, "dev_accuracy": dev_m["accuracy"],
               "lr": run.opts["main"].param_groups[0]["lr"],
               "seconds": time.perf_counter() - te, "best_weighted_f1": best, "best_epoch": best_epoch, "stop": stop}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        if stop:
            break
    seconds = time.perf_counter() - t0
    run.model.load_state_dict(best_state)
    dev_p = predict(run.model, corpus, fold.dev, cfg.eval_batch_size, device, cfg.amp, run.stats)
    test_p = predict(run.model, corpus, fold.test, cfg.eval_batch_size, device, cfg.amp, run.stats)
    return FitResult(
        state_dict=best_state, best_epoch=best_epoch, history=history,
        dev=classification_metrics(dev_p.gold, dev_p.pred, corpus.class_names),
        test=classification_metrics(test_p.gold, test_p.pred, corpus.class_names),
        test_predictions=test_p, seconds=seconds, seconds_per_epoch=seconds / max(1, len(history)), stats=run.stats,
        stop_reason=stop or f"ran all {cfg.epochs} epochs",
    )
