"""VSC, TCN, DeepMSI-MER, JV-ICL and the two baselines: model-specific behaviour (the registry-wide
contract lives in test_models_contract.py)."""
from __future__ import annotations

import pytest
import torch

from mer_pipe.common.errors import ConfigError
from mer_pipe.models.tcn import TCN, TCNConfig
from mer_pipe.models.vsc import VSCConfig, vsc

torch.set_num_threads(1)


# ---------------------------------------------------------------- VSC
def test_vsc_k_equal_L_is_identity_up_to_order():
    torch.manual_seed(0)
    z, c = torch.randn(3, 7, 16), torch.randn(3, 16)
    for keep_order in (True, False):
        out = vsc(z, c, VSCConfig(k=7, keep_order=keep_order, merge=True))
        assert out.tokens.shape == (3, 7, 16) and bool(out.valid.all())
        for b in range(3):
            assert sorted(out.index[b].tolist()) == list(range(7))
            assert torch.allclose(out.tokens[b], z[b, out.index[b]])
        if keep_order:
            assert torch.equal(out.tokens, z)


def test_vsc_merge_off_keep_order_is_sorted_topk():
    torch.manual_seed(1)
    z, c = torch.randn(4, 15, 8), torch.randn(4, 8)
    out = vsc(z, c, VSCConfig(k=5, merge=False, keep_order=True))
    m = z.mean(1) + c
    r = torch.nn.functional.cosine_similarity(m[:, None], z, dim=-1).softmax(1)
    want = r.topk(5, dim=1).indices.sort(dim=1).values
    assert torch.equal(out.index, want)
    assert torch.equal(out.tokens, z.gather(1, want[..., None].expand(4, 5, 8)))
    # code-exact order: by relevance, as torch.topk returns it
    raw = vsc(z, c, VSCConfig(k=5, merge=False, keep_order=False))
    assert torch.equal(raw.index, r.topk(5, dim=1).indices)


def test_vsc_merge_accumulates_and_averages():
    # token 0 is kept (aligned with the guide); tokens 1, 2 are near-copies of it and get merged into it
    z = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [-1.0, 0.0]]])
    guide = torch.tensor([[5.0, 0.0]])
    cfg = VSCConfig(k=2, merge=True, delta=0.6, alpha=0.9, keep_order=True)
    out = vsc(z, guide, cfg)
    assert out.index.tolist() == [[0, 1]]
    # only token 2 is dropped and similar (token 3 is opposite): target = most similar kept token
    sim = torch.nn.functional.cosine_similarity(z[0, 2][None], z[0, :2], dim=-1)
    tgt = int(sim.argmax())
    want = z[0, :2].clone()
    want[tgt] = 0.9 * z[0, tgt] + 0.1 * z[0, 2]
    assert torch.allclose(out.tokens[0], want)
    # two dropped tokens merging into one kept token are averaged, not overwritten
    z2 = torch.tensor([[[1.0, 0.2, 0.0], [0.2, 1.0, 0.0], [1.0, -0.1, 0.3], [1.0, -0.1, -0.3]]])
    out2 = vsc(z2, torch.tensor([[10.0, 10.0, 0.0]]), VSCConfig(k=2, alpha=0.5, delta=0.6))
    assert out2.index.tolist() == [[0, 1]]
    assert torch.allclose(out2.tokens[0, 0], 0.5 * z2[0, 0] + 0.5 * (z2[0, 2] + z2[0, 3]) / 2)
    assert torch.allclose(out2.tokens[0, 1], z2[0, 1])


def test_vsc_threshold_mode_pads_and_keeps_at_least_one():
    torch.manual_seed(2)
    z = torch.randn(3, 6, 4)
    out = vsc(z, torch.zeros(3, 4), VSCConfig(select="threshold", threshold=0.99, merge=False))
    assert bool((out.valid.sum(1) >= 1).all())
    for b in range(3):
        n = int(out.valid[b].sum())
        idx = out.index[b, :n]
        assert idx.tolist() == sorted(idx.tolist()) and bool((out.index[b, n:] == -1).all())
        assert bool((out.tokens[b, n:] == 0).all())


def test_vsc_respects_token_mask_and_bad_config():
    z = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    out = vsc(z, torch.randn(2, 4), VSCConfig(k=4), mask=mask)
    assert out.valid.sum(1).tolist() == [4, 2]
    assert set(out.index[1, :2].tolist()) == {0, 1}
    with pytest.raises(ConfigError, match="topk"):
        VSCConfig(select="best")


# ---------------------------------------------------------------- TCN
def test_tcn_is_causal_and_shapes():
    torch.manual_seed(3)
    net = TCN(6, TCNConfig(channels=(8, 8, 5), kernel=3, dropout=0.0)).eval()
    x = torch.randn(2, 10, 6)
    y = net(x)
    assert y.shape == (2, 10, 5)
    t = 4
    x2 = x.clone()
    x2[:, t + 1:] = torch.randn(2, 10 - t - 1, 6) * 10
    y2 = net(x2)
    assert torch.allclose(y[:, : t + 1], y2[:, : t + 1], atol=1e-6)
    assert not torch.allclose(y[:, t + 1:], y2[:, t + 1:])
    # the receptive field reaches back: changing step 0 changes the last output
    x3 = x.clone()
    x3[:, 0] += 50
    assert (net(x3)[:, -1] - y[:, -1]).abs().max() > 1e-6
    # last(): picks the last real step of right-padded sequences
    valid = torch.tensor([[True] * 10, [True] * 5 + [False] * 5])
    last = net.last(x, valid)
    assert torch.allclose(last[0], y[0, 9]) and torch.allclose(last[1], y[1, 4])


# ---------------------------------------------------------------- models: shared helpers
from mer_pipe.models.batch import DialogueBatch, TaskInfo  # noqa: E402
from mer_pipe.models.contrastive import deepmsi_contrast, supcon  # noqa: E402
from mer_pipe.models.registry import build_model  # noqa: E402

TASK = TaskInfo(n_classes=4, class_names=("a", "b", "c", "d"), in_dims={"t": 12, "a": 8, "v": 6},
                frame_shapes={"v": (7, 6)}, max_speakers=4)
SMALL_DEEPMSI = {"tcn": {"channels": [16, 16]}, "proj_dim": 16, "cls_hidden": [32], "guide_dim": 12,
                 "vsc": {"k": 4, "scale_by_relevance": True}}


def batch_of(lengths=(4, 3, 2), seed: int = 0, present: dict | None = None) -> DialogueBatch:
    g = torch.Generator().manual_seed(seed)
    b, n = len(lengths), max(lengths)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    feats = {m: torch.randn(b, n, d, generator=g) for m, d in TASK.in_dims.items()}
    frames = {"v": torch.randn(b, n, 7, 6, generator=g)}
    label = torch.where(mask, torch.arange(b * n).view(b, n) % 3, torch.full((b, n), -1))  # repeated labels
    return DialogueBatch(feats=feats, frames=frames, mask=mask, speaker=torch.zeros(b, n, dtype=torch.long),
                         label=label, polarity=torch.full((b, n), -1), present=present or {})


def _perturb_other(batch: DialogueBatch) -> DialogueBatch:
    """Same batch with every utterance but dialogue 0 / position 0 changed."""
    keep = torch.zeros_like(batch.mask)
    keep[0, 0] = True
    ch = lambda t: torch.where(keep.view(*keep.shape, *([1] * (t.dim() - 2))), t, t + 3.0)  # noqa: E731
    return DialogueBatch(feats={k: ch(v) for k, v in batch.feats.items()}, frames={k: ch(v) for k, v in batch.frames.items()},
                         mask=batch.mask, speaker=batch.speaker, label=batch.label, polarity=batch.polarity)


@pytest.mark.parametrize("name,uses_context", [("mlp", False), ("deepmsi-mer", False), ("bigru", True), ("jv-icl", True)])
def test_context_use(name, uses_context):
    """Utterance-level models (mlp, DeepMSI) score each utterance alone; bigru / JV-ICL read the dialogue."""
    torch.manual_seed(0)
    model = build_model(name, TASK, ("t", "a", "v"), SMALL_DEEPMSI if name == "deepmsi-mer" else None).eval()
    b = batch_of()
    with torch.no_grad():
        y0, y1 = model(b).logits[0, 0], model(_perturb_other(b)).logits[0, 0]
    assert torch.allclose(y0, y1, atol=1e-5) != uses_context


# ---------------------------------------------------------------- DeepMSI
def test_deepmsi_loss_composition_alpha_con_beta_ce():
    torch.manual_seed(0)
    cfg = dict(SMALL_DEEPMSI, alpha_con=0.3, beta_ce=2.5, contrast_compat=True)
    model = build_model("deepmsi-mer", TASK, ("t", "a", "v"), cfg).train()
    b = batch_of()
    out = model(b)
    y = b.label[b.mask]
    zt, za, zv = out.embeddings[b.mask].split(16, dim=-1)  # embeddings = [z_t ; z_a ; z_v]
    l_con = 0.5 * (deepmsi_contrast(zv, zt, y, tau=0.5) + deepmsi_contrast(zv, za, y, tau=0.5))
    ce = torch.nn.functional.cross_entropy(out.logits[b.mask], y)
    assert set(out.losses) == {"contrastive", "ce_extra"}
    total = ce + sum(out.losses.values())  # what the trainer optimises with plain CE
    assert torch.allclose(total, 0.3 * l_con + 2.5 * ce, atol=1e-5)
    assert float(l_con.detach()) > 0
    # beta_ce = 1 (code default): no extra CE term
    assert "ce_extra" not in build_model("deepmsi-mer", TASK, ("t", "a", "v"), SMALL_DEEPMSI).train()(b).losses


def test_deepmsi_text_only_and_pooled_video_paths():
    torch.manual_seed(0)
    b = batch_of()
    text = build_model("deepmsi-mer", TASK, ("t",), SMALL_DEEPMSI).train()
    assert text(b).losses == {} and not hasattr(text, "tcn") and not hasattr(text, "proc")
    pooled = build_model("deepmsi-mer", TASK, ("t", "v"), dict(SMALL_DEEPMSI, video_input="pooled")).train()
    assert not hasattr(pooled, "tcn") and pooled.contrast_pairs() == [("v", "t")]
    assert "contrastive" in pooled(b).losses
    # without video, text anchors audio; all_pairs contrasts both directions
    assert build_model("deepmsi-mer", TASK, ("t", "a"), SMALL_DEEPMSI).contrast_pairs() == [("t", "a")]
    both = build_model("deepmsi-mer", TASK, ("t", "a"), dict(SMALL_DEEPMSI, contrast="all_pairs"))
    assert both.contrast_pairs() == [("t", "a"), ("a", "t")]


def test_deepmsi_frames_required_and_missing_video_excluded():
    torch.manual_seed(0)
    model = build_model("deepmsi-mer", TASK, ("t", "a", "v"), SMALL_DEEPMSI).train()
    b = batch_of()
    no_frames = DialogueBatch(feats=b.feats, mask=b.mask, speaker=b.speaker, label=b.label, polarity=b.polarity)
    with pytest.raises(ConfigError, match="video_input='pooled'"):
        model(no_frames)
    no_video = batch_of(present={"v": torch.zeros_like(b.mask)})
    out = model(no_video)  # no utterance may anchor: the video-anchored term is an exact zero
    assert float(out.losses["contrastive"].detach()) == 0.0 and torch.isfinite(out.logits[no_video.mask]).all()
    with pytest.raises(ConfigError, match="frame_shapes"):
        build_model("deepmsi-mer", TaskInfo(4, ("a", "b", "c", "d"), {"t": 12, "v": 6}), ("t", "v"),
                    {"video_input": "frames"})


def test_deepmsi_code_exact_variant_freezes_the_untrainable_guide():
    torch.manual_seed(0)
    compat = dict(SMALL_DEEPMSI, contrast_compat=True, vsc={"k": 4, "merge": False, "keep_order": False,
                  "scale_by_relevance": False}, cls_norm="batch")
    model = build_model("deepmsi-mer", TASK, ("t", "a", "v"), compat).train()
    out = model(batch_of())
    loss = out.logits[batch_of().mask].logsumexp(-1).sum() + sum(out.losses.values())
    loss.backward()
    assert all(not p.requires_grad for p in model.proc.parameters())
    assert all(p.grad is not None for p in model.frame_proj.parameters())
    # the clean default trains the guide through the relevance scaling
    clean = build_model("deepmsi-mer", TASK, ("t", "a", "v"), SMALL_DEEPMSI).train()
    clean(batch_of()).logits.sum().backward()
    assert all(p.grad is not None for p in clean.proc.parameters())


# ---------------------------------------------------------------- JV-ICL
def test_joint_vectors_are_the_only_cross_modal_channel():
    from mer_pipe.models.jv_icl import JointVectorFusion, JVICLConfig

    torch.manual_seed(0)
    M, d = 5, 16
    toks = {m: torch.randn(M, 2, d) for m in ("t", "a")}
    tmask = {m: torch.ones(M, 2, dtype=torch.bool) for m in ("t", "a")}
    present = {m: torch.ones(M, dtype=torch.bool) for m in ("t", "a")}
    moved = {"t": toks["t"], "a": torch.randn(M, 2, d)}
    one = JointVectorFusion(("t", "a"), JVICLConfig(d=d, heads=4, fusion_layers=1, fusion_dropout=0.0)).eval()
    J0, T0 = one(toks, tmask, present)
    J1, T1 = one(moved, tmask, present)
    assert torch.allclose(T0["t"], T1["t"], atol=1e-6)       # one layer: text tokens never see audio
    assert not torch.allclose(J0, J1, atol=1e-4)              # ... but the joint vectors do
    absent = {"t": present["t"], "a": torch.zeros(M, dtype=torch.bool)}
    assert torch.allclose(one(toks, tmask, absent)[0], one(moved, tmask, absent)[0], atol=1e-6)  # absent audio is ignored
    two = JointVectorFusion(("t", "a"), JVICLConfig(d=d, heads=4, fusion_layers=2, fusion_dropout=0.0)).eval()
    assert not torch.allclose(two(toks, tmask, present)[1]["t"], two(moved, tmask, present)[1]["t"], atol=1e-4)


def test_jvicl_losses_and_heads():
    torch.manual_seed(0)
    b = batch_of()
    model = build_model("jv-icl", TASK, ("t", "a"), {"d": 32, "heads": 4, "proto_weight": 0.05}).train()
    assert set(model(b).losses) == {"dual_ce", "icl", "proto"}
    single = build_model("jv-icl", TASK, ("t",), {"d": 32, "heads": 4, "dual_head": "joint_only"}).train()
    assert single.head_b is None and set(single(b).losses) == {"icl"}
    unlabelled = DialogueBatch(feats=b.feats, mask=b.mask, speaker=b.speaker, label=torch.full_like(b.label, -1),
                               polarity=b.polarity)
    assert model(unlabelled).losses == {}
    with pytest.raises(ConfigError, match="divisible"):
        build_model("jv-icl", TASK, ("t",), {"d": 30, "heads": 4})


def test_balanced_supcon_and_centroid_repulsion():
    from mer_pipe.models.jv_icl import balanced_supcon, class_centroid_repulsion

    torch.manual_seed(0)
    z = torch.randn(12, 8)
    y_even = torch.arange(12) % 3
    assert torch.allclose(balanced_supcon(z, y_even, tau=0.1, denominator="all_keys"),
                          supcon(z, y_even, tau=0.1), atol=1e-5)        # equal class sizes: same as SupCon
    y_skew = torch.tensor([0] * 8 + [1] * 3 + [2])                       # class 2 has no positive: skipped
    assert not torch.allclose(balanced_supcon(z, y_skew, tau=0.1, denominator="all_keys"), supcon(z, y_skew, tau=0.1))
    eye = torch.eye(3)
    assert float(class_centroid_repulsion(eye, torch.arange(3))) == 0.0  # orthogonal centres: no push
    assert float(class_centroid_repulsion(torch.ones(3, 4), torch.arange(3))) == pytest.approx(1.0)
