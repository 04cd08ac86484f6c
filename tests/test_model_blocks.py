"""Shared model blocks: contrastive losses, graph builders, GNN stacks, heads, layers, the modality GAN,
and the option variants of TS-GCL / AR-IIGCN (docs/models.md §8.7 items 3-6 and more)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mer_pipe.common.errors import ConfigError
from mer_pipe.models.adversarial import AdversarialModalityGAN, grad_reverse
from mer_pipe.models.batch import TaskInfo
from mer_pipe.models.contrastive import deepmsi_contrast, node_contrast, sup_contrastive, supcon, triplet_hinge
from mer_pipe.models.gnn import GCNStack, RelationalGraphEncoder
from mer_pipe.models.graphs import angular_edge_weights, multimodal_utterance_graph, speaker_relational_graph
from mer_pipe.models.heads import HierarchicalHead, polarity_targets
from mer_pipe.models.layers import ContextEncoder, SpeakerEmbedding, flatten_valid, unflatten_valid
from mer_pipe.models.registry import build_model

from test_models_contract import TASK, make_batch  # tests/ is on sys.path (rootdir-relative import mode)

torch.set_num_threads(1)


# ---------------------------------------------------------------- contrastive
def _reference_supcon(z, y, tau):
    """Loop form of Khosla et al. SupCon (all-keys denominator, mean over positives, skip lone anchors)."""
    z = F.normalize(z, dim=-1)
    losses = []
    for a in range(len(z)):
        others = [k for k in range(len(z)) if k != a]
        pos = [p for p in others if y[p] == y[a]]
        if not pos:
            continue
        den = torch.logsumexp(torch.stack([z[a] @ z[k] / tau for k in others]), 0)
        losses.append(-torch.stack([z[a] @ z[p] / tau - den for p in pos]).mean())
    return torch.stack(losses).mean()


def _reference_deepmsi(zv, zk, y, tau):
    """Code-exact DeepMSI loss written the way the released loss.py computes it."""
    zv, zk = F.normalize(zv, dim=-1), F.normalize(zk, dim=-1)
    s = zv @ zk.T / tau
    b = len(y)
    pos = (y[:, None] == y[None, :]).float() - torch.eye(b)
    neg = (y[:, None] != y[None, :]).float()
    negsum = (s.exp() * neg).sum(1, keepdim=True)
    ratio = s.exp() / (s.exp() + negsum)
    return (-(pos * ratio.log()).sum(1) / (b - 1)).mean()


def test_supcon_matches_reference_loop():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(12, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 3, 3, 1, 4, 0])
    torch.testing.assert_close(supcon(z, y, tau=0.2), _reference_supcon(z, y, 0.2))


def test_deepmsi_compat_matches_code_formula():
    g = torch.Generator().manual_seed(1)
    zv, zk, y = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g), torch.tensor([0, 1, 0, 2, 1, 1, 0, 3, 2, 0])
    torch.testing.assert_close(deepmsi_contrast(zv, zk, y, tau=0.5), _reference_deepmsi(zv, zk, y, 0.5))


def test_deepmsi_compat_edge_cases():
    """§8.7 item 3: all-same-label -> 0 (no negatives); no repeated label -> zero without gradient."""
    zv = torch.randn(6, 4, requires_grad=True)
    zk = torch.randn(6, 4, requires_grad=True)
    same = deepmsi_contrast(zv, zk, torch.zeros(6, dtype=torch.long))
    assert same.item() == 0.0
    distinct = deepmsi_contrast(zv, zk, torch.arange(6))
    assert distinct.item() == 0.0 and not distinct.requires_grad


def test_margin_lowers_positive_logit_and_raises_loss():
    g = torch.Generator().manual_seed(2)
    z, y, grp = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g), torch.arange(16) % 2
    plain = node_contrast(z, y, grp, kind="iccl", tau=0.1, margin=0.0, denominator="pos_plus_neg")
    marg = node_contrast(z, y, grp, kind="iccl", tau=0.1, margin=0.2, denominator="pos_plus_neg")
    assert marg > plain
    assert torch.isclose(node_contrast(z, y, grp, kind="iccl", tau=0.1, margin=0.2, method="infonce_no_margin",
                                       denominator="pos_plus_neg"), plain)


def test_intra_and_inter_pick_the_right_pairs():
    # two modalities of the same two utterances; utterance labels differ
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y, grp = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    # intra: no same-modality positive exists -> zero that still keeps the graph
    intra = node_contrast(z.requires_grad_(), y, grp, kind="tsgcl_intra", tau=0.1)
    assert intra.item() == 0.0 and intra.requires_grad
    # inter: positive is the same utterance in the other modality (identical vector) -> near 0
    assert node_contrast(z, y, grp, kind="imcl", tau=0.1).item() < 1e-3


def test_contrastive_rejects_unknown_rule():
    with pytest.raises(ConfigError, match="pos_rule"):
        sup_contrastive(torch.randn(3, 2), torch.zeros(3), None, torch.randn(3, 2), torch.zeros(3), None,
                        tau=0.1, pos_rule="same")


def test_triplet_hinge_is_zero_when_separated_by_margin():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    eye = torch.eye(4, dtype=torch.bool)
    assert triplet_hinge(z, y, None, z, y, None, margin=0.5, pos_rule="same_label", neg_rule="diff_label",
                         same_index=eye).item() == 0.0
    assert triplet_hinge(z, y, None, z, y, None, margin=1.5, pos_rule="same_label", neg_rule="diff_label",
                         same_index=eye).item() == pytest.approx(0.5)


# ---------------------------------------------------------------- graphs
def test_multimodal_graph_counts_for_three_utterances():
    """§8.7 item 4: 9 nodes, 3*(3*2) intra + 3*(3*2) inter directed edges (full)."""
    g = multimodal_utterance_graph(torch.ones(1, 3, dtype=torch.bool), 3)
    assert g.num_nodes == 9
    assert int((g.edge_type == 0).sum()) == 18 and int((g.edge_type == 1).sum()) == 18
    assert len({tuple(e) for e in g.edge_index.T.tolist()}) == 36  # no duplicates
    win = multimodal_utterance_graph(torch.ones(1, 3, dtype=torch.bool), 3, window=1)
    assert int((win.edge_type == 0).sum()) == 3 * 4


def test_no_edge_crosses_dialogues():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    dialogue = torch.arange(3)[:, None].expand(3, 4)[mask]  # dialogue of each flat node
    mm = multimodal_utterance_graph(mask, 2)
    utt = mm.edge_index % int(mask.sum())
    assert (dialogue[utt[0]] == dialogue[utt[1]]).all()
    sr = speaker_relational_graph(mask, torch.zeros(3, 4, dtype=torch.long), 1, 1, 2)
    assert (dialogue[sr.edge_index[0]] == dialogue[sr.edge_index[1]]).all()
    assert sr.edge_index.shape[1] == 2 * (2 + 1 + 3)  # chains of 3, 2, 4 nodes with window 1


def test_node_keep_drops_edges_of_missing_media():
    keep = torch.tensor([True, True, True, True, False, True])
    g = multimodal_utterance_graph(torch.ones(1, 3, dtype=torch.bool), 2, node_keep=keep)
    assert not (g.edge_index == 4).any()


@pytest.mark.parametrize("scheme,n_spk", [("full", 3), ("collapsed", 3), ("full", 2)])
def test_relation_ids_symmetric_and_bounded(scheme, n_spk):
    """§8.7 item 5: reverse edges carry swapped speakers + flipped direction; ids < 2S^2 (or < 4)."""
    g_ = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    spk = torch.randint(0, n_spk, (2, 6), generator=g_)
    g = speaker_relational_graph(mask, spk, past=2, future=3, n_speakers=n_spk, relations=scheme)
    assert g.num_relations == (2 * n_spk ** 2 if scheme == "full" else 4)
    assert int(g.edge_type.max()) < g.num_relations and int(g.edge_type.min()) >= 0
    flat = spk[mask]
    rel = {tuple(e): int(t) for e, t in zip(g.edge_index.T.tolist(), g.edge_type)}
    for (j, i), r in rel.items():
        if (i, j) not in rel:  # window is asymmetric (past 2, future 3): reverse may be outside it
            continue
        r_back = rel[(i, j)]
        assert r % 2 != r_back % 2  # direction flips
        if scheme == "full":
            assert (r // 2) == flat[i] * n_spk + flat[j] and (r_back // 2) == flat[j] * n_spk + flat[i]
        else:
            assert r // 2 == r_back // 2 == int(flat[i] != flat[j])


def test_full_relations_reject_too_many_speakers():
    with pytest.raises(ConfigError, match="max_speakers"):
        speaker_relational_graph(torch.ones(1, 3, dtype=torch.bool), torch.tensor([[0, 1, 5]]), n_speakers=2,
                                 relations="full")


def test_angular_weights_range():
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    w = angular_edge_weights(h, torch.tensor([[0, 0, 0], [1, 2, 3]]))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 0.5]), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- GNN, heads, layers, GAN
@pytest.mark.parametrize("kind", ["gcnii", "gcn"])
def test_gcn_stack_isolated_dialogues_do_not_interact(kind):
    stack = GCNStack(8, layers=3, kind=kind).eval()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    x = torch.randn(5, 8)
    g = multimodal_utterance_graph(mask, 1)
    out = stack(x, g.edge_index)
    x2 = x.clone()
    x2[3:] += 5.0  # change dialogue 2 only
    torch.testing.assert_close(stack(x2, g.edge_index)[:3], out[:3])


def test_relational_encoder_shapes_and_grad():
    enc = RelationalGraphEncoder(8, num_relations=4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    g = speaker_relational_graph(mask, torch.randint(0, 2, (2, 4)), 2, 2, 2)
    out = enc(torch.randn(8, 8), g.edge_index, g.edge_type)
    out.sum().backward()
    assert out.shape == (8, 8) and all(p.grad is not None for p in enc.parameters())


def test_two_stage_prior_penalty():
    """§8.7 item 6: q one-hot on 'negative' -> emotions mapped only to 'positive' get gamma*log(1e-6)."""
    pm = TaskInfo(7, TASK.class_names, {"t": 1}, class_polarities=TASK.class_polarities).polarity_matrix()
    head = HierarchicalHead(4, 8, pm, prior=True, gamma=2.0)
    raw = torch.zeros(1, 7)
    out = head.combine(raw, torch.tensor([[1.0, 0.0, 0.0]]))
    joy = TASK.class_names.index("joy")
    assert out[0, joy].item() == pytest.approx(2.0 * math.log(1e-6), rel=1e-5)
    assert out[0, TASK.class_names.index("anger")].item() == pytest.approx(2.0 * math.log(1 + 1e-6), abs=1e-5)
    assert out[0, TASK.class_names.index("surprise")].item() == pytest.approx(0.0, abs=1e-5)
    emo, pol = head(torch.randn(5, 4))
    assert emo.shape == (5, 7) and pol.shape == (5, 3)


def test_polarity_targets_derive_from_labels_when_unknown():
    pm = TASK.polarity_matrix()
    label = torch.tensor([[4, 1, 3, -1]])
    pol = torch.tensor([[-1, -1, -1, -1]])
    out = polarity_targets(pol, label, torch.tensor([[True, True, True, False]]), pm)
    assert out.tolist() == [[2, -1, 0, -1]]  # joy -> positive, surprise ambiguous, sadness -> negative


def test_flatten_unflatten_round_trip():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    x = torch.randn(2, 3, 4)
    back = unflatten_valid(flatten_valid(x, mask), mask)
    torch.testing.assert_close(back[mask], x[mask])
    assert (back[~mask] == 0).all()


def test_context_encoder_ignores_padding():
    enc = ContextEncoder(4, 3, "gru", bidirectional=True).eval()
    x = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    a = enc(x, mask)
    x[0, 3:] = 100.0
    torch.testing.assert_close(enc(x, mask), a)
    assert a.shape == (1, 5, 6) and (a[0, 3:] == 0).all()


def test_speaker_embedding_rejects_out_of_range():
    with pytest.raises(ConfigError, match="max_speakers"):
        SpeakerEmbedding(2, 4)(torch.tensor([[0, 3]]), torch.ones(1, 2, dtype=torch.bool))


def test_grad_reverse():
    x = torch.ones(3, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -0.5))


def test_gan_single_modality_is_a_no_op():
    gan = AdversarialModalityGAN(("t",), 8)
    assert not gan.active and not gan.discriminator_parameters()
    mask = torch.ones(1, 3, dtype=torch.bool)
    g = gan.generate({"t": torch.randn(1, 3, 8)}, mask)
    assert gan.main_loss(g, mask, {"t": mask}).item() == 0.0


def test_ar_iigcn_alternate_updates_only_discriminators_in_before_step():
    torch.manual_seed(0)
    model = build_model("ar-iigcn", TASK, ("t", "a"))
    batch = make_batch(TASK)
    disc = {id(p) for p in model.gan.discriminator_parameters()}
    groups = model.param_groups()
    assert disc == {id(p) for p in groups["discriminator"].params} and not groups["discriminator"].main
    assert not disc & {id(p) for p in groups["main"].params}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model.before_step(batch, {n: torch.optim.Adam(g.params, lr=g.lr or 1e-3) for n, g in groups.items()})
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("gan.disc.") for n in changed)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name,config", [
    ("ts-gcl", {"gcl_mode": "both", "gnn": "gcn", "gnn_layers": 2, "graph_window": 2, "head_skip": "none",
                "two_stage": "none", "prior": False, "context": "gru", "context_for": "t", "input_norm": "batch"}),
    ("ts-gcl", {"speaker_emb": False, "edge_weights": "none", "context": "none", "gcl_denominator": "pos_plus_neg"}),
    ("ar-iigcn", {"adv_mode": "sum", "relations": "full", "rgcn_bases": 4, "inter_modal_edges": True,
                  "contrast_method": "triplet_hinge", "head_skip": False}),
    ("ar-iigcn", {"adv_mode": "grl", "grl_anneal_steps": 10, "edge_attention": False, "gen_residual": False,
                  "contrast_method": "infonce_no_margin", "input_norm": "batch"}),
])
def test_option_variants_train(name, config):
    torch.manual_seed(0)
    model = build_model(name, TASK, ("t", "a", "v"), config).train()
    batch = make_batch(TASK, seed=5, drop={"v": 0.3})
    out = model(batch)
    loss = F.cross_entropy(out.logits[batch.mask], batch.label[batch.mask]) + sum(out.losses.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_bad_option_names_choices():
    with pytest.raises(ConfigError, match="adv_mode"):
        build_model("ar-iigcn", TASK, ("t",), {"adv_mode": "minimax"})
    with pytest.raises(ConfigError, match="valid options"):
        build_model("ts-gcl", TASK, ("t",), {"hidden": 3})


@pytest.mark.parametrize("name", ["ts-gcl", "ar-iigcn"])
def test_models_can_fit_a_small_batch(name):
    """Wiring check: a small model drives the training loss on one batch down to (near) zero."""
    torch.manual_seed(0)
    model = build_model(name, TASK, ("t", "a"), {"d": 32, "head_hidden": 32, "dropout": 0.0})
    batch = make_batch(TASK, seed=6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        out = model(batch)
        loss = F.cross_entropy(out.logits[batch.mask], batch.label[batch.mask])
        opt.zero_grad()
        (loss + sum(out.losses.values())).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(batch).logits.argmax(-1)[batch.mask] == batch.label[batch.mask]).float().mean()
    assert acc == 1.0, f"{name}: train accuracy {acc:.2f} after 60 steps"


@pytest.mark.parametrize("bases", [None, 3])
def test_relational_conv_matches_pyg_rgcn(bases):
    """Own RelationalConv == torch_geometric RGCNConv(aggr='mean') with the same weights."""
    from torch_geometric.nn import RGCNConv

    from mer_pipe.models.gnn import RelationalConv

    torch.manual_seed(0)
    ours = RelationalConv(6, 5, num_relations=4, num_bases=bases)
    ref = RGCNConv(6, 5, 4, num_bases=bases, aggr="mean")
    with torch.no_grad():
        if bases:
            ref.weight.copy_(ours.weight), ref.comp.copy_(ours.comp)
        else:
            ref.weight.copy_(ours.weight)
        ref.root.copy_(ours.root.weight.T), ref.bias.copy_(ours.root.bias)
    g = speaker_relational_graph(torch.ones(2, 5, dtype=torch.bool), torch.randint(0, 2, (2, 5)), 2, 3, 2)
    x = torch.randn(10, 6)
    torch.testing.assert_close(ours(x, g.edge_index, g.edge_type), ref(x, g.edge_index, g.edge_type))
