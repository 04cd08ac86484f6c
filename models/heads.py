"""TS-GCL two-stage head (docs/models.md §2.3 step 8, §8.5): polarity first, then emotion conditioned on it."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mer_pipe.common.errors import ConfigError

from .layers import MLPHead

CONDITIONS = ("concat", "none")
PRIOR_EPS = 1e-6


class HierarchicalHead(nn.Module):
    """Stage 1: q = softmax(MLP_1(f)) over 3 polarities. Stage 2: o = MLP_2([f ; q]) (condition="concat")
    or MLP_2(f) (condition="none"). With prior=True: o += gamma * log(q @ M^T + 1e-6), M [C, 3] the 0/1
    emotion->polarity incidence, so a confident polarity pushes down emotions that cannot carry it.
    f [*, in_dim] -> (emotion logits [*, C], polarity logits [*, 3])."""

    def __init__(self, in_dim: int, hidden: int, polarity_matrix: Tensor, dropout: float = 0.0,
                 prior: bool = True, gamma: float = 1.0, condition: str = "concat"):
        super().__init__()
        if condition not in CONDITIONS:
            raise ConfigError(f"two-stage condition={condition!r}; choose one of {list(CONDITIONS)}")
        n_classes = polarity_matrix.shape[0]
        self.prior, self.gamma, self.condition = prior, gamma, condition
        self.register_buffer("pmat", polarity_matrix.float(), persistent=False)
        self.stage1 = MLPHead(in_dim, (hidden,), 3, dropout)
        self.stage2 = MLPHead(in_dim + (3 if condition == "concat" else 0), (hidden,), n_classes, dropout)

    def combine(self, emotion: Tensor, polarity_probs: Tensor) -> Tensor:
        """Add the log-prior penalty gamma * log(M q + eps) to raw emotion logits [*, C]."""
        if not self.prior:
            return emotion
        return emotion + self.gamma * torch.log(polarity_probs @ self.pmat.T + PRIOR_EPS)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        pol = self.stage1(f)
        q = pol.softmax(-1)
        inp = torch.cat([f, q], -1) if self.condition == "concat" else f
        return self.combine(self.stage2(inp), q), pol


def polarity_targets(polarity: Tensor, label: Tensor, mask: Tensor, polarity_matrix: Tensor) -> Tensor:
    """[B, N] polarity ids for the stage-1 loss: the batch's polarity where known (MELD sentiment), else
    the unique polarity of the emotion class (IEMOCAP mapping), else -1 (ignored)."""
    pm = polarity_matrix.to(label.device)
    single = pm.sum(1) == 1  # [C] classes that carry exactly one polarity
    derived = torch.full_like(label, -1)
    ok = (label >= 0) & single[label.clamp(min=0)]
    derived[ok] = pm.argmax(1)[label[ok]]
    out = torch.where(polarity >= 0, polarity, derived)
    return torch.where(mask, out, torch.full_like(out, -1))
