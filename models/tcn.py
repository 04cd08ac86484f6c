"""Temporal convolutional network (Bai et al. 2018), as used by DeepMSI-MER for the frame sequence:
residual blocks of two weight-normalised dilated causal convolutions (dilation 2^i), ReLU, dropout,
and a 1x1 convolution on the residual path when the channel count changes.

Causal: output step t depends only on inputs 0..t (left padding, no look-ahead), so the output at the
last *real* step of a right-padded sequence ignores the padding after it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


from .registry import ModelConfig


@dataclass(frozen=True)
class TCNConfig(ModelConfig):
    """channels: output width of each block (code: 1024 x 3); kernel: conv width (code: 3);
    dilation of block i is 2**i (1, 2, 4); dropout after each conv (code: 0.3 IEMOCAP / 0.4 MELD)."""

    channels: tuple[int, ...] = (1024, 1024, 1024)
    kernel: int = 3
    dropout: float = 0.3
    weight_norm: bool = True

    def validate(self) -> None:
        self.require(bool(self.channels) and min(self.channels) >= 1, "channels",
                     "must be a non-empty list of positive widths")
        self.require(self.kernel >= 1, "kernel", "must be >= 1")


class CausalConv1d(nn.Module):
    """Conv1d padded on the left by (kernel-1)*dilation so y_t = sum_q W_q x_{t - q*dilation}."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, weight_norm: bool) -> None:
        super().__init__()
        self.left = (kernel - 1) * dilation
        conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)
        conv.weight.data.normal_(0.0, 0.01)  # TCN reference init
        self.conv = nn.utils.parametrizations.weight_norm(conv) if weight_norm else conv

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C_in, T] -> [B, C_out, T]. Equivalent to symmetric padding + chomp in the original."""
        return self.conv(nn.functional.pad(x, (self.left, 0)))


class TemporalBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float, weight_norm: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(
            CausalConv1d(c_in, c_out, kernel, dilation, weight_norm), nn.ReLU(), nn.Dropout(dropout),
            CausalConv1d(c_out, c_out, kernel, dilation, weight_norm), nn.ReLU(), nn.Dropout(dropout),
        )
        self.down = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None
        if self.down is not None:
            self.down.weight.data.normal_(0.0, 0.01)

    def forward(self, x: Tensor) -> Tensor:
        res = x if self.down is None else self.down(x)
        return torch.relu(self.net(x) + res)


class TCN(nn.Module):
    """x [B, T, in_dim] -> [B, T, channels[-1]] (time-major in and out; conv runs channel-major)."""

    def __init__(self, in_dim: int, cfg: TCNConfig = TCNConfig()) -> None:
        super().__init__()
        widths = (in_dim, *cfg.channels)
        self.blocks = nn.Sequential(*[
            TemporalBlock(widths[i], widths[i + 1], cfg.kernel, 2 ** i, cfg.dropout, cfg.weight_norm)
            for i in range(len(cfg.channels))
        ])
        self.out_dim = cfg.channels[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)

    def last(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Output at the last real step: x [B, T, D], valid [B, T] bool prefix mask -> [B, channels[-1]]."""
        y = self.forward(x)
        if valid is None:
            return y[:, -1]
        last = (valid.long().sum(1) - 1).clamp(min=0)
        return y[torch.arange(y.shape[0], device=y.device), last]
