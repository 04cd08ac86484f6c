"""Visual sequence compression (VSC, DeepMSI-MER §5.2.3 / §8.3): keep the tokens most relevant to a
semantic guide and optionally merge the dropped ones into their most similar kept token.

Works on any token sequence: Swin patch tokens or, in cache Mode A, the 15 per-frame vectors of an
utterance. Selection itself carries no gradient (top-k / threshold are discrete), exactly as in the
released code; `scale_by_relevance` is a proposed option that lets the guide receive gradient.
"""
from __future__ import annotations

from typing import Literal
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


from .registry import ModelConfig

SELECT_MODES = ("topk", "threshold")  # = VSCConfig.select choices


@dataclass(frozen=True)
class VSCConfig(ModelConfig):
    """select: "topk" keeps `k` tokens (code); "threshold" keeps tokens with cos(guide, token) >= `threshold`
    (paper; at least one token is always kept and the output is padded to the batch maximum).
    tau: softmax temperature of the relevance (code: 1.0). guide_weight: m = mean(Z) + guide_weight * c
    (code: plain sum = 1.0; paper: a weighted sum). keep_order: re-sort kept tokens by position (clean);
    False returns them sorted by relevance, as `torch.topk` does in the released code.
    merge: fold each dropped token into its most similar kept token when cos > delta:
    z_k <- alpha z_k + (1 - alpha) * mean(merged tokens) (clean); False = released code (merge is dead code).
    scale_by_relevance (proposed): multiply kept tokens by L * r so the guide gets a gradient.
    """

    select: Literal["topk", "threshold"] = "topk"
    k: int = 10
    threshold: float = 0.0
    tau: float = 1.0
    guide_weight: float = 1.0
    keep_order: bool = True
    merge: bool = True
    delta: float = 0.6
    alpha: float = 0.9
    scale_by_relevance: bool = False

    def validate(self) -> None:
        self.require(self.k >= 1, "k", "must be >= 1 (the number of tokens kept)")
        self.require(self.tau > 0, "tau", "must be > 0")
        self.require(0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1] (the weight a token keeps when merging)")


@dataclass
class VSCOutput:
    """tokens [B, K, D] kept (and merged) tokens; valid [B, K] bool; index [B, K] long source positions
    (-1 where not valid); relevance [B, L] softmax relevance of every input token."""

    tokens: Tensor
    valid: Tensor
    index: Tensor
    relevance: Tensor


def relevance(z: Tensor, guide: Tensor | None, mask: Tensor, cfg: VSCConfig) -> tuple[Tensor, Tensor]:
    """z [B, L, D], guide [B, D] or None, mask [B, L] -> (cosine [B, L], softmax relevance [B, L])."""
    m_f = mask.unsqueeze(-1).to(z.dtype)
    vbar = (z * m_f).sum(1) / m_f.sum(1).clamp(min=1.0)  # mean over real tokens only
    m = vbar if guide is None else vbar + cfg.guide_weight * guide
    cos = F.cosine_similarity(m.unsqueeze(1), z, dim=-1, eps=1e-8)  # [B, L]
    r = (cos / cfg.tau).masked_fill(~mask, float("-inf")).softmax(dim=1)
    return cos, torch.nan_to_num(r, nan=0.0)  # a row with no real token gives NaNs -> 0


def _select(cos: Tensor, r: Tensor, mask: Tensor, cfg: VSCConfig) -> tuple[Tensor, Tensor]:
    """-> (index [B, K] long, valid [B, K] bool) of kept tokens, in relevance or position order."""
    B, L = r.shape
    if cfg.select == "topk":
        n_keep = mask.sum(1).clamp(max=cfg.k)                       # [B] rows with fewer tokens keep all
        K = min(cfg.k, L)
        score = r.masked_fill(~mask, -1.0)
        idx = score.topk(K, dim=1).indices                          # sorted by relevance (code behaviour)
        valid = torch.arange(K, device=r.device).expand(B, K) < n_keep.unsqueeze(1)
    else:
        keep = (cos >= cfg.threshold) & mask
        best = r.masked_fill(~mask, -1.0).argmax(1)
        keep = keep | (F.one_hot(best, L).bool() & mask)            # never keep nothing
        K = max(int(keep.sum(1).max().item()), 1)
        # kept tokens first, most relevant first; dropped tokens after
        order = (r.masked_fill(~keep, -2.0)).argsort(dim=1, descending=True, stable=True)
        idx = order[:, :K]
        valid = torch.arange(K, device=r.device).expand(B, K) < keep.sum(1, keepdim=True)
    if cfg.keep_order:
        # sort by position with invalid slots pushed to the end; valid slots are a prefix before and after
        key = torch.where(valid, idx, idx + L)
        idx = idx.gather(1, key.argsort(dim=1))
    return idx, valid & torch.gather(mask, 1, idx)


def vsc(z: Tensor, guide: Tensor | None, cfg: VSCConfig, mask: Tensor | None = None) -> VSCOutput:
    """Compress z [B, L, D] to [B, K, D] guided by guide [B, D] (None -> guide = token mean only).

    mask [B, L] bool marks real tokens (default all). K = min(k, L) for top-k.
    """
    B, L, D = z.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=z.device)
    cos, r = relevance(z, guide, mask, cfg)
    idx, valid = _select(cos, r, mask, cfg)
    K = idx.shape[1]
    kept = z.gather(1, idx.unsqueeze(-1).expand(B, K, D))
    if cfg.merge and K < L:
        kept = _merge(z, mask, idx, valid, kept, cfg)
    if cfg.scale_by_relevance:
        kept = kept * (r.gather(1, idx) * mask.sum(1, keepdim=True).to(z.dtype)).unsqueeze(-1)
    kept = kept * valid.unsqueeze(-1).to(z.dtype)
    return VSCOutput(tokens=kept, valid=valid, index=idx.masked_fill(~valid, -1), relevance=r)


def _merge(z: Tensor, mask: Tensor, idx: Tensor, valid: Tensor, kept: Tensor, cfg: VSCConfig) -> Tensor:
    """Fold every dropped real token j into argmax_k cos(z_j, kept_k) when that cosine exceeds delta;
    contributions to one kept token are accumulated and averaged (the released code overwrote them)."""
    B, L, D = z.shape
    K = idx.shape[1]
    selected = torch.zeros(B, L, dtype=torch.bool, device=z.device)
    selected.scatter_(1, idx, valid)
    dropped = mask & ~selected                                               # [B, L]
    sim = F.normalize(z, dim=-1) @ F.normalize(kept, dim=-1).transpose(1, 2)  # [B, L, K]
    sim = sim.masked_fill(~valid.unsqueeze(1), float("-inf"))
    best, tgt = sim.max(-1)                                                  # [B, L]
    ok = dropped & (best > cfg.delta)
    okf = ok.unsqueeze(-1).to(z.dtype)
    add = torch.zeros_like(kept).scatter_add(1, tgt.unsqueeze(-1).expand(B, L, D), z * okf)
    cnt = torch.zeros(B, K, device=z.device, dtype=z.dtype).scatter_add(1, tgt, ok.to(z.dtype))
    mixed = cfg.alpha * kept + (1.0 - cfg.alpha) * add / cnt.clamp(min=1.0).unsqueeze(-1)
    return torch.where((cnt > 0).unsqueeze(-1), mixed, kept)
