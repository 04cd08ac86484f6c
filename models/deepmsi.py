"""DeepMSI-MER (arXiv 2502.08573, code github.com/ZMW-DW/DeepMSI-MER; docs/models.md §5) on cached
features, cache "Mode A" (§5.6): per-frame video vectors are compressed by a frame-level VSC guided by the
text+audio semantic vector, a TCN reads the kept frames in temporal order, CLIP-style projection heads map
every modality to 256-d, and an MLP classifies their concatenation. A video-anchored label-aware
cross-modal contrastive loss aligns the projections.

Utterance-level: every valid utterance of the batch is treated on its own (no context, no speakers).
Modality subsets: the guide uses whichever of text/audio is chosen (none -> the frame mean alone); video
uses `batch.frames['v']` when the task has frames, else the pooled `batch.feats['v']` straight into its
projection head (no VSC/TCN); with a single modality (e.g. text only) there is nothing to contrast and
the contrastive term is off, so the model is a projection head + MLP classifier.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mer_pipe.common.errors import ConfigError

from .batch import DialogueBatch, ModelOutput, TaskInfo
from .contrastive import deepmsi_contrast
from .layers import MLPHead, ProjectionHead, flatten_valid, unflatten_valid, zero_absent
from .base import ERCModel, PaperValue
from .registry import MODELS, ModelConfig
from .tcn import TCN, TCNConfig
from .vsc import VSCConfig, vsc


@dataclass(frozen=True)
class DeepMSIConfig(ModelConfig):
    """Defaults follow the released code's IEMOCAP config [C] except where marked (proposed / clean); the
    code's own values where they differ are DeepMSI.paper_profile (`--profile paper`; docs/models.md).

    guide: proc_hidden, proc_dropout: Proc = Linear-BN-LeakyReLU-Dropout-Linear([t;a] -> guide_dim=384) [C].
    video_input: "auto" (frames when the task has them, else pooled) | "frames" | "pooled".
    vsc (nested, `--set model.vsc.k=8`): frame-level VSC (models/vsc.py): k frames kept of F (proposed 10 of
      15), select topk (code) | threshold (paper), keep_order and a correct merge (clean; merge=false and
      keep_order=false for the released code's behaviour). scale_by_relevance (proposed, default here):
      kept frames are scaled by L * relevance so the guide network learns; false = code, where top-k
      selection carries no gradient and the guide network is never trained (it is then frozen here).
    tcn (nested): channels / kernel / dropout of the TCN over the kept frames [C]; output = last kept frame.
    proj_dim, proj_dropout: CLIP-style projection per modality [C]. cls_hidden, cls_dropout, cls_norm:
      classifier MLP with LeakyReLU(0.01) [C]; cls_norm "batch" is the code, "layer" (default, clean)
      also works on a batch of one utterance. input_dropout on the cached vectors (proposed; 0 = code).
    contrast: "video_anchored" (code: video vs text and video vs audio; without video the first of
      text/audio anchors the other) | "all_pairs" (every ordered pair of modalities) | "off".
    contrast_compat: true = code-exact loss ((B-1) normaliser, pos+neg denominator); false = clean SupCon.
    alpha_con, beta_ce: L = alpha_con * L_con + beta_ce * CE [C]; the trainer adds CE once, so the model
      returns alpha_con * L_con and, when beta_ce != 1, (beta_ce - 1) * CE (unweighted).
    absent: zero (default) = an absent modality's projection z^m is zero, so the classifier sees zeros in
      its slot (an absent text/audio still enters the video guide as zeros); encode = the earlier behaviour:
      the zeroed input goes through the projection head (and, for video, frame projection, VSC and TCN), so
      every utterance without it gets the same non-zero vector.
    Classifier and guide BatchNorm train on a batch of one row with their running statistics
    (layers.RowSafeBatchNorm1d), e.g. a k-fold remainder of one utterance.
    """

    guide_dim: int = 384
    proc_hidden: tuple[int, ...] = (512,)
    proc_dropout: float = 0.3
    video_input: Literal["auto", "frames", "pooled"] = "auto"
    vsc: VSCConfig = field(default_factory=lambda: VSCConfig(scale_by_relevance=True))
    tcn: TCNConfig = field(default_factory=lambda: TCNConfig(weight_norm=True))
    proj_dim: int = 256
    proj_dropout: float = 0.2
    cls_hidden: tuple[int, ...] = (512, 256, 128)
    cls_dropout: float = 0.3
    cls_norm: Literal["layer", "batch", "none"] = "layer"
    input_dropout: float = 0.1
    contrast: Literal["video_anchored", "all_pairs", "off"] = "video_anchored"
    contrast_compat: bool = False
    con_tau: float = 0.5
    alpha_con: float = 0.5
    beta_ce: float = 1.0
    absent: Literal["zero", "encode"] = "zero"
    saved_defaults = {"absent": "encode"}  # checkpoints written before the option existed

    positive = ("guide_dim", "proc_hidden", "proj_dim", "cls_hidden")


@MODELS.register("deepmsi-mer")
class DeepMSI(ERCModel):
    name = "deepmsi-mer"
    config_cls = DeepMSIConfig
    # chosen on dev with MiniLM text features of MELD (bench/bench_meld_text.py; evidence in its JSON)
    train_defaults = {"optimizer": "adam", "lr": 3e-4, "weight_decay": 1e-5, "batch_size": 16, "epochs": 25, "patience": 6,
                      "unit": "utterance"}
    paper_profile = (
        PaperValue("model.input_dropout", 0.0, "official code", "§5.2: no dropout on the input vectors"),
        PaperValue("model.vsc.scale_by_relevance", False, "official code",
                   "§5.2 step 3, §8.3: plain top-k, so the guide network gets no gradient"),
        PaperValue("model.cls_norm", "batch", "official code", "§5.2 step 6: Linear-BatchNorm1d-LeakyReLU-Dropout"),
        PaperValue("model.contrast_compat", True, "official code", "§5.3: (B-1) normaliser, positive + negatives"),
        PaperValue("trainer.lr", 1e-4, "official code", "§5.4: MELD 1e-4 (IEMOCAP 5e-5: --set trainer.lr=5e-5)"),
        PaperValue("trainer.epochs", 30, "official code", "§5.4: at most 30 epochs"),
        PaperValue("trainer.patience", 4, "official code", "§5.4: early stop after 4 epochs without a better W-F1"),
    )

    def __init__(self, task: TaskInfo, modalities: tuple[str, ...], config: DeepMSIConfig = DeepMSIConfig()) -> None:
        super().__init__()
        self.modalities, self.config, cfg = tuple(modalities), config, config
        self.input_drop = nn.Dropout(cfg.input_dropout)
        self.guide_mods = tuple(m for m in ("t", "a") if m in self.modalities)
        self.frames = False
        if "v" in self.modalities:
            want = cfg.video_input
            if want == "frames" and "v" not in task.frame_shapes:
                raise ConfigError("deepmsi-mer video_input='frames' but the task has no video frames "
                                  "(TaskInfo.frame_shapes lacks 'v'); cache per-frame video features or use 'pooled'")
            self.frames = want == "frames" or (want == "auto" and "v" in task.frame_shapes)
        if self.frames:
            frame_dim = task.frame_shapes["v"][1]
            if self.guide_mods:
                g_in = sum(task.in_dims[m] for m in self.guide_mods)
                self.proc = MLPHead(g_in, cfg.proc_hidden, cfg.guide_dim, cfg.proc_dropout, "batch", "leaky_relu")
                if not cfg.vsc.scale_by_relevance:
                    self.proc.requires_grad_(False)  # code-exact: no gradient ever reaches it
            self.frame_proj = nn.Linear(frame_dim, cfg.guide_dim)  # VSC runs in the guide's space (§8.2)
            self.tcn = TCN(cfg.guide_dim, cfg.tcn)
        proj_in = {m: task.in_dims[m] for m in self.modalities}
        if self.frames:
            proj_in["v"] = self.tcn.out_dim
        self.proj = nn.ModuleDict({m: ProjectionHead(proj_in[m], cfg.proj_dim, cfg.proj_dropout) for m in self.modalities})
        self.cls = MLPHead(cfg.proj_dim * len(self.modalities), cfg.cls_hidden, task.n_classes, cfg.cls_dropout,
                           cfg.cls_norm, "leaky_relu")

    def _input(self, batch: DialogueBatch, m: str) -> tuple[Tensor, Tensor]:
        """-> (pooled features [M, D] zeroed where absent, presence [M]) for the valid utterances."""
        present = flatten_valid(batch.presence(m), batch.mask)
        x = zero_absent(flatten_valid(batch.feats[m], batch.mask), present)
        return self.input_drop(x), present

    def _video_from_frames(self, batch: DialogueBatch, guide_in: Tensor | None, present: Tensor) -> Tensor:
        """frames [B, N, F, D] -> VSC -> TCN -> [M, tcn_out]."""
        if "v" not in batch.frames:
            raise ConfigError("deepmsi-mer expects per-frame video features in batch.frames['v'] (the task "
                              "declares frame_shapes['v']); load the frame cache or set video_input='pooled'")
        fr = flatten_valid(batch.frames["v"], batch.mask)                     # [M, F, D]
        fr = zero_absent(fr, present)
        z = self.frame_proj(self.input_drop(fr))                               # [M, F, guide_dim]
        guide = self.proc(guide_in) if guide_in is not None else None          # [M, guide_dim]
        out = vsc(z, guide, self.config.vsc)
        return self.tcn.last(out.tokens, out.valid)

    def forward(self, batch: DialogueBatch) -> ModelOutput:
        mask = batch.mask
        xs, present = {}, {}
        for m in self.modalities:
            xs[m], present[m] = self._input(batch, m)
        if self.frames:
            guide_in = torch.cat([xs[m] for m in self.guide_mods], -1) if self.guide_mods else None
            xs["v"] = self._video_from_frames(batch, guide_in, present["v"])
        z = {m: self.proj[m](xs[m]) for m in self.modalities}                 # [M, proj_dim] each
        if self.config.absent == "zero":  # not even the projection's bias (x * 1 where present)
            z = {m: zero_absent(z[m], present[m]) for m in self.modalities}
        fused = torch.cat([z[m] for m in self.modalities], -1)
        logits = self.cls(fused)
        losses = self._losses(z, present, logits, flatten_valid(batch.label, mask)) if self.training else {}
        return ModelOutput(logits=unflatten_valid(logits, mask), losses=losses, embeddings=unflatten_valid(fused, mask))

    def contrast_pairs(self) -> list[tuple[str, str]]:
        """(anchor, key) modality pairs of the contrastive term; empty with fewer than two modalities."""
        mods, mode = self.modalities, self.config.contrast
        if mode == "off" or len(mods) < 2:
            return []
        if mode == "all_pairs":
            return [(a, k) for a in mods for k in mods if a != k]
        anchor = "v" if "v" in mods else mods[0]
        return [(anchor, k) for k in mods if k != anchor]

    def _losses(self, z: dict[str, Tensor], present: dict[str, Tensor], logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        cfg, labelled = self.config, y >= 0
        out: dict[str, Tensor] = {}
        if not bool(labelled.any()):
            return out
        pairs = self.contrast_pairs()
        if pairs and cfg.alpha_con > 0:
            terms = []
            for a, k in pairs:
                sel = labelled & present[a] & present[k]  # missing media never anchors nor keys
                terms.append(deepmsi_contrast(z[a][sel], z[k][sel], y[sel], tau=cfg.con_tau,
                                              compat=cfg.contrast_compat))
            out["contrastive"] = cfg.alpha_con * torch.stack(terms).mean()
        if cfg.beta_ce != 1.0:
            out["ce_extra"] = (cfg.beta_ce - 1.0) * F.cross_entropy(logits[labelled], y[labelled])
        return out
