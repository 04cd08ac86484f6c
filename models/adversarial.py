"""Tri-modal GAN of AR-IIGCN (docs/models.md §3.3 steps 2-3, §3.4, §8.4), after the sibling AGF-IB code:
one generator per modality (g = LSTM(relu(W h)) over the dialogue) and one discriminator per modality
(two stacked 2-layer BiLSTMs -> Linear -> logit) that answers "does this vector come from modality m?".

Modes: "sum" (sibling code: L_G + L_D added to the main loss, one optimiser, no detaching),
"alternate" (standard GAN: the model's `before_step` updates the discriminators on detached generator
outputs, the main loss carries only L_G), "grl" (gradient reversal on the discriminator input: the main
loss carries L_D, discriminators minimise it, generators receive -lambda times its gradient).
With one modality there is nothing to align: the generators still run (they are the model's context
encoder) but no discriminator is built and every adversarial loss is a constant zero."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mer_pipe.common.errors import ConfigError

from .layers import ContextEncoder

ADV_MODES = ("sum", "alternate", "grl")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float = 1.0) -> Tensor:
    """Identity forward, gradient multiplied by -lam backward."""
    return _GradReverse.apply(x, lam)


class Discriminator(nn.Module):
    """x [B, N, d], mask [B, N] -> logits [B, N] (sigmoid = probability of 'own modality')."""

    def __init__(self, dim: int):
        super().__init__()
        half = max(dim // 2, 1)
        self.rnn1 = ContextEncoder(dim, half, "lstm", bidirectional=True, layers=2)
        self.rnn2 = ContextEncoder(self.rnn1.out_dim, half, "lstm", bidirectional=True, layers=2)
        self.out = nn.Linear(self.rnn2.out_dim, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = torch.relu(self.rnn2(torch.relu(self.rnn1(x, mask)), mask))
        return self.out(h).squeeze(-1)


class AdversarialModalityGAN(nn.Module):
    """Generators (every modality) + discriminators (only with >= 2 modalities). h: modality -> [B, N, d]."""

    @property
    def active(self) -> bool:
        return len(self.disc) > 0

    def __init__(self, modalities: tuple[str, ...], dim: int, mode: str = "alternate",
                 grl_lambda: float = 1.0, grl_anneal_steps: int = 0):
        super().__init__()
        if mode not in ADV_MODES:
            raise ConfigError(f"adv_mode={mode!r}; choose one of {list(ADV_MODES)}")
        self.modalities, self.mode = modalities, mode
        self.grl_lambda, self.grl_anneal_steps = grl_lambda, grl_anneal_steps
        self.gen_in = nn.ModuleDict({m: nn.Linear(dim, dim) for m in modalities})
        self.gen_rnn = nn.ModuleDict({m: ContextEncoder(dim, dim, "lstm", bidirectional=False) for m in modalities})
        self.disc = nn.ModuleDict({m: Discriminator(dim) for m in modalities} if len(modalities) > 1 else {})
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def generate(self, h: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """g_m = LSTM_m(relu(W_m h_m)), [B, N, d] each."""
        return {m: self.gen_rnn[m](torch.relu(self.gen_in[m](h[m])), mask) for m in self.modalities}

    def _bce(self, d: str, x: Tensor, mask: Tensor, presence: Tensor, target: float) -> Tensor:
        logit = self.disc[d](x, mask)
        sel = presence
        if not bool(sel.any()):
            return logit.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logit[sel], torch.full_like(logit[sel], target))

    def disc_loss(self, g: dict[str, Tensor], mask: Tensor, presence: dict[str, Tensor]) -> Tensor:
        """L_D = sum_m [BCE(D_m(g_m), 1) + sum_{m' != m} BCE(D_m(g_m'), 0)]."""
        return sum(self._bce(d, g[m], mask, presence[m], 1.0 if m == d else 0.0)
                   for d in self.modalities for m in self.modalities)

    def gen_loss(self, g: dict[str, Tensor], mask: Tensor, presence: dict[str, Tensor]) -> Tensor:
        """L_G = sum_m sum_{m' != m} BCE(D_m(g_m'), 1): fool each discriminator with the other modalities."""
        return sum(self._bce(d, g[m], mask, presence[m], 1.0)
                   for d in self.modalities for m in self.modalities if m != d)

    def current_grl_lambda(self) -> float:
        """lambda annealed 0 -> grl_lambda as 2/(1+exp(-10p))-1 over grl_anneal_steps (0 = constant)."""
        if self.grl_anneal_steps <= 0:
            return self.grl_lambda
        p = min(float(self.steps) / self.grl_anneal_steps, 1.0)
        return self.grl_lambda * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)

    def main_loss(self, g: dict[str, Tensor], mask: Tensor, presence: dict[str, Tensor]) -> Tensor:
        """The adversarial term the main optimiser sees, by mode (unweighted)."""
        if not self.active:
            return mask.new_zeros((), dtype=torch.float32)
        if self.mode == "sum":
            return self.gen_loss(g, mask, presence) + self.disc_loss(g, mask, presence)
        if self.mode == "alternate":
            return self.gen_loss(g, mask, presence)
        if self.training:
            self.steps += 1
        lam = self.current_grl_lambda()
        return self.disc_loss({m: grad_reverse(v, lam) for m, v in g.items()}, mask, presence)

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.disc.parameters())
