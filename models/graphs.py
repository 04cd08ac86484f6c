"""Graph builders over a flattened dialogue batch (docs/models.md §2.2, §3.2). No edge ever crosses
dialogues. Node order: the valid utterances of the batch flattened dialogue-major (`flatten_valid`),
M of them; the multimodal graph stacks K modality blocks, node k*M + i = utterance i in modality k.
Edges follow PyG: edge_index[0] = source j, edge_index[1] = target i (messages flow j -> i)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mer_pipe.common.errors import ConfigError

RELATION_SCHEMES = ("full", "collapsed")


@dataclass
class Graph:
    """edge_index [2, E] long, edge_type [E] long, num_nodes, num_relations (edge types)."""

    edge_index: Tensor
    edge_type: Tensor
    num_nodes: int
    num_relations: int


def _pairs(mask: Tensor, past: int | None, future: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Directed pairs (source j, target i) of valid utterances of the same dialogue, j != i, with
    i - past <= j <= i + future (None = unbounded). Returns flat source, flat target, b, and j - i."""
    b, n = mask.shape
    pos = torch.arange(n, device=mask.device)
    diff = pos[None, :] - pos[:, None]  # [i, j] = j - i
    ok = diff != 0
    if past is not None:
        ok &= diff >= -past
    if future is not None:
        ok &= diff <= future
    adj = mask[:, :, None] & mask[:, None, :] & ok[None]  # [B, i, j]
    bb, ii, jj = adj.nonzero(as_tuple=True)
    flat = (mask.long().flatten().cumsum(0) - 1).view(b, n)  # flat index of each valid utterance
    return flat[bb, jj], flat[bb, ii], bb, jj - ii


def multimodal_utterance_graph(mask: Tensor, n_modalities: int, window: int | None = None,
                               node_keep: Tensor | None = None) -> Graph:
    """TS-GCL graph: K*M nodes. Intra-modal edges (type 0) between utterances of one dialogue in the same
    modality (all pairs, or |i-j| <= window); inter-modal edges (type 1) among the K nodes of the same
    utterance. Self-loops are left to the GNN layer's normalisation. node_keep [K*M] bool drops every
    edge touching a node whose modality is missing. For one 3-utterance dialogue and K=3: 9 nodes,
    18 intra + 18 inter directed edges."""
    m = int(mask.sum())
    src, dst, _, _ = _pairs(mask, window, window)
    intra_s = torch.cat([src + k * m for k in range(n_modalities)])
    intra_d = torch.cat([dst + k * m for k in range(n_modalities)])
    utt = torch.arange(m, device=mask.device)
    inter = [(utt + k1 * m, utt + k2 * m) for k1 in range(n_modalities) for k2 in range(n_modalities) if k1 != k2]
    inter_s = torch.cat([s for s, _ in inter]) if inter else utt[:0]
    inter_d = torch.cat([d for _, d in inter]) if inter else utt[:0]
    ei = torch.stack([torch.cat([intra_s, inter_s]), torch.cat([intra_d, inter_d])])
    et = torch.cat([torch.zeros_like(intra_s), torch.ones_like(inter_s)])
    if node_keep is not None:
        keep = node_keep[ei[0]] & node_keep[ei[1]]
        ei, et = ei[:, keep], et[keep]
    return Graph(ei, et, n_modalities * m, 2)


def num_relations(n_speakers: int, scheme: str) -> int:
    """Edge-type count: 2*S^2 for the full (speaker_i, speaker_j, direction) scheme, 4 collapsed."""
    if scheme not in RELATION_SCHEMES:
        raise ConfigError(f"relations={scheme!r}; choose one of {list(RELATION_SCHEMES)}")
    return 2 * n_speakers * n_speakers if scheme == "full" else 4


def speaker_relational_graph(mask: Tensor, speaker: Tensor, past: int = 10, future: int = 10,
                             n_speakers: int = 9, relations: str = "collapsed") -> Graph:
    """AR-IIGCN / DialogueGCN graph over M utterance nodes of one modality: edge j -> i for
    i - past <= j <= i + future, j != i (the root weight of the layer plays the self-loop).
    Relation seen from target i: direction = 0 if j is before i, 1 if after;
    full: (s_i * S + s_j) * 2 + direction (< 2S^2); collapsed: (s_i != s_j) * 2 + direction (< 4).
    The reverse edge i -> j always gets the swapped speakers and the flipped direction."""
    n_rel = num_relations(n_speakers, relations)
    src, dst, bb, diff = _pairs(mask, past, future)
    flat_spk = speaker[mask]
    s_j, s_i = flat_spk[src], flat_spk[dst]
    direction = (diff > 0).long()
    if relations == "full":
        if flat_spk.numel() and (int(flat_spk.max()) >= n_speakers or int(flat_spk.min()) < 0):
            raise ConfigError(f"speaker index {int(flat_spk.max())} outside 0..{n_speakers - 1} for relations='full'; "
                              f"raise TaskInfo.max_speakers or use relations='collapsed'")
        et = (s_i * n_speakers + s_j) * 2 + direction
    else:
        et = (s_i != s_j).long() * 2 + direction
    return Graph(torch.stack([src, dst]), et, int(mask.sum()), n_rel)


def angular_edge_weights(h: Tensor, edge_index: Tensor) -> Tensor:
    """MMGCN angular similarity 1 - arccos(cos(h_j, h_i)) / pi in [0, 1] for every edge. h [V, d] -> [E]."""
    cos = F.cosine_similarity(h[edge_index[0]], h[edge_index[1]], dim=-1)
    # clamp strictly inside (-1, 1): arccos has an infinite derivative at +-1
    return 1.0 - torch.arccos(cos.clamp(-1 + 1e-6, 1 - 1e-6)) / math.pi
