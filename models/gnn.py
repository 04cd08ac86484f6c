"""Graph encoders: a GCNII / GCN stack on torch_geometric GCN2Conv / GCNConv (TS-GCL) and the DialogueGCN-style
relational encoder RGCN (own RelationalConv, see its docstring) + GraphConv (AR-IIGCN).
torch_geometric is imported inside the constructors."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mer_pipe.common.errors import ConfigError

GNN_KINDS = ("gcnii", "gcn")


class GCNStack(nn.Module):
    """kind="gcnii": H' = relu(((1-a) Â H + a H0)((1-b_l) I + b_l W_l)), b_l = log(lam/l + 1) (PyG GCN2Conv);
    kind="gcn": H' = relu(Â H W_l) (GCNConv). Dropout before each layer; returns the last layer plus
    the input when residual=True. x [V, d], edge_index [2, E], edge_weight [E] | None -> [V, d]."""

    def __init__(self, dim: int, layers: int = 4, kind: str = "gcnii", alpha: float = 0.1, lam: float = 0.5,
                 dropout: float = 0.0, residual: bool = False):
        super().__init__()
        from torch_geometric.nn import GCN2Conv, GCNConv

        if kind not in GNN_KINDS:
            raise ConfigError(f"gnn kind={kind!r}; choose one of {list(GNN_KINDS)}")
        if layers < 1:
            raise ConfigError(f"gnn layers={layers}; use at least 1")
        self.kind, self.residual = kind, residual
        if kind == "gcnii":
            self.convs = nn.ModuleList(GCN2Conv(dim, alpha=alpha, theta=lam, layer=l + 1) for l in range(layers))
        else:
            self.convs = nn.ModuleList(GCNConv(dim, dim) for _ in range(layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        h = x
        for conv in self.convs:
            h = self.drop(h)
            h = conv(h, x, edge_index, edge_weight) if self.kind == "gcnii" else conv(h, edge_index, edge_weight)
            h = torch.relu(h)
        return h + x if self.residual else h


class RelationalConv(nn.Module):
    """RGCN layer, mean per relation + root weight: r_i = W_0 x_i + b + sum_rel mean_{j in N_rel(i)} W_rel x_j,
    optional basis decomposition W_rel = sum_b c_rb V_b. Same maths as PyG RGCNConv(aggr="mean"); written
    here because RGCNConv without pyg-lib indexes weight[r] per relation, and each such backward writes a
    full [R, d, d] gradient (22 s per step on CPU at R = 162). Loops only over relations present.
    x [V, d_in], edge_index [2, E], edge_type [E] -> [V, d_out]."""

    def __init__(self, in_dim: int, out_dim: int, num_relations: int, num_bases: int | None = None):
        super().__init__()
        self.num_relations = num_relations
        rows = num_bases if num_bases else num_relations
        self.weight = nn.Parameter(torch.empty(rows, in_dim, out_dim))
        self.comp = nn.Parameter(torch.empty(num_relations, num_bases)) if num_bases else None
        self.root = nn.Linear(in_dim, out_dim)
        nn.init.xavier_uniform_(self.weight.view(rows * in_dim, out_dim))
        if self.comp is not None:
            nn.init.xavier_uniform_(self.comp)

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        w = self.weight if self.comp is None else torch.einsum("rb,bio->rio", self.comp, self.weight)
        out = self.root(x) + w.sum() * 0.0  # keeps every weight in the graph when no edge exists
        if edge_index.shape[1] == 0:
            return out
        if int(edge_type.max()) >= self.num_relations or int(edge_type.min()) < 0:
            raise ValueError(f"edge_type outside 0..{self.num_relations - 1}")
        src, dst = edge_index
        v = x.shape[0]
        key = edge_type * v + dst
        cnt = torch.zeros(self.num_relations * v, device=x.device, dtype=x.dtype).index_add_(
            0, key, torch.ones_like(key, dtype=x.dtype))
        coef = 1.0 / cnt[key]  # mean over the neighbours of i under relation r
        order = edge_type.argsort()
        counts = torch.bincount(edge_type, minlength=self.num_relations).tolist()
        ws = w.unbind(0)  # one backward allocation for all relations, unlike w[r] per relation
        for r, idx in zip(range(self.num_relations), order.split(counts)):
            if idx.numel():
                msg = (x[src[idx]] @ ws[r]) * coef[idx, None]
                out = out.index_add(0, dst[idx], msg)
        return out


class RelationalGraphEncoder(nn.Module):
    """Two-layer DialogueGCN recipe over one modality's speaker-relational graph.

    Layer 1 (RelationalConv = RGCN, mean per relation + root weight): r_i = W_0 g_i + sum_rel mean_{j in N_rel(i)} W_rel g_j.
    Layer 2 (PyG GraphConv): n_i = W_1 r_i + sum_{j in N(i)} a_ij W_2 r_j, with edge attention
    a_ij = softmax_{j in N(i)}(g_i^T W_e g_j) when attention=True (RGCNConv takes no edge weights, so the
    attention of the DialogueGCN recipe is applied in the second layer; documented deviation).
    x [M, d], edge_index [2, E], edge_type [E] -> [M, d]."""

    def __init__(self, dim: int, num_relations: int, num_bases: int | None = None, attention: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        from torch_geometric.nn import GraphConv

        bases = num_bases if num_bases and num_bases < num_relations else None
        self.rgcn = RelationalConv(dim, dim, num_relations, bases)
        self.conv = GraphConv(dim, dim, aggr="add")
        self.att = nn.Linear(dim, dim, bias=False) if attention else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        from torch_geometric.utils import softmax

        weight = None
        if self.att is not None and edge_index.shape[1]:
            src, dst = edge_index
            score = (self.att(x[dst]) * x[src]).sum(-1) / math.sqrt(x.shape[-1])
            weight = softmax(score, dst, num_nodes=x.shape[0])
        elif self.att is not None:
            weight = x.new_zeros(0) + self.att.weight.sum() * 0.0  # keeps the parameter in the graph
        r = torch.relu(self.rgcn(self.drop(x), edge_index, edge_type))
        return torch.relu(self.conv(self.drop(r), edge_index, weight))
