"""One training loop for every model: cached-tensor batches in, best-on-selection-set weights out.

Main loss = cross-entropy (optionally class-weighted, or focal) on logits[mask & label >= 0], plus the
sum of the model's auxiliary `ModelOutput.losses`. Early stopping on the selection set's weighted F1.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from mer_pipe.common.errors import ConfigError

from .data import Corpus, View, feature_stats, iter_batches
from .metrics import class_counts, class_weights_from_counts, classification_metrics, focal_loss
from .protocols import Fold, RunRecord, make_folds, protocol_notes

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("none", "cosine", "plateau")
LOSSES = ("ce", "focal")
UNITS = ("dialogue", "utterance")


@dataclass(frozen=True)
class TrainConfig:
    """Trainer settings. Per-model overrides live in MODEL_TRAIN_DEFAULTS (models.md §8.6);
    `--config` / `--set trainer.KEY=VALUE` override both.

    unit: batch whole dialogues (context models) or single utterances (N = 1); batch_size counts units.
    patience: epochs without a better selection-set weighted F1 before stopping (0 = never stop early).
    class_weights: weight the loss by 1/p_c from the training counts (AGF-IB habit).
    amp: bfloat16 autocast on CUDA (ignored on CPU, where runs are deterministic for a seed).
    standardize: z-score every feature dimension with training-set statistics (stored with the weights).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    epochs: int = 30
    batch_size: int = 16
    eval_batch_size: int = 64
    unit: str = "dialogue"
    patience: int = 10
    scheduler: str = "none"
    warmup_epochs: int = 0
    grad_clip: float = 5.0
    class_weights: bool = False
    loss: str = "ce"
    focal_gamma: float = 2.0
    amp: bool = True
    standardize: bool = True

    def __post_init__(self) -> None:
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS), ("scheduler", self.scheduler, SCHEDULERS),
                                     ("loss", self.loss, LOSSES), ("unit", self.unit, UNITS)):
            if value not in choices:
                raise ConfigError(f"trainer.{name}={value!r}: choose one of {', '.join(choices)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"trainer.{name}={getattr(self, name)!r}: must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"trainer.lr={self.lr!r}: must be > 0")


# models.md §8.6 (optimiser, lr, weight decay, batch, epochs) per model; context-free models batch utterances.
MODEL_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "ts-gcl": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "batch_size": 16, "epochs": 60},
    "ar-iigcn": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 3e-5, "batch_size": 16, "epochs": 60},
    "jv-icl": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-2, "batch_size": 16, "epochs": 30},
    "deepmsi-mer": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "batch_size": 16, "epochs": 30,
                    "patience": 4, "unit": "utterance"},
    "mlp": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "batch_size": 64, "epochs": 30, "unit": "utterance"},
    "bigru": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "batch_size": 16, "epochs": 30},
}


def make_train_config(model: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig defaults <- the model's defaults <- overrides; unknown keys list the valid ones."""
    values = {**MODEL_TRAIN_DEFAULTS.get(model, {}), **(overrides or {})}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown trainer option(s) {unknown}; valid options: {sorted(fields)}")
    cast = {}
    for k, v in values.items():
        typ = type(fields[k].default)
        try:
            cast[k] = typ(v) if typ in (int, float) and not isinstance(v, bool) else v
        except (TypeError, ValueError):
            raise ConfigError(f"trainer.{k}={v!r}: expected a {typ.__name__}") from None
    return TrainConfig(**cast)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Predictions:
    """Gold labels, argmax predictions and class probabilities of the kept utterances of a view,
    ordered by utterance index. idx [M], gold [M], pred [M], probs [M, C]."""

    idx: np.ndarray
    gold: np.ndarray
    pred: np.ndarray
    probs: np.ndarray


def _autocast(device: str, amp: bool):
    import contextlib

    import torch

    if amp and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict(model, corpus: Corpus, view: View, batch_size: int, device: str, amp: bool = True,
            stats: dict[str, Any] | None = None) -> Predictions:
    """Forward the view in a fixed order (no shuffling) so evaluation is reproducible."""
    import torch

    model.eval()
    idxs, golds, probs = [], [], []
    with torch.no_grad():
        for batch, idx in iter_batches(corpus, view, batch_size, shuffle=False, stats=stats):
            sel = batch.mask & (batch.label >= 0)
            batch = batch.to(device)
            with _autocast(device, amp):
                out = model(batch)
            p = torch.softmax(out.logits.float(), dim=-1).cpu()
            idxs.append(idx[sel]); golds.append(batch.label.cpu()[sel]); probs.append(p[sel])
    idx = torch.cat(idxs).numpy() if idxs else np.zeros(0, np.int64)
    order = np.argsort(idx, kind="stable")
    pr = torch.cat(probs).numpy()[order] if probs else np.zeros((0, corpus.task.n_classes), np.float32)
    return Predictions(idx=idx[order], gold=torch.cat(golds).numpy()[order] if golds else np.zeros(0, np.int64),
                       pred=pr.argmax(axis=1) if len(pr) else np.zeros(0, np.int64), probs=pr)


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


def _make_optimizer(model, cfg: TrainConfig):
    import torch

    params = model.main_parameters() if hasattr(model, "main_parameters") else model.parameters()
    params = [p for p in params if p.requires_grad]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay), params


def _make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step LR schedule (cosine with linear warm-up) or per-epoch plateau on selection W-F1."""
    import torch

    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=max(1, cfg.patience // 3))
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(model_name: str, model_config: dict[str, Any] | None, corpus: Corpus, modalities: tuple[str, ...],
        fold: Fold, cfg: TrainConfig, seed: int, device: str = "cpu",
        log: Callable[[str], None] | None = None) -> FitResult:
    """Train one model on fold.train, keep the epoch with the best fold.dev weighted F1, score fold.test."""
    import torch
    import torch.nn.functional as F

    from mer_pipe.models.registry import build_model

    set_seed(seed)
    if device == "cpu":
        # Multi-threaded CPU scatter/index_add (graph message passing) otherwise sums in a thread-dependent
        # order, and AR-IIGCN drifted by 0.5 W-F1 between two identical MELD runs on 2 threads.
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_model(model_name, corpus.task, modalities, model_config).to(device)
    opt, params = _make_optimizer(model, cfg)
    n_steps = math.ceil(len(fold.train.units) / cfg.batch_size)
    sched = _make_scheduler(opt, cfg, n_steps)
    train_labels = corpus.label[:-1].numpy()[fold.train.keep]
    weight = None
    if cfg.class_weights:
        weight = torch.tensor(class_weights_from_counts(class_counts(train_labels, corpus.task.n_classes)),
                              dtype=torch.float32, device=device)
    stats = feature_stats(corpus, fold.train.keep) if cfg.standardize else {}
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, bad, history = -1.0, None, -1, 0, []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        te, total, parts, n_b = time.perf_counter(), 0.0, {}, 0
        for batch, _ in iter_batches(corpus, fold.train, cfg.batch_size, shuffle=True, generator=gen, stats=stats):
            batch = batch.to(device)
            if hasattr(model, "before_step"):
                model.before_step(batch)
            with _autocast(device, cfg.amp):
                out = model(batch)
            sel = batch.mask & (batch.label >= 0)
            logits, target = out.logits[sel].float(), batch.label[sel]
            if target.numel() == 0:
                main = logits.sum() * 0.0
            elif cfg.loss == "focal":
                main = focal_loss(logits, target, cfg.focal_gamma, weight)
            else:
                main = F.cross_entropy(logits, target, weight=weight)
            loss = main + sum((v.float() for v in out.losses.values()), torch.zeros((), device=device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{model_name}: non-finite loss at epoch {epoch} (seed {seed}); lower trainer.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if cfg.scheduler != "plateau":
                sched.step()
            total += float(loss.detach()); n_b += 1
            for k, v in out.losses.items():
                parts[k] = parts.get(k, 0.0) + float(v.detach())
        p = predict(model, corpus, fold.dev, cfg.eval_batch_size, device, cfg.amp, stats)
        dev_m = classification_metrics(p.gold, p.pred, corpus.class_names)
        score = dev_m["weighted_f1"]
        if cfg.scheduler == "plateau":
            sched.step(score)
        rec = {"epoch": epoch, "train_loss": total / max(1, n_b), "dev_weighted_f1": score,
               "dev_accuracy": dev_m["accuracy"], "seconds": time.perf_counter() - te,
               **{f"loss_{k}": v / max(1, n_b) for k, v in parts.items()}}
        history.append(rec)
        if log:
            log(f"  epoch {epoch + 1:3d}/{cfg.epochs}  loss {rec['train_loss']:.4f}  {fold.select_on} W-F1 {score:.4f}  "
                f"acc {dev_m['accuracy']:.4f}  ({rec['seconds']:.1f}s)")
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if cfg.patience and bad >= cfg.patience:
                break
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    dev_p = predict(model, corpus, fold.dev, cfg.eval_batch_size, device, cfg.amp, stats)
    test_p = predict(model, corpus, fold.test, cfg.eval_batch_size, device, cfg.amp, stats)
    return FitResult(
        state_dict=best_state, best_epoch=best_epoch, history=history,
        dev=classification_metrics(dev_p.gold, dev_p.pred, corpus.class_names),
        test=classification_metrics(test_p.gold, test_p.pred, corpus.class_names),
        test_predictions=test_p, seconds=seconds, seconds_per_epoch=seconds / max(1, len(history)), stats=stats,
    )


def model_config_dict(model_name: str, values: dict[str, Any] | None) -> dict[str, Any]:
    """The full resolved model config (defaults filled in) as plain YAML-able data."""
    from mer_pipe.models import _all  # noqa: F401
    from mer_pipe.models.registry import MODELS, make_config

    cls = MODELS.get(model_name)
    cfg = make_config(cls.config_cls, values, f"model {model_name!r}")  # lists -> tuples there
    return to_plain(dataclasses.asdict(cfg))


def to_plain(obj: Any) -> Any:
    """Tuples -> lists, recursively (YAML safe_dump and JSON friendly)."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def run_protocol(model_name: str, model_config: dict | None, corpus: Corpus, modalities: tuple[str, ...],
                 protocol: str, select_on: str, seeds: tuple[int, ...], cfg, device: str,
                 log=print) -> list[RunRecord]:
    """Fit one model per (seed, fold) and collect the records (folds are the same for every seed)."""
    folds = make_folds(corpus, protocol, select_on, cfg.unit)
    for note in protocol_notes(protocol, select_on):
        log(note)
    records = []
    for seed in seeds:
        for fold in folds:
            log(f"{model_name} seed {seed} {fold.name}: {len(fold.train.units)} train units, "
                f"{fold.dev.n_labelled} {select_on}-selection / {fold.test.n_labelled} test utterances")
            res = fit(model_name, model_config, corpus, modalities, fold, cfg, seed, device, log)
            log(f"{model_name} seed {seed} {fold.name}: best epoch {res.best_epoch + 1}, test acc "
                f"{res.test['accuracy']:.4f} W-F1 {res.test['weighted_f1']:.4f}")
            records.append(RunRecord(seed, fold.name, res, [corpus.ids[i] for i in np.flatnonzero(fold.test.keep)]))
    return records
