"""Fine-tuning an encoder on utterance emotion labels: the training loop of the `finetune` stage.

A classification head (dropout + linear) on the pooled encoder output; AdamW with linear warm-up and
linear decay; optional class weights, frozen lower layers, bf16 autocast, early stopping (`patience`). The
schedule, class weights, scores and autocast are `common/training.py`'s, shared with the trainer. Dev is used
only to pick the epoch (and to stop); the loop never sees test data (the pipeline does not give it any).

Two encoder families, the same loop:
* text: any AutoModel + AutoTokenizer (BERT/RoBERTa/MiniLM...), pooled "mean" (attention-masked) or "cls";
* audio: wav2vec2-family (AutoModel + AutoFeatureExtractor). Padding must not leak, so the batching rule
  is the extractor's: group-norm models (wav2vec2-base) batch only equal-length clips, layer-norm models
  pad with an attention mask (`extractors/wav2vec2.py`). Clips are cut to `max_seconds`.

The output is a directory the matching extractor loads unchanged (`text-hf` / `wav2vec2` with
`model=<dir>`): `save_pretrained` encoder + tokenizer / feature extractor, plus `classifier_head.pt`.

Work in progress lives in `work_dir`: `state.pt` (model, optimiser, scheduler, log; written atomically at
the end of every epoch) and `best/` (the dev-best encoder so far). A rerun with the same `work_dir`
resumes after the last finished epoch; shuffling and dropout are seeded per epoch, so a resumed run
matches an uninterrupted one. This module imports only `common` (and torch / transformers lazily).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np

from mer_pipe.common.config import Config
from mer_pipe.common.errors import ConfigError, MediaError
from mer_pipe.common.training import (accuracy, autocast, class_counts, class_weights_from_counts, lr_schedule,
                                      patience_ran_out, weighted_f1)

from .base import hf_load_kwargs, load_error
from .finetune_batches import _batches, _collate, audio_rule
from .finetune_files import (BEST_DIR, HEAD_FILE, MODALITIES, STATE_FILE, fresh_work_dir, load_head, load_state,
                             save_encoder, save_state)

# fields that change how the encoder is trained, not which one: never part of the key
RUN_FIELDS = ("crossfit",)
# fields added after keys were first written: left out of the key at this (off) value, so older keys stay valid
KEYED_WHEN_SET = {"patience": 0}


@dataclass(frozen=True)
class FinetuneConfig(Config):
    """Fine-tune settings of one slot (`--set t.finetune.lr=3e-5`).

    lr: peak AdamW learning rate; warmup: fraction of all steps spent warming up linearly, then linear
    decay to 0 (`common.training.lr_schedule`, over all `epochs`). epochs: the dev-best of these is kept.
    patience: 0 (off) = all `epochs` run; N >= 1 = stop once dev W-F1 has not improved for N epochs, so
    `epochs` is the maximum (the LR schedule stays defined over `epochs`: stopping early does not compress
    it; in the key only when > 0). max_length: text tokens (the extraction of the fine-tuned slot uses the same); max_seconds: audio clips are cut to this. pooling: "mean"
    (attention-masked) | "cls" (text; audio always mean). class_weights: "balanced" weighs the loss by
    inverse train class frequency. frozen_layers: the embeddings (text) and the first N transformer
    layers stay fixed (the wav2vec2 conv feature encoder is always frozen). context: K previous turns of
    the dialogue prepended as "speaker: text" (text only; 0 = the utterance alone). crossfit: N >= 2
    fine-tunes one encoder per fold of the training dialogues and extracts each fold with the encoder
    that did not see it (0 = off). autocast: bf16 forward/backward on CPU and CUDA (the "finetune" row of the
    precision rule in `common/training.py`).
    """

    section: ClassVar[str] = "finetune"
    examples: ClassVar[dict[str, str]] = {"lr": "5e-5", "epochs": "2", "context": "2"}

    lr: float = 5e-5
    epochs: int = 2
    batch_size: int = 32
    max_length: int = 64
    max_seconds: float = 10.0
    pooling: Literal["mean", "cls"] = "mean"
    warmup: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    class_weights: Literal["none", "balanced"] = "none"
    seed: int = 0
    frozen_layers: int = 0
    context: int = 0
    context_sep: str = " | "
    autocast: bool = False
    crossfit: int = 0
    patience: int = 0

    def validate(self) -> None:
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(self.epochs >= 1, "epochs", "must be >= 1")
        self.require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self.require(self.max_length >= 4, "max_length", "must be >= 4 tokens")
        self.require(self.max_seconds > 0, "max_seconds", "must be > 0")
        self.require(0 <= self.warmup < 1, "warmup", "must be a fraction of the steps in [0, 1)")
        self.require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self.require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        self.require(self.frozen_layers >= 0, "frozen_layers", "must be >= 0")
        self.require(self.context >= 0, "context", "must be >= 0 previous turns")
        self.require(self.crossfit == 0 or self.crossfit >= 2, "crossfit", "must be 0 (off) or >= 2 folds")
        self.require(self.patience >= 0, "patience", "must be 0 (off: run all epochs) or >= 1 epochs")

    def key_dict(self) -> dict[str, Any]:
        """What decides the trained weights (hashed into the fine-tune key): every field but RUN_FIELDS, and a
        KEYED_WHEN_SET field only when it differs from its off value (patience > 0 changes which encoder is kept)."""
        return {k: v for k, v in asdict(self).items()
                if k not in RUN_FIELDS and not (k in KEYED_WHEN_SET and v == KEYED_WHEN_SET[k])}


@dataclass
class FinetuneData:
    """Inputs and integer labels of one split: texts (str) or waveforms (float32 [S] at 16 kHz)."""

    inputs: list[Any]
    labels: list[int]


Log = Callable[[str], None]


# --- encoder + head ---------------------------------------------------------------------------------
def _load_encoder(modality: str, ref: str, revision: str | None, truncation_side: str | None = None):
    """(encoder, preprocessor) from a hub id or a local save_pretrained directory. `truncation_side="left"`
    (context turns first) is kept by the saved tokenizer, so extraction truncates the same way."""
    import torch
    from transformers import AutoModel, AutoTokenizer, AutoFeatureExtractor

    what = "text encoder / tokenizer" if modality == "text" else "wav2vec2 encoder / feature extractor"
    try:
        if modality == "text":
            side = {"truncation_side": truncation_side} if truncation_side else {}
            pre = AutoTokenizer.from_pretrained(ref, **hf_load_kwargs(ref, revision), **side)
        else:
            pre = AutoFeatureExtractor.from_pretrained(ref, **hf_load_kwargs(ref, revision))
        enc = AutoModel.from_pretrained(ref, **hf_load_kwargs(ref, revision), dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise load_error(f"fine-tune {what}", ref, exc) from None
    if modality == "audio" and not hasattr(enc, "_get_feat_extract_output_lengths"):
        raise load_error("fine-tune wav2vec2 encoder", ref,
                         TypeError(f"{type(enc).__name__} is not a wav2vec2-family encoder"))
    return enc, pre


def _layer_list(enc: Any):
    encoder = getattr(enc, "encoder", None)
    for name in ("layer", "layers"):
        layers = getattr(encoder, name, None)
        if layers is not None:
            return layers
    return None


def freeze(enc: Any, modality: str, n_layers: int) -> None:
    """Fix the embeddings / conv feature encoder and the first `n_layers` transformer layers."""
    if modality == "audio":
        for p in enc.feature_extractor.parameters():  # the conv stack: always frozen (standard recipe)
            p.requires_grad_(False)
    if n_layers <= 0:
        return
    layers = _layer_list(enc)
    if layers is None:
        raise ConfigError(f"finetune.frozen_layers={n_layers}: {type(enc).__name__} exposes no encoder layer list; "
                          "use frozen_layers=0")
    if n_layers > len(layers):
        raise ConfigError(f"finetune.frozen_layers={n_layers}: the encoder has only {len(layers)} layers; "
                          f"fix it with --set SLOT.finetune.frozen_layers=<0..{len(layers)}>")
    if modality == "text" and getattr(enc, "embeddings", None) is not None:
        for p in enc.embeddings.parameters():
            p.requires_grad_(False)
    for layer in list(layers)[:n_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)


def build_classifier(enc: Any, n_classes: int, modality: str, pooling: str, dropout: float):
    """Encoder + pooling + dropout + linear head (the class is defined here so importing stays light)."""
    import torch
    from torch import nn

    class EncoderClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = enc
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(int(enc.config.hidden_size), n_classes)

        def pooled(self, batch: dict[str, Any]) -> torch.Tensor:
            if modality == "text":
                out = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   **({"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}))
                h = out.last_hidden_state
                if pooling == "cls":
                    return h[:, 0]
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            kwargs = {"input_values": batch["input_values"]}
            if "attention_mask" in batch:
                kwargs["attention_mask"] = batch["attention_mask"]
            h = self.encoder(**kwargs).last_hidden_state  # [B, T, D]
            valid = self.encoder._get_feat_extract_output_lengths(batch["lengths"])
            mask = (torch.arange(h.shape[1], device=h.device)[None, :] < valid[:, None].to(h.device)).to(h.dtype)
            return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)

        def forward(self, batch: dict[str, Any]) -> torch.Tensor:
            return self.head(self.dropout(self.pooled(batch)))

    return EncoderClassifier()


def finetune(
    modality: str,
    ref: str,
    revision: str | None,
    cfg: FinetuneConfig,
    train: FinetuneData,
    dev: FinetuneData,
    n_classes: int,
    work_dir: str | Path,
    *,
    device: str = "cpu",
    log: Log = lambda s: None,
    on_step: Callable[[int, int], None] | None = None,
    on_discard: Log = lambda s: None,
) -> dict[str, Any]:
    """Fine-tune `ref` on `train`, pick the epoch on `dev`, leave the dev-best encoder in `work_dir/best`.

    Resumes from `work_dir/state.pt` when it exists. The state is loaded with `weights_only=True` (tensors
    and plain values only: a crafted file cannot run code); a corrupt or foreign one is reported through
    `on_discard`, the work folder is emptied and training starts again. Returns the training record: per-epoch log (train
    loss, dev weighted F1 and accuracy, seconds), best epoch, dev score, wall time, utterances/s, `stopped_early`
    (patience ran out) and `stopped_epoch` (the last epoch trained). A resumed run that had stopped trains no more.
    """
    import torch

    if modality not in MODALITIES:
        raise ConfigError(f"fine-tuning works for text and audio slots, not {modality!r}; video stays frozen "
                          "(drop SLOT.finetune for that slot)")
    if modality == "audio" and cfg.context:
        raise ConfigError(f"finetune.context={cfg.context}: context turns are text; use context=0 for an audio slot")
    if not train.inputs:
        raise ConfigError("fine-tuning needs labelled training utterances; the dataset has none in split 'train'")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    enc, pre = _load_encoder(modality, ref, revision, "left" if modality == "text" and cfg.context > 0 else None)
    pad_ok, min_len = audio_rule(enc, pre) if modality == "audio" else (True, 0)
    torch.manual_seed(cfg.seed)
    model = build_classifier(enc, n_classes, modality, cfg.pooling, cfg.dropout)
    freeze(model.encoder, modality, cfg.frozen_layers)
    model.to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n = len(train.inputs)
    steps_per_epoch = len(_batches(modality, pre, train.inputs, list(range(n)), cfg, pad_ok, min_len))
    total = max(1, steps_per_epoch * cfg.epochs)  # over all epochs, also when patience stops earlier
    sched = lr_schedule(opt, total, int(round(cfg.warmup * total)), "linear")
    weight = None
    if cfg.class_weights == "balanced":  # 1 / p_c: sklearn's "balanced" up to a factor the mean-reduced loss ignores
        weight = torch.tensor(class_weights_from_counts(class_counts(train.labels, n_classes)), dtype=torch.float32,
                              device=device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    record: dict[str, Any] = {"epochs": [], "best_epoch": None, "dev_weighted_f1": None, "train_seconds": 0.0,
                              "n_train": n, "n_dev": len(dev.inputs), "steps_per_epoch": steps_per_epoch,
                              "stopped_early": False, "stopped_epoch": None}
    start_epoch = 1
    state_path = work / STATE_FILE
    if state_path.is_file() and (work / BEST_DIR).is_dir():
        state = load_state(state_path, device, cfg.epochs)
        try:
            if state is None:
                raise ValueError("not a resume state written by mer-pipe")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            # nothing of it was run (weights_only); start over from the base weights, saying so
            on_discard(f"the resume state {state_path} is corrupt or was not written by mer-pipe ({type(exc).__name__}); "
                       f"discarding the work folder {work} and starting this fine-tune again")
            return finetune(modality, ref, revision, cfg, train, dev, n_classes, fresh_work_dir(work), device=device, log=log,
                            on_step=on_step, on_discard=on_discard)
        record = {"stopped_early": False, "stopped_epoch": int(state["epoch"]), **state["record"]}
        start_epoch = cfg.epochs + 1 if record["stopped_early"] else int(state["epoch"]) + 1  # stopped: no more epochs
        log(f"resuming after epoch {state['epoch']} (from {state_path})")

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout: a resumed epoch draws what an uninterrupted one would
        np.random.seed(cfg.seed * 1000 + epoch)  # wav2vec2's SpecAugment masks and LayerDrop draw from numpy's RNG
        order = torch.randperm(n, generator=g).tolist()
        groups = _batches(modality, pre, train.inputs, order, cfg, pad_ok, min_len)
        perm = torch.randperm(len(groups), generator=g).tolist() if modality == "audio" else range(len(groups))
        total_loss, seen = 0.0, 0
        for step, gi in enumerate(perm):
            idx = groups[gi]
            batch = _collate(modality, pre, train.inputs, idx, cfg, device, pad_ok, min_len)
            y = torch.tensor([train.labels[i] for i in idx], device=device)
            with autocast(cfg.autocast, device, "finetune"):
                logits = model(batch)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
            seen += len(idx)
            if on_step is not None:
                on_step(step + 1, len(groups))
        preds = predict_logits(model, modality, pre, dev.inputs, cfg, device, pad_ok, min_len).argmax(1).tolist() \
            if dev.inputs else []
        dev_f1, dev_acc = (weighted_f1(dev.labels, preds), accuracy(dev.labels, preds)) if dev.inputs \
            else (float("nan"), float("nan"))
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch, "train_loss": total_loss / max(1, seen), "dev_weighted_f1": dev_f1,
                 "dev_accuracy": dev_acc, "seconds": seconds, "utt_per_s": n / seconds if seconds else None,
                 "lr_end": sched.get_last_lr()[0]}
        record["epochs"].append(entry)
        record["train_seconds"] += seconds
        best = record["dev_weighted_f1"]
        improved = best is None or (not math.isnan(dev_f1) and dev_f1 > best) or not dev.inputs
        if improved:
            record["best_epoch"], record["dev_weighted_f1"] = epoch, dev_f1
            save_encoder(model, pre, work / BEST_DIR, modality, cfg, n_classes)
        stop = patience_ran_out(epoch, record["best_epoch"] or 0, cfg.patience, cfg.epochs)
        record["stopped_early"], record["stopped_epoch"] = stop, epoch
        log(f"epoch {epoch}/{cfg.epochs}: train loss {entry['train_loss']:.4f}, dev W-F1 {100 * dev_f1:.2f} "
            f"(acc {100 * dev_acc:.2f}){' best' if improved else ''}, {seconds:.0f}s, {entry['utt_per_s']:.1f} utt/s"
            + (f"; stopping: no better dev W-F1 for {cfg.patience} epochs (best: epoch {record['best_epoch']})"
               if stop else ""))
        save_state({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "record": record}, state_path)
        if stop:
            break
    record["utt_per_s"] = n * len(record["epochs"]) / record["train_seconds"] if record["train_seconds"] else None
    return record


def predict_logits(model: Any, modality: str, pre: Any, inputs: Sequence[Any], cfg: FinetuneConfig, device: str,
                   pad_ok: bool = True, min_len: int = 0):
    """[N, C] float logits in input order (eval mode, no grad)."""
    import torch

    model.eval()
    out = torch.zeros(len(inputs), model.head.out_features)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]) if modality == "text" else np.asarray(inputs[i]).size)
    with torch.inference_mode():
        for idx in _batches(modality, pre, inputs, order, cfg, pad_ok, min_len):
            with autocast(cfg.autocast, device, "finetune"):
                logits = model(_collate(modality, pre, inputs, idx, cfg, device, pad_ok, min_len))
            out[idx] = logits.float().cpu()
    return out


def load_classifier(path: str | Path, cfg: FinetuneConfig, device: str = "cpu") -> Callable[[Sequence[Any]], np.ndarray]:
    """A fine-tuned checkpoint directory as a classifier: inputs -> [N, C] logits (numpy).

    For benchmarks and inspection (the encoder's own classifier score); the pipeline itself only
    extracts features from the encoder."""
    path = Path(path)
    head_path = path / HEAD_FILE
    if not head_path.is_file():
        raise MediaError(f"{path} holds no {HEAD_FILE}; it is not a fine-tuned checkpoint written by mer-pipe")
    head = load_head(head_path)
    modality = head["modality"]
    enc, pre = _load_encoder(modality, str(path), None)
    model = build_classifier(enc, int(head["n_classes"]), modality, head["pooling"], 0.0)
    model.head.weight.data.copy_(head["weight"])
    model.head.bias.data.copy_(head["bias"])
    model.to(device)
    pad_ok, min_len = audio_rule(enc, pre) if modality == "audio" else (True, 0)

    def predict(inputs: Sequence[Any]) -> np.ndarray:
        return predict_logits(model, modality, pre, list(inputs), cfg, device, pad_ok, min_len).numpy()

    return predict
