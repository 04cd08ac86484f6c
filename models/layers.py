"""Small shared layers: projectors, context RNN, speaker embedding, MLP / projection / fusion heads, and
flattening of the valid utterances of a padded dialogue batch (= sibling code's `simple_batch_graphify`)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mer_pipe.common.errors import ConfigError

NORMS = ("layer", "batch", "none")
ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "tanh": nn.Tanh}


def flatten_valid(x: Tensor, mask: Tensor) -> Tensor:
    """[B, N, ...] -> [M, ...] rows where mask [B, N] is True, in dialogue-major order."""
    return x[mask]


def unflatten_valid(flat: Tensor, mask: Tensor, fill: float = 0.0) -> Tensor:
    """Inverse of `flatten_valid`: [M, ...] -> [B, N, ...] with `fill` at padding."""
    out = flat.new_full((*mask.shape, *flat.shape[1:]), fill)
    out[mask] = flat
    return out




def zero_absent(x: Tensor, present: Tensor) -> Tensor:
    """x [*P, ...] times present [*P] bool: zeros where the utterance's media failed (or is padding)."""
    return x * present.reshape(*present.shape, *([1] * (x.dim() - present.dim()))).to(x.dtype)


def project_present(proj: nn.Module, x: Tensor, present: Tensor, mask: Tensor) -> Tensor:
    """x [B, N, D], present / mask [B, N] -> proj(valid rows) [M, d], zero before and after the projection
    where the modality is absent, so a failed modality contributes exactly nothing (not proj's bias)."""
    return zero_absent(proj(flatten_valid(zero_absent(x, present), mask)), flatten_valid(present, mask))


class RowSafeBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that also trains on a batch of one row (a k-fold remainder, a one-utterance dialogue):
    one row has no batch statistics, so it is normalised with the running statistics, as in eval mode, and
    the running statistics are left as they are. Two or more rows: exactly nn.BatchNorm1d (same state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.dim() == 2 and x.shape[0] == 1 and self.running_mean is not None:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)
        return super().forward(x)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind not in NORMS:
        raise ConfigError(f"norm={kind!r}; choose one of {list(NORMS)}")
    return {"layer": lambda: nn.LayerNorm(dim), "batch": lambda: RowSafeBatchNorm1d(dim), "none": nn.Identity}[kind]()


def _act(kind: str) -> nn.Module:
    if kind not in ACTS:
        raise ConfigError(f"activation={kind!r}; choose one of {sorted(ACTS)}")
    return ACTS[kind]()


class ModalityProjector(nn.Module):
    """Linear -> norm -> act -> dropout, one per modality. Input [M, D_in] (flattened valid rows, so
    BatchNorm statistics never see padding) -> [M, D_out]."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, norm: str = "layer", act: str = "relu"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), _norm(norm, out_dim), _act(act), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ContextEncoder(nn.Module):
    """Packed LSTM/GRU over each dialogue. x [B, N, D], mask [B, N] (real utterances first) ->
    [B, N, out_dim] with zeros at padding; out_dim = hidden * (2 if bidirectional else 1)."""

    def __init__(self, in_dim: int, hidden: int, kind: str = "lstm", bidirectional: bool = True,
                 layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if kind not in ("lstm", "gru"):
            raise ConfigError(f"context encoder kind={kind!r}; choose one of ['lstm', 'gru']")
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(in_dim, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if layers > 1 else 0.0)
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()  # empty rows are run on one padded step, then zeroed
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out * mask[..., None].to(out.dtype)


class SpeakerEmbedding(nn.Module):
    """Learned table over speaker index within the dialogue: speaker [B, N] -> [B, N, d]."""

    def __init__(self, max_speakers: int, dim: int):
        super().__init__()
        self.max_speakers = max_speakers
        self.table = nn.Embedding(max_speakers, dim)

    def forward(self, speaker: Tensor, mask: Tensor) -> Tensor:
        spk = torch.where(mask, speaker, torch.zeros_like(speaker))  # padding may carry -1
        if spk.numel() and int(spk.max()) >= self.max_speakers:
            raise ConfigError(f"speaker index {int(spk.max())} >= TaskInfo.max_speakers={self.max_speakers}; "
                              f"build the TaskInfo with max_speakers >= {int(spk.max()) + 1}")
        return self.table(spk.clamp(min=0)) * mask[..., None].to(self.table.weight.dtype)


class MLPHead(nn.Module):
    """Stack of Linear-[norm]-act-dropout blocks ending in Linear(out_dim). [*, in_dim] -> [*, out_dim]."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0,
                 norm: str = "none", act: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), _norm(norm, h), _act(act), nn.Dropout(dropout)]
            prev = h
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """CLIP-style residual projection: p = W1 x; LN(dropout(W2 gelu(p)) + p). [*, in_dim] -> [*, dim]."""

    def __init__(self, in_dim: int, dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.proj(x)
        return self.norm(self.drop(self.fc(nn.functional.gelu(p))) + p)
