"""Two honest reference models: `mlp` (each utterance alone) and `bigru` (dialogue context).

Both concatenate the chosen modalities' pooled features (zeros where a modality failed to decode),
use nothing the four published models lack (no extra losses, no label tricks) and return no auxiliary
loss: the trainer's classification loss is the whole objective.
"""
from __future__ import annotations

from typing import Literal
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .batch import DialogueBatch, ModelOutput, TaskInfo
from .layers import ContextEncoder, MLPHead, ModalityProjector, flatten_valid, unflatten_valid, zero_absent
from .base import ERCModel, PaperValue
from .registry import MODELS, ModelConfig


NO_EARLY_STOP = PaperValue("trainer.patience", 0, "proposed", "no paper: the dev schedule, every epoch trained")


def concat_inputs(batch: DialogueBatch, modalities: tuple[str, ...]) -> Tensor:
    """[B, N, sum D_m] concatenated pooled features, zeroed where the utterance lacks that modality."""
    return torch.cat([zero_absent(batch.feats[m], batch.presence(m)) for m in modalities], dim=-1)


@dataclass(frozen=True)
class MLPConfig(ModelConfig):
    """hidden: widths of the hidden layers; dropout after each; input_dropout on the concatenated
    features; norm: "layer" | "batch" | "none" after each hidden Linear; act: relu | gelu | ..."""

    hidden: tuple[int, ...] = (512,)
    dropout: float = 0.3
    input_dropout: float = 0.1
    norm: Literal["layer", "batch", "none"] = "layer"
    act: Literal["relu", "gelu", "leaky_relu", "tanh"] = "relu"

    positive = ("hidden",)


@MODELS.register("mlp")
class UtteranceMLP(ERCModel):
    """Utterance-only MLP over the concatenated modalities: [B, N, sum D_m] -> logits [B, N, C]."""

    name = "mlp"
    config_cls = MLPConfig
    # chosen on dev (bench/bench_meld_text.py); no paper: the paper profile is the same schedule without early stopping
    train_defaults = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "batch_size": 64, "epochs": 30, "patience": 6,
                      "unit": "utterance"}
    paper_profile = (NO_EARLY_STOP,)

    def __init__(self, task: TaskInfo, modalities: tuple[str, ...], config: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        self.modalities, self.config = tuple(modalities), config
        dims = [sum(task.in_dims[m] for m in modalities), *config.hidden]
        self.input_drop = nn.Dropout(config.input_dropout)
        self.body = nn.Sequential(*[ModalityProjector(dims[i], dims[i + 1], config.dropout, config.norm, config.act)
                                    for i in range(len(config.hidden))])
        self.out = nn.Linear(dims[-1], task.n_classes)

    def forward(self, batch: DialogueBatch) -> ModelOutput:
        x = flatten_valid(concat_inputs(batch, self.modalities), batch.mask)  # [M, D]
        h = self.body(self.input_drop(x))
        return ModelOutput(logits=unflatten_valid(self.out(h), batch.mask),
                           embeddings=unflatten_valid(h, batch.mask))


@dataclass(frozen=True)
class BiGRUConfig(ModelConfig):
    """proj_dim: width of the input projection (Linear-LN-ReLU-dropout); hidden: GRU width per direction;
    layers: GRU depth; skip: classify [projection ; context] instead of the context alone;
    head_hidden: classifier MLP widths; dropout everywhere; input_dropout on the raw features."""

    proj_dim: int = 256
    hidden: int = 128
    layers: int = 1
    skip: bool = True
    head_hidden: tuple[int, ...] = (256,)
    dropout: float = 0.3
    input_dropout: float = 0.1
    norm: Literal["layer", "batch", "none"] = "layer"

    positive = ("proj_dim", "hidden", "layers", "head_hidden")


@MODELS.register("bigru")
class ContextBiGRU(ERCModel):
    """Per-utterance projection, a bidirectional GRU over each dialogue, an MLP head per utterance."""

    name = "bigru"
    config_cls = BiGRUConfig
    train_defaults = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "batch_size": 16, "epochs": 30, "patience": 6}
    paper_profile = (NO_EARLY_STOP,)

    def __init__(self, task: TaskInfo, modalities: tuple[str, ...], config: BiGRUConfig = BiGRUConfig()) -> None:
        super().__init__()
        self.modalities, self.config = tuple(modalities), config
        self.input_drop = nn.Dropout(config.input_dropout)
        self.proj = ModalityProjector(sum(task.in_dims[m] for m in modalities), config.proj_dim,
                                      config.dropout, config.norm)
        self.ctx = ContextEncoder(config.proj_dim, config.hidden, kind="gru", bidirectional=True,
                                  layers=config.layers, dropout=config.dropout)
        self.drop = nn.Dropout(config.dropout)
        head_in = self.ctx.out_dim + (config.proj_dim if config.skip else 0)
        self.head = MLPHead(head_in, config.head_hidden, task.n_classes, config.dropout, config.norm)

    def forward(self, batch: DialogueBatch) -> ModelOutput:
        x = flatten_valid(concat_inputs(batch, self.modalities), batch.mask)
        u = unflatten_valid(self.proj(self.input_drop(x)), batch.mask)       # [B, N, P]
        c = self.drop(self.ctx(u, batch.mask))                              # [B, N, 2H]
        e = torch.cat([u, c], dim=-1) if self.config.skip else c
        logits = unflatten_valid(self.head(flatten_valid(e, batch.mask)), batch.mask)  # BN never sees padding
        return ModelOutput(logits=logits, embeddings=e)
