"""AR-IIGCN (arXiv 2312.16778): separate per-modality MLP spaces, a tri-modal GAN whose generators are
dialogue LSTMs, one speaker-relational graph encoder per modality, intra-modal (ICCL) and inter-modal
(IMCL) margin-contrast, and an MLP classifier. docs/models.md §3 and §8.4; (proposed) parts are ours."""
from __future__ import annotations

from typing import Literal
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .adversarial import AdversarialModalityGAN
from .batch import DialogueBatch, ModelOutput, TaskInfo
from .contrastive import node_contrast
from .graphs import Graph, num_relations, speaker_relational_graph
from .gnn import RelationalGraphEncoder
from .layers import MLPHead, ModalityProjector, flatten_valid, project_present, unflatten_valid, zero_absent
from .base import ERCModel, PaperValue, ParamGroup
from .registry import MODELS, ModelConfig

CONTRAST_METHODS = ("supcon", "triplet_hinge", "infonce_no_margin")


@dataclass(frozen=True)
class ARIIGCNConfig(ModelConfig):
    """AR-IIGCN hyper-parameters. The defaults are the dev profile, chosen on MELD dev
    (bench/bench_meld_text.py); the specification's values are ARIIGCN.paper_profile (`--profile paper`).

    d: width of every modality space (dev 256; the sibling code uses 512 IEMOCAP / 1024 MELD); input_norm:
    layer | batch | none (AGF-IB batch-normalises text). gen_residual: g = LSTM generator output + h, so
    the graph and head always see the per-utterance features (strong on MELD, where context is weak).
    adv_mode: alternate (default; the model's before_step updates the discriminators with its own Adam,
    disc_lr/disc_weight_decay) | sum (sibling code: L_G + L_D in one step) | grl (gradient reversal,
    grl_lambda annealed over grl_anneal_steps, 0 = constant). lambda_adv weighs the adversarial term.
    With a single modality the adversarial part is a no-op (no discriminators, no loss, no before_step work).
    window_past/window_future: graph window; relations: collapsed (4 types, default: MELD has up to 9
    speakers -> 162 full types) | full (2*S^2); rgcn_bases: basis decomposition (0 = off);
    edge_attention: softmax edge weights in the second graph layer; inter_modal_edges: one joint graph
    (shared encoder, extra relation for same-utterance edges) instead of one graph per modality.
    contrast_method: supcon (margin beta on positives) | triplet_hinge | infonce_no_margin;
    tau; lambda_iccl / lambda_imcl weigh ICCL / IMCL; proj_dim: contrastive projection (shared).
    head_skip: concatenate generator outputs g next to graph outputs n in the classifier.
    absent: zero (default) = a node whose modality is absent is zero in every layer (no generator context,
    no graph output, zeros in the classifier); encode = the earlier behaviour: zero input, but the node
    gets its generator LSTM's context and its relational layer's root term, and feeds the classifier."""

    d: int = 256
    dropout: float = 0.5
    input_norm: Literal["layer", "batch", "none"] = "layer"
    gen_residual: bool = True
    adv_mode: Literal["alternate", "sum", "grl"] = "alternate"
    lambda_adv: float = 1.0
    disc_lr: float = 1e-4
    disc_weight_decay: float = 0.0
    grl_lambda: float = 1.0
    grl_anneal_steps: int = 0
    window_past: int = 10
    window_future: int = 10
    relations: Literal["collapsed", "full"] = "collapsed"
    rgcn_bases: int = 0
    edge_attention: bool = True
    inter_modal_edges: bool = False
    contrast_method: Literal["supcon", "triplet_hinge", "infonce_no_margin"] = "supcon"
    beta: float = 0.2
    tau: float = 0.1
    lambda_iccl: float = 0.1
    lambda_imcl: float = 0.1
    proj_dim: int = 128
    head_skip: bool = True
    head_hidden: int = 256
    absent: Literal["zero", "encode"] = "zero"
    saved_defaults = {"absent": "encode"}  # checkpoints written before the option existed

    positive = ("d", "proj_dim", "head_hidden")

    def validate(self) -> None:
        self.require(self.d >= 2, "d", "must be >= 2 (the discriminators' BiLSTMs have d/2 units per direction)")


@MODELS.register("ar-iigcn")
class ARIIGCN(ERCModel):
    name = "ar-iigcn"
    config_cls = ARIIGCNConfig
    # chosen on dev with MiniLM text features of MELD (bench/bench_meld_text.py; evidence in its JSON)
    train_defaults = {"optimizer": "adam", "lr": 5e-4, "weight_decay": 3e-5, "batch_size": 16, "epochs": 30, "patience": 6}
    paper_profile = (
        PaperValue("model.d", 512, "sibling code", "§3.3: D_g = 512 (IEMOCAP); MELD uses 1024: --set model.d=1024"),
        PaperValue("model.input_norm", "none", "proposed", "§3.3 step 1: MLP_m = Linear-ReLU-Dropout-Linear"),
        PaperValue("model.gen_residual", False, "proposed", "§3.3 step 2: g = G_m(h), no residual"),
        PaperValue("model.head_skip", False, "proposed", "§3.3 step 6: the classifier reads [n^t ; n^a ; n^v]"),
        PaperValue("model.head_hidden", 512, "proposed", "§3.3 step 6: Linear(3d, d)-ReLU-Dropout-Linear(d, C)"),
        PaperValue("trainer.lr", 1e-4, "sibling code", "§3.5, §8.6: Adam, lr 1e-4"),
        PaperValue("trainer.epochs", 60, "sibling code", "§3.5: 60 epochs"),
        PaperValue("trainer.patience", 0, "sibling code", "§1.4: every epoch is trained, the best one kept"),
    )

    def __init__(self, task: TaskInfo, modalities: tuple[str, ...], config: ARIIGCNConfig):
        super().__init__()
        c = config
        self.task, self.modalities, self.config = task, tuple(modalities), c
        d = c.d
        # h_m = MLP_m(x_m): Linear-norm-ReLU-Dropout then Linear, one space per modality (no sharing)
        self.mlp = nn.ModuleDict({m: nn.Sequential(ModalityProjector(task.in_dims[m], d, c.dropout, c.input_norm),
                                                   nn.Linear(d, d)) for m in modalities})
        self.gan = AdversarialModalityGAN(self.modalities, d, c.adv_mode, c.grl_lambda, c.grl_anneal_steps)
        self.n_rel = num_relations(task.max_speakers, c.relations)
        if c.inter_modal_edges:
            self.graph_enc = nn.ModuleDict({"joint": RelationalGraphEncoder(d, self.n_rel + 1, c.rgcn_bases or None,
                                                                            c.edge_attention, c.dropout)})
        else:
            self.graph_enc = nn.ModuleDict({m: RelationalGraphEncoder(d, self.n_rel, c.rgcn_bases or None,
                                                                      c.edge_attention, c.dropout) for m in modalities})
        self.zproj = MLPHead(d, (d,), c.proj_dim)  # shared so IMCL compares modalities in one space
        in_dim = d * len(modalities) * (2 if c.head_skip else 1)
        self.classifier = MLPHead(in_dim, (c.head_hidden,), task.n_classes, c.dropout)

    # -- trainer hooks (models/base.py) -------------------------------------------------------------
    def param_groups(self) -> dict[str, ParamGroup]:
        """alternate mode: the discriminators are a second group with their own Adam (disc_lr)."""
        if self.config.adv_mode != "alternate" or not self.gan.active:
            return super().param_groups()
        disc = self.gan.discriminator_parameters()
        ids = {id(p) for p in disc}
        return {"main": ParamGroup([p for p in self.parameters() if id(p) not in ids]),
                "discriminator": ParamGroup(disc, optimizer="adam", lr=self.config.disc_lr,
                                            weight_decay=self.config.disc_weight_decay, main=False)}

    def before_step(self, batch: DialogueBatch, optimizers: dict[str, Optimizer]) -> None:
        """alternate mode: one discriminator step on detached generator outputs (no-op otherwise)."""
        opt = optimizers.get("discriminator")
        if opt is None or not self.training:
            return
        with torch.no_grad():
            _, g, _ = self._generate(batch)
        opt.zero_grad(set_to_none=True)
        loss = self.gan.disc_loss(g, batch.mask, {m: batch.presence(m) for m in self.modalities})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # the main backward must not see stale D gradients

    # -- forward -------------------------------------------------------------------------------------
    def _generate(self, batch: DialogueBatch) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """h (MLP spaces) and g (generator outputs), both modality -> [B, N, d]; presence -> [B, N]."""
        mask = batch.mask
        h, pres = {}, {}
        for m in self.modalities:
            p = batch.presence(m)
            h[m] = unflatten_valid(project_present(self.mlp[m], batch.feats[m], p, mask), mask)
            pres[m] = p
        g = self.gan.generate(h, mask)
        if self.config.gen_residual:
            g = {m: g[m] + h[m] for m in self.modalities}
        if self.config.absent == "zero":  # no generator context for an absent node (x * 1 where present)
            g = {m: zero_absent(g[m], pres[m]) for m in self.modalities}
        return h, g, pres

    def _graph(self, batch: DialogueBatch) -> Graph:
        c = self.config
        return speaker_relational_graph(batch.mask, batch.speaker, c.window_past, c.window_future,
                                        self.task.max_speakers, c.relations)

    def _encode_graph(self, gf: list[Tensor], graph: Graph, keep: list[Tensor]) -> list[Tensor]:
        """Per-modality graphs (or one joint graph): node features [M, d] each -> [M, d] each."""
        if not self.config.inter_modal_edges:
            out = []
            for m, x, kp in zip(self.modalities, gf, keep):
                ok = kp[graph.edge_index[0]] & kp[graph.edge_index[1]]  # absent media: no messages
                out.append(self.graph_enc[m](x, graph.edge_index[:, ok], graph.edge_type[ok]))
            return out
        m_count, k = gf[0].shape[0], len(gf)
        utt = torch.arange(m_count, device=gf[0].device)
        src = [graph.edge_index[0] + i * m_count for i in range(k)]
        dst = [graph.edge_index[1] + i * m_count for i in range(k)]
        typ = [graph.edge_type] * k
        for i in range(k):
            for j in range(k):
                if i != j:
                    src.append(utt + j * m_count), dst.append(utt + i * m_count)
                    typ.append(torch.full_like(utt, self.n_rel))
        ei, et, kp = torch.stack([torch.cat(src), torch.cat(dst)]), torch.cat(typ), torch.cat(keep)
        ok = kp[ei[0]] & kp[ei[1]]
        return list(self.graph_enc["joint"](torch.cat(gf, 0), ei[:, ok], et[ok]).split(m_count, 0))

    def forward(self, batch: DialogueBatch) -> ModelOutput:
        c, mask = self.config, batch.mask
        _, g, pres = self._generate(batch)
        gf = [flatten_valid(g[m], mask) for m in self.modalities]
        keep = [flatten_valid(pres[m], mask) for m in self.modalities]
        n = self._encode_graph(gf, self._graph(batch), keep)
        if c.absent == "zero":  # an edge-less absent node would still get the root term W0 g + b
            n = [zero_absent(x, kp) for x, kp in zip(n, keep)]
        parts = [t for i in range(len(n)) for t in ((n[i], gf[i]) if c.head_skip else (n[i],))]
        f = torch.cat(parts, -1)
        logits = self.classifier(f)
        losses: dict[str, Tensor] = {}
        if self.training:
            if self.gan.active and c.lambda_adv > 0:
                losses["adversarial"] = c.lambda_adv * self.gan.main_loss(g, mask, pres)
            losses.update(self._contrast(batch, n, keep))
        return ModelOutput(logits=unflatten_valid(logits, mask), losses=losses, embeddings=unflatten_valid(f, mask))

    def _contrast(self, batch: DialogueBatch, n: list[Tensor], keep: list[Tensor]) -> dict[str, Tensor]:
        c, k = self.config, len(n)
        z = self.zproj(torch.cat(n, 0))
        y = flatten_valid(batch.label, batch.mask).repeat(k)
        group = torch.arange(k, device=z.device).repeat_interleave(n[0].shape[0])
        valid = torch.cat(keep) & (y >= 0)
        out: dict[str, Tensor] = {}
        for name, kind, weight in (("iccl", "iccl", c.lambda_iccl), ("imcl", "imcl", c.lambda_imcl)):
            if weight > 0 and (kind == "iccl" or k > 1):
                out[name] = weight * node_contrast(z[valid], y[valid], group[valid], kind=kind, tau=c.tau,
                                                   margin=c.beta, denominator="pos_plus_neg", method=c.contrast_method)
        return out
