"""JV-ICL (arXiv 2405.17900; docs/models.md §4): joint-vector cross-modal fusion, dialogue context,
dual classifiers and supervised inter-class contrastive learning. The paper body was not retrievable:
everything beyond "trainable joint vectors, dual classifiers, label-driven inter-class CL" is the
proposed reconstruction of §4.3-4.4.

Per utterance: each modality gives tokens (1 pooled vector, or its frames with `frame_tokens`), a shared
set of K learnable joint vectors J is the only channel between modalities (attention bottleneck: modality
m's layer sees [T^m ; J], then J <- mean over present modalities). u = [mean J ; pool T^m ...] runs through
a context layer over the dialogue; head A classifies the context vector, head B the modality-specific pools.
"""
from __future__ import annotations

from typing import Literal
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mer_pipe.common.errors import ConfigError

from .batch import DialogueBatch, ModelOutput, TaskInfo
from .contrastive import sup_contrastive, supcon
from .layers import ContextEncoder, MLPHead, SpeakerEmbedding, flatten_valid, unflatten_valid
from .base import ERCModel, PaperValue
from .registry import MODELS, ModelConfig


@dataclass(frozen=True)
class JVICLConfig(ModelConfig):
    """The defaults are the dev profile, chosen on MELD dev (bench/bench_meld_text.py); the specification's
    values are JVICL.paper_profile (`--profile paper`; table in docs/models.md).

    d: internal width (dev 128; §4.3 proposes 512). joint_vectors K, fusion_layers L_f, heads, ff_mult
    (transformer MLP width = ff_mult * d), fusion_dropout.
    frame_tokens: use per-frame vectors as a modality's tokens where the task has frames (else 1 token).
    context: "bigru" (proposed default) | "transformer" (2-layer encoder over the dialogue) | "none";
    speaker_embedding: add a within-dialogue speaker embedding before the context layer.
    dual_head: "sum" (logits = (o_A + o_B) / 2) | "joint_only" (head A alone).
    objective: what the trainer's classification loss is applied to: "averaged" (dev: the averaged logits)
    | "per_head" (§4.4: CE(o_A) + CE(o_B), no loss on the averaged logits; the model returns both heads as
    `ModelOutput.train_logits`). dual_ce_weight w adds w * (CE(o_A) + CE(o_B)) on top, in either objective.
    icl_weight (lambda), icl_tau, icl_denominator ("all_keys" = SupCon, "pos_plus_neg"), proj_dim of z;
    icl_balance: anchors weighted 1/freq(class) (mean of per-class losses); proto_weight (lambda_p) and
    proto_margin (m_0) for the class-centroid repulsion term (off by default). input_dropout on the cached
    vectors (proposed).
    """

    d: int = 128
    joint_vectors: int = 4
    fusion_layers: int = 2
    heads: int = 8
    ff_mult: int = 2
    fusion_dropout: float = 0.1
    input_dropout: float = 0.2
    frame_tokens: bool = False
    context: Literal["bigru", "transformer", "none"] = "bigru"
    context_layers: int = 1
    speaker_embedding: bool = False
    dual_head: Literal["sum", "joint_only"] = "sum"
    objective: Literal["averaged", "per_head"] = "averaged"
    dual_ce_weight: float = 0.5
    head_hidden: tuple[int, ...] = (256,)
    head_dropout: float = 0.3
    proj_dim: int = 128
    icl_weight: float = 0.1
    icl_tau: float = 0.1
    icl_denominator: Literal["all_keys", "pos_plus_neg"] = "all_keys"
    icl_balance: bool = False
    proto_weight: float = 0.0
    proto_margin: float = 0.0

    positive = ("d", "joint_vectors", "fusion_layers", "ff_mult", "context_layers", "head_hidden", "proj_dim")

    def validate(self) -> None:
        self.require(self.heads >= 1, "heads", "must be >= 1 (attention heads)")
        self.require(self.d % self.heads == 0, "d", f"must be divisible by heads={self.heads}")
        self.require(self.d >= 2 or self.context != "bigru", "d", "must be >= 2 (the BiGRU has d/2 units per direction)")


class JointVectorFusion(nn.Module):
    """L_f layers; in each, modality m's own transformer layer reads [T^m ; J], then J is averaged over
    the modalities present for that utterance (absent ones neither send nor receive)."""

    def __init__(self, modalities: tuple[str, ...], cfg: JVICLConfig) -> None:
        super().__init__()
        self.modalities = modalities
        self.joint = nn.Parameter(torch.randn(cfg.joint_vectors, cfg.d) * 0.02)
        self.layers = nn.ModuleList([
            nn.ModuleDict({m: nn.TransformerEncoderLayer(cfg.d, cfg.heads, cfg.ff_mult * cfg.d, cfg.fusion_dropout,
                                                         batch_first=True, norm_first=True) for m in modalities})
            for _ in range(cfg.fusion_layers)])
        self.norm = nn.LayerNorm(cfg.d)

    def forward(self, tokens: dict[str, Tensor], tok_mask: dict[str, Tensor], present: dict[str, Tensor]
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """tokens m -> [M, n_m, d]; tok_mask m -> [M, n_m] bool; present m -> [M] bool.
        Returns (J [M, K, d], tokens m -> [M, n_m, d])."""
        M, K = next(iter(tokens.values())).shape[0], self.joint.shape[0]
        J = self.joint.unsqueeze(0).expand(M, -1, -1)
        w = torch.stack([present[m] for m in self.modalities], 1).to(J.dtype)      # [M, n_mod]
        denom = w.sum(1).clamp(min=1.0)[:, None, None]
        for layer in self.layers:
            outs, Js = {}, []
            for m in self.modalities:
                n = tokens[m].shape[1]
                hide = torch.cat([~tok_mask[m] | ~present[m][:, None],
                                  torch.zeros(M, K, dtype=torch.bool, device=J.device)], 1)
                y = layer[m](torch.cat([tokens[m], J], 1), src_key_padding_mask=hide)
                outs[m] = y[:, :n]
                Js.append(y[:, n:])
            J_new = sum(w[:, i, None, None] * Js[i] for i in range(len(Js))) / denom
            J = torch.where(w.sum(1)[:, None, None] > 0, J_new, J)
            tokens = outs
        return self.norm(J), {m: self.norm(t) for m, t in tokens.items()}


@MODELS.register("jv-icl")
class JVICL(ERCModel):
    name = "jv-icl"
    config_cls = JVICLConfig
    # chosen on dev with MiniLM text features of MELD (bench/bench_meld_text.py; evidence in its JSON)
    train_defaults = {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 1e-2, "batch_size": 16, "epochs": 30, "patience": 6,
                      "standardize": False}
    paper_profile = (
        PaperValue("model.d", 512, "proposed", "§4.3: internal width d = 512"),
        PaperValue("model.input_dropout", 0.0, "proposed", "§4.3 step 1: T = LN(W X), no input dropout"),
        PaperValue("model.objective", "per_head", "proposed", "§4.4: L_CE = CE(o^A) + CE(o^B), none on the average"),
        PaperValue("model.dual_ce_weight", 0.0, "proposed", "§4.4: no CE term beyond the two heads'"),
        PaperValue("trainer.lr", 1e-4, "proposed", "§4.5: AdamW, lr 1e-4"),
        PaperValue("trainer.batch_size", 8, "proposed", "§4.5: 8 dialogues when the context layer is on"),
        PaperValue("trainer.scheduler", "cosine", "proposed", "§4.5: linear warm-up, then cosine"),
        PaperValue("trainer.warmup_epochs", 2, "proposed", "§4.5: warm-up 5 % of 30 epochs (1.5, rounded up)"),
        PaperValue("trainer.patience", 0, "proposed", "§4.5: 30 epochs, no early stopping"),
    )

    def __init__(self, task: TaskInfo, modalities: tuple[str, ...], config: JVICLConfig = JVICLConfig()) -> None:
        super().__init__()
        self.modalities, self.config, cfg = tuple(modalities), config, config
        self.use_frames = {m: cfg.frame_tokens and m in task.frame_shapes for m in self.modalities}
        in_dim = {m: task.frame_shapes[m][1] if self.use_frames[m] else task.in_dims[m] for m in self.modalities}
        self.input_drop = nn.Dropout(cfg.input_dropout)
        self.adapt = nn.ModuleDict({m: nn.Sequential(nn.Linear(in_dim[m], cfg.d), nn.LayerNorm(cfg.d))
                                    for m in self.modalities})
        self.type_emb = nn.ParameterDict({m: nn.Parameter(torch.zeros(cfg.d)) for m in self.modalities})
        self.fusion = JointVectorFusion(self.modalities, cfg)
        u_dim = cfg.d * (1 + len(self.modalities))
        self.speaker = SpeakerEmbedding(task.max_speakers, u_dim) if cfg.speaker_embedding else None
        if cfg.context == "bigru":
            self.ctx: nn.Module = ContextEncoder(u_dim, cfg.d // 2, kind="gru", bidirectional=True,
                                                 layers=cfg.context_layers, dropout=cfg.head_dropout)
        elif cfg.context == "transformer":
            self.ctx_in = nn.Linear(u_dim, cfg.d)
            self.ctx = nn.TransformerEncoder(nn.TransformerEncoderLayer(
                cfg.d, cfg.heads, cfg.ff_mult * cfg.d, cfg.fusion_dropout, batch_first=True, norm_first=True), 2)
        else:
            self.ctx = nn.Sequential(nn.Linear(u_dim, cfg.d), nn.ReLU())
        self.drop = nn.Dropout(cfg.head_dropout)
        self.head_a = MLPHead(cfg.d, cfg.head_hidden, task.n_classes, cfg.head_dropout, "layer")
        self.head_b = (MLPHead(cfg.d * len(self.modalities), cfg.head_hidden, task.n_classes, cfg.head_dropout, "layer")
                       if cfg.dual_head == "sum" else None)
        self.proj = nn.Linear(cfg.d, cfg.proj_dim)

    def _tokens(self, batch: DialogueBatch, m: str) -> tuple[Tensor, Tensor]:
        """-> tokens [M, n, d], token mask [M, n] for the valid utterances of the batch."""
        if self.use_frames[m]:
            if m not in batch.frames:
                raise ConfigError(f"jv-icl was built with frame_tokens for modality {m!r} but the batch has no "
                                  f"frames for it; load frames or set frame_tokens=false")
            x = flatten_valid(batch.frames[m], batch.mask)                   # [M, F, D]
        else:
            x = flatten_valid(batch.feats[m], batch.mask).unsqueeze(1)        # [M, 1, D]
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.adapt[m](self.input_drop(x)) + self.type_emb[m], mask

    def forward(self, batch: DialogueBatch) -> ModelOutput:
        cfg, mask = self.config, batch.mask
        toks, tmask, present = {}, {}, {}
        for m in self.modalities:
            toks[m], tmask[m] = self._tokens(batch, m)
            present[m] = flatten_valid(batch.presence(m), mask)               # [M]
        J, toks = self.fusion(toks, tmask, present)
        pools = []
        for m in self.modalities:
            tm = (tmask[m] & present[m][:, None]).unsqueeze(-1).to(J.dtype)
            pools.append((toks[m] * tm).sum(1) / tm.sum(1).clamp(min=1.0))  # zero where m is absent
        spec = torch.cat(pools, -1)                                          # [M, d * n_mod]
        u = unflatten_valid(torch.cat([J.mean(1), spec], -1), mask)           # [B, N, d (1 + n_mod)]
        if self.speaker is not None:
            u = u + self.speaker(batch.speaker, mask)
        if cfg.context == "bigru":
            c = self.ctx(u, mask)
        elif cfg.context == "transformer":
            c = self.ctx(self.ctx_in(u), src_key_padding_mask=~mask)
        else:
            c = self.ctx(u)
        c = flatten_valid(c, mask)                                           # [M, d]
        o_a = self.head_a(self.drop(c))
        o_b = self.head_b(self.drop(spec)) if self.head_b is not None else None
        logits = o_a if o_b is None else (o_a + o_b) / 2
        losses = self._losses(c, o_a, o_b, flatten_valid(batch.label, mask)) if self.training else {}
        heads = None
        if self.training and cfg.objective == "per_head":
            heads = tuple(unflatten_valid(o, mask) for o in (o_a, o_b) if o is not None)
        return ModelOutput(logits=unflatten_valid(logits, mask), losses=losses, embeddings=unflatten_valid(c, mask),
                           train_logits=heads)

    def _losses(self, c: Tensor, o_a: Tensor, o_b: Tensor | None, y: Tensor) -> dict[str, Tensor]:
        cfg, keep = self.config, y >= 0
        out: dict[str, Tensor] = {}
        if not bool(keep.any()):
            return out
        y = y[keep]
        if o_b is not None and cfg.dual_ce_weight > 0:
            out["dual_ce"] = cfg.dual_ce_weight * (F.cross_entropy(o_a[keep], y) + F.cross_entropy(o_b[keep], y))
        z = F.normalize(self.proj(c[keep]), dim=-1)
        if cfg.icl_weight > 0:
            out["icl"] = cfg.icl_weight * self._icl(z, y)
        if cfg.proto_weight > 0:
            out["proto"] = cfg.proto_weight * class_centroid_repulsion(z, y, cfg.proto_margin)
        return out

    def _icl(self, z: Tensor, y: Tensor) -> Tensor:
        cfg = self.config
        if not cfg.icl_balance:
            return supcon(z, y, tau=cfg.icl_tau, denominator=cfg.icl_denominator)
        return balanced_supcon(z, y, tau=cfg.icl_tau, denominator=cfg.icl_denominator)


def balanced_supcon(z: Tensor, y: Tensor, *, tau: float, denominator: str) -> Tensor:
    """SupCon with anchors weighted 1/freq(class), normalised to mean 1 = the mean over classes of each
    class's mean anchor loss (classes with < 2 samples have no positive and are skipped)."""
    terms = []
    for c in torch.unique(y):
        sel = y == c
        if int(sel.sum()) < 2:
            continue
        same = torch.zeros(int(sel.sum()), z.shape[0], dtype=torch.bool, device=z.device)
        same[torch.arange(same.shape[0], device=z.device), sel.nonzero().squeeze(1)] = True
        terms.append(sup_contrastive(z[sel], y[sel], None, z, y, None, tau=tau, same_index=same,
                                     normalise="num_pos", denominator=denominator))
    return torch.stack(terms).mean() if terms else z.sum() * 0.0


def class_centroid_repulsion(z: Tensor, y: Tensor, margin: float = 0.0) -> Tensor:
    """(1 / C(C-1)) sum_{c != c'} max(0, mu_c . mu_c' - margin) over the normalised batch class means."""
    classes = torch.unique(y)
    if classes.numel() < 2:
        return z.sum() * 0.0
    mu = F.normalize(torch.stack([z[y == c].mean(0) for c in classes]), dim=-1)
    sim = (mu @ mu.T - margin).clamp(min=0)
    n = classes.numel()
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
