"""One masked supervised-contrastive routine for every model (docs/models.md §8.1) plus its named uses.

`sup_contrastive` covers SupCon, the margin form of AR-IIGCN and the DeepMSI code-exact variant through
four switches: which pairs are positives (`pos_rule`), which are negatives (`neg_rule`), how an anchor's
sum over positives is normalised (`normalise`) and what the softmax denominator holds (`denominator`).
Callers pass only valid rows (real, labelled, modality present); the routine never sees padding.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mer_pipe.common.errors import ConfigError

PosRule = Literal["same_label", "same_label_same_group", "same_label_other_group"]
NegRule = Literal["diff_label", "diff_label_same_group", "diff_label_other_group", "all_other_group"]
POS_RULES = ("same_label", "same_label_same_group", "same_label_other_group")
NEG_RULES = ("diff_label", "diff_label_same_group", "diff_label_other_group", "all_other_group")
NORMALISE = ("num_pos", "B_minus_1")
DENOMINATOR = ("pos_plus_neg", "all_keys")
_NEG_BIG = -1e9  # finite "minus infinity": logsumexp over an empty set stays differentiable (no NaN)


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"contrastive option {name}={value!r} is not valid; choose one of {list(choices)}")


def _pair_masks(pos_rule: str, neg_rule: str, same_y: Tensor, same_g: Tensor) -> tuple[Tensor, Tensor]:
    pos = {"same_label": same_y, "same_label_same_group": same_y & same_g,
           "same_label_other_group": same_y & ~same_g}[pos_rule]
    neg = {"diff_label": ~same_y, "diff_label_same_group": ~same_y & same_g,
           "diff_label_other_group": ~same_y & ~same_g, "all_other_group": ~same_g}[neg_rule]
    return pos, neg


def sup_contrastive(
    anchors: Tensor, anchor_y: Tensor, anchor_group: Tensor | None,
    keys: Tensor, key_y: Tensor, key_group: Tensor | None, *,
    tau: float, pos_rule: str = "same_label", neg_rule: str = "diff_label", margin: float = 0.0,
    same_index: Tensor | None = None, normalise: str = "num_pos", denominator: str = "pos_plus_neg",
) -> Tensor:
    """Masked supervised contrastive loss, a scalar.

    anchors [Na, D], keys [Nk, D] (L2-normalised here), *_y [Na]/[Nk] labels, *_group group ids
    (modality id for graph models; None = one group). same_index [Na, Nk] bool marks pairs that are the
    same node (never positive, negative or in the denominator). For positive p of anchor a:
      pos_plus_neg: -log e^{(s_ap-m)/tau} / (e^{(s_ap-m)/tau} + sum_{n in NEG(a)} e^{s_an/tau})
      all_keys:     -log e^{(s_ap-m)/tau} / sum_{k != a} e^{s_ak'/tau}   (k' margin-shifted if positive)
    normalise="num_pos": mean over an anchor's positives, then over anchors with >= 1 positive; an empty
    set gives a zero that still reaches every input (so optimisers see zero, not missing, gradients).
    normalise="B_minus_1" (DeepMSI code): divide by Nk-1 and average over *all* anchors; no positive pair
    in the whole batch gives a constant zero without gradient (the code returns a constant 1e-8).
    """
    _check("pos_rule", pos_rule, POS_RULES)
    _check("neg_rule", neg_rule, NEG_RULES)
    _check("normalise", normalise, NORMALISE)
    _check("denominator", denominator, DENOMINATOR)
    na, nk = anchors.shape[0], keys.shape[0]
    if na == 0 or nk == 0:
        return anchors.sum() * 0.0 + keys.sum() * 0.0
    a = F.normalize(anchors.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    sim = a @ k.T  # [Na, Nk] cosine
    same_y = anchor_y[:, None] == key_y[None, :]
    if anchor_group is None or key_group is None:
        same_g = torch.ones_like(same_y)
    else:
        same_g = anchor_group[:, None] == key_group[None, :]
    pos, neg = _pair_masks(pos_rule, neg_rule, same_y, same_g)
    not_self = torch.ones_like(same_y) if same_index is None else ~same_index
    pos, neg = pos & not_self, neg & not_self
    l_pos = (sim - margin) / tau
    l_neg = sim / tau
    if denominator == "pos_plus_neg":
        neg_lse = torch.where(neg, l_neg, torch.full_like(l_neg, _NEG_BIG)).logsumexp(1, keepdim=True)
        log_ratio = l_pos - torch.logaddexp(l_pos, neg_lse)
    else:
        logits = torch.where(pos, l_pos, l_neg)
        all_lse = torch.where(not_self, logits, torch.full_like(logits, _NEG_BIG)).logsumexp(1, keepdim=True)
        log_ratio = l_pos - all_lse
    per_anchor = -(log_ratio * pos).sum(1)  # [Na]
    n_pos = pos.sum(1)
    if normalise == "B_minus_1":
        if not bool(pos.any()):
            return anchors.new_zeros(())  # DeepMSI compat: constant, carries no gradient
        return (per_anchor / max(nk - 1, 1)).mean()
    valid = n_pos > 0
    if not bool(valid.any()):
        return sim.sum() * 0.0
    return (per_anchor[valid] / n_pos[valid]).mean()


def triplet_hinge(
    anchors: Tensor, anchor_y: Tensor, anchor_group: Tensor | None,
    keys: Tensor, key_y: Tensor, key_group: Tensor | None, *,
    margin: float, pos_rule: str, neg_rule: str, same_index: Tensor | None = None, chunk: int = 64,
) -> Tensor:
    """Mean over (anchor, positive, negative) triples of max(0, margin - s_ap + s_an) (AR-IIGCN
    `contrast_method=triplet_hinge`). Anchors are processed in chunks to bound the [c, Nk, Nk] memory."""
    _check("pos_rule", pos_rule, POS_RULES)
    _check("neg_rule", neg_rule, NEG_RULES)
    sim = F.normalize(anchors.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T
    same_y = anchor_y[:, None] == key_y[None, :]
    same_g = (torch.ones_like(same_y) if anchor_group is None or key_group is None
              else anchor_group[:, None] == key_group[None, :])
    pos, neg = _pair_masks(pos_rule, neg_rule, same_y, same_g)
    if same_index is not None:
        pos, neg = pos & ~same_index, neg & ~same_index
    total, count = sim.sum() * 0.0, 0
    for s in range(0, sim.shape[0], chunk):
        sp, p, n = sim[s:s + chunk], pos[s:s + chunk], neg[s:s + chunk]
        hinge = (margin - sp[:, :, None] + sp[:, None, :]).clamp(min=0)  # [c, P, N]
        m = p[:, :, None] & n[:, None, :]
        total = total + (hinge * m).sum()
        count += int(m.sum())
    return total / max(count, 1)


def _eye_like(n: int, device: torch.device) -> Tensor:
    return torch.eye(n, dtype=torch.bool, device=device)


def node_contrast(z: Tensor, y: Tensor, group: Tensor, *, kind: str, tau: float, margin: float = 0.0,
                  denominator: str = "all_keys", method: str = "supcon") -> Tensor:
    """Contrast over the flattened graph nodes of a batch: z [V, D], y [V], group [V] (modality id).

    kind selects the named instantiation (docs/models.md §8.1):
      tsgcl_intra  positives same label & same modality, negatives different label (any modality)
      tsgcl_inter  positives same label & other modality, negatives different label (any modality)
      iccl         AR-IIGCN intra-modal: same label & same modality vs different label & same modality
      imcl         AR-IIGCN inter-modal: same label & other modality vs different label & other modality
    method "supcon" (margin form), "triplet_hinge" or "infonce_no_margin" (margin forced to 0).
    """
    rules = {"tsgcl_intra": ("same_label_same_group", "diff_label"),
             "tsgcl_inter": ("same_label_other_group", "diff_label"),
             "iccl": ("same_label_same_group", "diff_label_same_group"),
             "imcl": ("same_label_other_group", "diff_label_other_group")}
    if kind not in rules:
        raise ConfigError(f"node_contrast kind={kind!r}; choose one of {sorted(rules)}")
    pos_rule, neg_rule = rules[kind]
    self_mask = _eye_like(z.shape[0], z.device)
    if method == "triplet_hinge":
        return triplet_hinge(z, y, group, z, y, group, margin=margin, pos_rule=pos_rule,
                             neg_rule=neg_rule, same_index=self_mask)
    if method not in ("supcon", "infonce_no_margin"):
        raise ConfigError(f"contrast method {method!r}; choose one of ['supcon', 'triplet_hinge', 'infonce_no_margin']")
    return sup_contrastive(z, y, group, z, y, group, tau=tau, pos_rule=pos_rule, neg_rule=neg_rule,
                           margin=0.0 if method == "infonce_no_margin" else margin, same_index=self_mask,
                           normalise="num_pos", denominator=denominator)


def supcon(z: Tensor, y: Tensor, *, tau: float = 0.1, denominator: str = "all_keys") -> Tensor:
    """Plain SupCon (Khosla et al.) over one set of vectors z [N, D] with labels y [N] (JV-ICL ICL)."""
    return sup_contrastive(z, y, None, z, y, None, tau=tau, pos_rule="same_label", neg_rule="diff_label",
                           same_index=_eye_like(z.shape[0], z.device), normalise="num_pos",
                           denominator=denominator)


def deepmsi_contrast(anchor: Tensor, keys: Tensor, y: Tensor, *, tau: float = 0.5, compat: bool = True) -> Tensor:
    """DeepMSI video-anchored cross-modal loss: anchor [B, D] (video), keys [B, D] (text or audio) of
    the same B utterances. compat=True is code-exact (diagonal excluded, pos+neg denominator, (B-1)
    normaliser, constant zero without positives); compat=False is the clean per-positive SupCon."""
    same = _eye_like(anchor.shape[0], anchor.device)
    return sup_contrastive(anchor, y, None, keys, y, None, tau=tau, pos_rule="same_label", neg_rule="diff_label",
                           same_index=same, normalise="B_minus_1" if compat else "num_pos",
                           denominator="pos_plus_neg" if compat else "all_keys")
