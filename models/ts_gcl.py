"""TS-GCL (arXiv 2401.01495): per-modality projection + BiLSTM context + speaker embedding, a multimodal
utterance graph (K nodes per utterance) encoded by GCNII, supervised graph contrast within / across
modalities, and a two-stage (polarity -> emotion) head. docs/models.md §2; (proposed) parts are ours."""
from __future__ import annotations

from typing import Literal
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import DialogueBatch, ModelOutput, TaskInfo
from .contrastive import node_contrast, sup_contrastive
from .graphs import angular_edge_weights, multimodal_utterance_graph
from .gnn import GCNStack
from .heads import HierarchicalHead, polarity_targets
from .layers import (ContextEncoder, MLPHead, ModalityProjector, SpeakerEmbedding, flatten_valid,
                     project_present, unflatten_valid, zero_absent)
from .base import ERCModel, PaperValue
from .registry import MODELS, ModelConfig

HEAD_SKIPS = ("none", "context", "input", "both")
GCL_MODES = ("supervised", "views", "both")


@dataclass(frozen=True)
class TSGCLConfig(ModelConfig):
    """TS-GCL hyper-parameters. The defaults are the dev profile, chosen on MELD dev (bench/bench_meld_text.py):
    d=128, dropout 0.5, a 1-layer BiLSTM, a +-10 turn graph window and `head_skip="both"`, so the head sees
    the projected utterance next to the context and graph views (the graph can only add to it). The
    specification's values are TSGCL.paper_profile (`--profile paper`; table in docs/models.md).

    d: hidden width; dropout: after projection, inside GNN and heads; input_norm: layer | batch | none.
    context: lstm | gru | none; context_layers; context_for: modalities that get the RNN (e.g. "t").
    speaker_emb: add a learned speaker-in-dialogue embedding. graph_window: 0 = full intra-modal edges,
    W > 0 = |i-j| <= W; edge_weights: angular | none. gnn: gcnii | gcn; gnn_layers; gcnii_alpha/lambda.
    head_skip: none | context | input | both (what is concatenated to the graph output per modality).
    two_stage: concat | none (stage 2 sees polarity probs or not); prior/gamma: log-prior penalty.
    Loss weights (our guess for the paper's omega, kappa, rho): omega = polarity CE, kappa = GCL intra,
    rho = GCL inter; tau: temperature; gcl_denominator: all_keys (SupCon) | pos_plus_neg.
    gcl_mode: supervised | views (GRACE-style two views, feature mask + edge drop) | both;
    view_mask/view_edge_drop/view_weight configure the view term.
    absent: zero (default) = a node whose modality is absent is zero everywhere: no context, no speaker
    embedding, no edges, zeros in the head; encode = the earlier behaviour: zero input, but the node gets
    its modality's BiLSTM context and the speaker embedding, and its (edge-less) GNN output feeds the head."""

    d: int = 128
    dropout: float = 0.5
    input_norm: Literal["layer", "batch", "none"] = "layer"
    context: Literal["lstm", "gru", "none"] = "lstm"
    context_layers: int = 1
    context_for: str = "tav"
    speaker_emb: bool = True
    graph_window: int = 10  # +-10 turns, as the reference GCN; 0 = the whole dialogue
    edge_weights: Literal["angular", "none"] = "angular"
    gnn: Literal["gcnii", "gcn"] = "gcnii"
    gnn_layers: int = 4
    gcnii_alpha: float = 0.1
    gcnii_lambda: float = 0.5
    head_skip: Literal["none", "context", "input", "both"] = "both"
    head_hidden: int = 256
    two_stage: Literal["concat", "none"] = "concat"
    prior: bool = True
    gamma: float = 1.0
    proj_dim: int = 128
    omega: float = 1.0
    kappa: float = 0.1
    rho: float = 0.1
    tau: float = 0.1
    gcl_denominator: Literal["all_keys", "pos_plus_neg"] = "all_keys"
    gcl_mode: Literal["supervised", "views", "both"] = "supervised"
    view_mask: float = 0.2
    view_edge_drop: float = 0.2
    view_weight: float = 0.1
    absent: Literal["zero", "encode"] = "zero"
    saved_defaults = {"absent": "encode"}  # checkpoints written before the option existed

    positive = ("d", "context_layers", "gnn_layers", "head_hidden", "proj_dim")

    def validate(self) -> None:
        self.require(self.d >= 2 or self.context == "none", "d", "must be >= 2 (the BiRNN has d/2 units per direction)")


@MODELS.register("ts-gcl")
class TSGCL(ERCModel):
    name = "ts-gcl"
    config_cls = TSGCLConfig
    # chosen on dev with MiniLM text features of MELD (bench/bench_meld_text.py; evidence in its JSON)
    train_defaults = {"optimizer": "adam", "lr": 5e-4, "weight_decay": 1e-5, "batch_size": 16, "epochs": 30, "patience": 6}
    paper_profile = (
        PaperValue("model.d", 512, "sibling code", "§2.3: d = 512, the group's graph hidden size"),
        PaperValue("model.input_norm", "none", "proposed", "§2.3 step 1: u = Dropout(ReLU(W x + b)), no norm"),
        PaperValue("model.context_layers", 2, "proposed", "§2.3 step 2: a 2-layer BiLSTM, d/2 per direction"),
        PaperValue("model.graph_window", 0, "sibling code",
                   "§2.2: full intra-modal edges, as create_gnn_index in AGF-IB"),
        PaperValue("model.head_skip", "none", "proposed", "§2.3 step 7: the head reads f = [g^t ; g^a ; g^v]"),
        PaperValue("model.head_hidden", 512, "proposed", "§2.3 step 8: MLP = Linear(3d, d)-ReLU-Dropout-Linear"),
        PaperValue("trainer.lr", 1e-4, "sibling code", "§2.6, §8.6: Adam, lr 1e-4"),
        PaperValue("trainer.epochs", 60, "sibling code", "§2.6: 60 epochs"),
        PaperValue("trainer.patience", 0, "sibling code", "§1.4: every epoch is trained, the best one kept"),
    )

    def __init__(self, task: TaskInfo, modalities: tuple[str, ...], config: TSGCLConfig):
        super().__init__()
        c = config
        self.task, self.modalities, self.config = task, tuple(modalities), c
        d = c.d
        self.proj = nn.ModuleDict({m: ModalityProjector(task.in_dims[m], d, c.dropout, c.input_norm) for m in modalities})
        self.ctx = nn.ModuleDict({m: ContextEncoder(d, d // 2, c.context, True, c.context_layers)
                                  for m in modalities if c.context != "none" and m in c.context_for})
        self.ctx_out = nn.ModuleDict({m: nn.Linear(enc.out_dim, d) for m, enc in self.ctx.items() if enc.out_dim != d})
        self.spk = SpeakerEmbedding(task.max_speakers, d) if c.speaker_emb else None
        self.gnn = GCNStack(d, c.gnn_layers, c.gnn, c.gcnii_alpha, c.gcnii_lambda, c.dropout)
        per_mod = d * (1 + (c.head_skip in ("context", "both")) + (c.head_skip in ("input", "both")))
        self.fused_dim = per_mod * len(modalities)
        self.head = HierarchicalHead(self.fused_dim, c.head_hidden, task.polarity_matrix(), c.dropout,
                                     c.prior, c.gamma, c.two_stage)
        self.zproj = MLPHead(d, (d,), c.proj_dim)  # shared across modalities: the inter-modal contrast needs one space

    def _encode(self, batch: DialogueBatch) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """Per modality: projected input u [M, d], context h [M, d], presence [M]; plus the flat mask."""
        mask = batch.mask
        us, hs, pres = [], [], []
        spk = self.spk(batch.speaker, mask) if self.spk is not None else None
        for m in self.modalities:
            p = batch.presence(m)
            u = project_present(self.proj[m], batch.feats[m], p, mask)  # failed media -> zeros
            h = u
            if m in self.ctx:
                h = self.ctx[m](unflatten_valid(u, mask), mask)
                h = flatten_valid(self.ctx_out[m](h) if m in self.ctx_out else h, mask)
            if spk is not None:
                h = h + flatten_valid(spk, mask)
            us.append(u), hs.append(h), pres.append(flatten_valid(p, mask))
        return us, hs, pres, mask

    def forward(self, batch: DialogueBatch) -> ModelOutput:
        c = self.config
        us, hs, pres, mask = self._encode(batch)
        if c.absent == "zero":  # an absent node is zero: no context, no speaker embedding (x * 1 where present)
            hs = [zero_absent(h, p) for h, p in zip(hs, pres)]
        m_count, k = hs[0].shape[0], len(self.modalities)
        h0 = torch.cat(hs, 0)  # [K*M, d] modality-major node layout (graphs.py)
        keep = torch.cat(pres, 0)
        graph = multimodal_utterance_graph(mask, k, c.graph_window or None, keep)
        ew = angular_edge_weights(h0, graph.edge_index) if c.edge_weights == "angular" else None
        g = self.gnn(h0, graph.edge_index, ew)
        if c.absent == "zero":
            g = zero_absent(g, keep)
        gs = list(g.split(m_count, 0))
        parts = []
        for i in range(k):
            parts.append(gs[i])
            if c.head_skip in ("context", "both"):
                parts.append(hs[i])
            if c.head_skip in ("input", "both"):
                parts.append(us[i])
        f = torch.cat(parts, -1)  # [M, fused_dim]
        logits, pol_logits = self.head(f)
        losses: dict[str, Tensor] = {}
        if self.training:
            losses = self._losses(batch, mask, g, keep, pol_logits, h0, graph, ew)
        return ModelOutput(logits=unflatten_valid(logits, mask), losses=losses, embeddings=unflatten_valid(f, mask))

    def _losses(self, batch: DialogueBatch, mask: Tensor, g: Tensor, keep: Tensor, pol_logits: Tensor,
                h0: Tensor, graph, ew: Tensor | None) -> dict[str, Tensor]:
        c, k = self.config, len(self.modalities)
        losses: dict[str, Tensor] = {}
        pol_y = flatten_valid(polarity_targets(batch.polarity, batch.label, mask, self.head.pmat), mask)
        if c.omega > 0:
            sel = pol_y >= 0
            losses["polarity"] = c.omega * (F.cross_entropy(pol_logits[sel], pol_y[sel]) if bool(sel.any())
                                            else pol_logits.sum() * 0.0)
        y = flatten_valid(batch.label, mask).repeat(k)
        group = torch.arange(k, device=g.device).repeat_interleave(g.shape[0] // k)
        valid = keep & (y >= 0)  # labelled nodes whose media decoded
        z = self.zproj(g)
        if c.gcl_mode in ("supervised", "both"):
            if c.kappa > 0:
                losses["gcl_intra"] = c.kappa * node_contrast(z[valid], y[valid], group[valid], kind="tsgcl_intra",
                                                              tau=c.tau, denominator=c.gcl_denominator)
            if c.rho > 0 and k > 1:  # one modality: no inter-modal pair exists
                losses["gcl_inter"] = c.rho * node_contrast(z[valid], y[valid], group[valid], kind="tsgcl_inter",
                                                            tau=c.tau, denominator=c.gcl_denominator)
        if c.gcl_mode in ("views", "both") and c.view_weight > 0:
            losses["gcl_views"] = c.view_weight * self._view_loss(h0, graph, ew, z, keep)
        return losses

    def _view_loss(self, h0: Tensor, graph, ew: Tensor | None, z: Tensor, keep: Tensor) -> Tensor:
        """NT-Xent between the graph output and a corrupted view (feature-column mask + edge drop):
        node i's two views are the only positive pair (labels = node index)."""
        c = self.config
        feat_keep = (torch.rand(h0.shape[1], device=h0.device) >= c.view_mask).to(h0.dtype)
        edge_keep = torch.rand(graph.edge_index.shape[1], device=h0.device) >= c.view_edge_drop
        g2 = self.gnn(h0 * feat_keep, graph.edge_index[:, edge_keep], None if ew is None else ew[edge_keep])
        z2 = self.zproj(g2)
        idx = torch.arange(z.shape[0], device=z.device)[keep]
        return sup_contrastive(z[keep], idx, None, z2[keep], idx, None, tau=c.tau, pos_rule="same_label",
                               neg_rule="diff_label", normalise="num_pos", denominator="all_keys")
