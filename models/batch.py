"""Batches and task description shared by every model. No file paths, no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mer_pipe.common.modalities import MODALITIES  # noqa: F401  (models name modalities by these letters)

POLARITY_NAMES = ("negative", "neutral", "positive")


@dataclass
class DialogueBatch:
    """B dialogues padded to N utterances. Utterance-level batches are DialogueBatches with N = 1.

    feats:    modality -> [B, N, D_m] pooled per-utterance features
    frames:   modality -> [B, N, F, D] per-frame features (video), optional
    present:  modality -> [B, N] bool, False where that utterance's media failed to decode
    mask:     [B, N] bool, True for real utterances
    speaker:  [B, N] long, speaker index within the dialogue
    label:    [B, N] long, class id, -1 for padding / unlabelled
    polarity: [B, N] long, 0 negative, 1 neutral, 2 positive, -1 unknown
    """

    feats: dict[str, Tensor]
    mask: Tensor
    speaker: Tensor
    label: Tensor
    polarity: Tensor
    present: dict[str, Tensor] = field(default_factory=dict)
    frames: dict[str, Tensor] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "DialogueBatch":
        mv = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return DialogueBatch(
            feats=mv(self.feats), mask=self.mask.to(device), speaker=self.speaker.to(device),
            label=self.label.to(device), polarity=self.polarity.to(device),
            present=mv(self.present), frames=mv(self.frames),
        )

    def presence(self, m: str) -> Tensor:
        """[B, N] bool: utterance is real and modality m decoded for it."""
        p = self.present.get(m)
        return self.mask if p is None else (self.mask & p)


@dataclass
class ModelOutput:
    """logits [B, N, C]; losses: auxiliary terms, already weighted (the trainer adds its classification
    loss on logits[mask] and sums these); embeddings [B, N, E] fused utterance representations.
    train_logits: in training mode, the [B, N, C] logits the trainer's classification loss is applied to
    instead of `logits`, one loss each, summed (JV-ICL's per-head objective); None = `logits`."""

    logits: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    embeddings: Tensor | None = None
    train_logits: tuple[Tensor, ...] | None = None


@dataclass(frozen=True)
class TaskInfo:
    """What a model needs to know about the data, nothing about where it came from.

    in_dims: modality -> pooled feature width; frame_shapes: modality -> (F, D) where frames exist;
    class_polarities[c]: polarity ids (0 neg, 1 neu, 2 pos) class c can carry (MELD surprise: (0, 2)).
    """

    n_classes: int
    class_names: tuple[str, ...]
    in_dims: dict[str, int]
    frame_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    max_speakers: int = 9
    class_polarities: tuple[tuple[int, ...], ...] = ()

    def polarity_matrix(self) -> Tensor:
        """[C, 3] 0/1 incidence emotion -> polarity (all ones for a class with no polarity info)."""
        m = torch.zeros(self.n_classes, 3)
        for c in range(self.n_classes):
            pols = self.class_polarities[c] if c < len(self.class_polarities) else (0, 1, 2)
            m[c, list(pols)] = 1.0
        return m
