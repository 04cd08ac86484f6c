"""Contract checks parametrised over the whole model registry (docs/contracts.md "Models"): every model
registered in models/_all.py gets them automatically. Tiny synthetic batches; one torch thread."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import yaml

from mer_pipe.models.batch import MODALITIES, DialogueBatch, ModelOutput, TaskInfo
from mer_pipe.models.registry import MODELS, build_model

torch.set_num_threads(1)
from mer_pipe.models import _all  # noqa: E402,F401  (registers every model)

MELD_POL = ((1,), (0, 2), (0,), (0,), (2,), (0,), (0,))
TASK = TaskInfo(n_classes=7, class_names=("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
                in_dims={"t": 24, "a": 12, "v": 10}, frame_shapes={"v": (15, 10)}, max_speakers=9,
                class_polarities=MELD_POL)
LENGTHS = (5, 3, 4, 1)
NAMES = MODELS.names()
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(MODALITIES, r)]


def make_batch(task: TaskInfo, lengths=LENGTHS, seed: int = 0, drop: dict[str, float] | None = None) -> DialogueBatch:
    """Padded batch of len(lengths) dialogues; labels everywhere real (several per class), MELD polarity."""
    g = torch.Generator().manual_seed(seed)
    b, n = len(lengths), max(lengths)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    feats = {m: torch.randn(b, n, d, generator=g) * mask[..., None] for m, d in task.in_dims.items()}
    frames = {m: torch.randn(b, n, f, d, generator=g) * mask[..., None, None] for m, (f, d) in task.frame_shapes.items()}
    label = torch.where(mask, torch.randint(0, task.n_classes, (b, n), generator=g), torch.full((b, n), -1))
    pol = torch.where(mask, torch.tensor([1, 0, 0, 0, 2, 0, 0])[label.clamp(min=0)], torch.full((b, n), -1))
    speaker = torch.where(mask, torch.randint(0, 3, (b, n), generator=g), torch.zeros(b, n, dtype=torch.long))
    present = {}
    for m, p in (drop or {}).items():
        present[m] = torch.rand(b, n, generator=g) >= p
    return DialogueBatch(feats=feats, frames=frames, mask=mask, speaker=speaker, label=label, polarity=pol, present=present)


def sub_batch(batch: DialogueBatch, i: int) -> DialogueBatch:
    """Dialogue i alone, trimmed to its own length."""
    n = int(batch.mask[i].sum())
    cut = lambda t: t[i:i + 1, :n]  # noqa: E731
    return DialogueBatch(feats={k: cut(v) for k, v in batch.feats.items()}, frames={k: cut(v) for k, v in batch.frames.items()},
                         mask=cut(batch.mask), speaker=cut(batch.speaker), label=cut(batch.label),
                         polarity=cut(batch.polarity), present={k: cut(v) for k, v in batch.present.items()})


def _build(name: str, modalities=MODALITIES, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, TASK, modalities)


def optimizers_for(model) -> dict:
    """What the trainer builds from the model's explicit interface (models/base.py)."""
    return {n: torch.optim.Adam(g.params, lr=g.lr or 1e-3) for n, g in model.param_groups().items()}


def _train_step_loss(model, batch: DialogueBatch) -> tuple[ModelOutput, torch.Tensor]:
    """What the trainer does (pipeline/train/loop.py): CE on each of `train_logits` (or on `logits`) + aux losses."""
    model.train()
    model.before_step(batch, optimizers_for(model))
    out = model(batch)
    ce = sum(torch.nn.functional.cross_entropy(lg[batch.mask], batch.label[batch.mask], ignore_index=-1)
             for lg in (out.train_logits or (out.logits,)))
    return out, ce + sum(out.losses.values())


def _paper_model(name: str, modalities=MODALITIES, seed: int = 0):
    """The model with its `--profile paper` config (the class's paper_profile rows)."""
    cls = MODELS.get(name)
    torch.manual_seed(seed)
    return build_model(name, TASK, modalities, cls.config_cls().merged(cls.paper_model_defaults))


def test_registry_has_the_four_models_and_baselines():
    for name in ("ts-gcl", "ar-iigcn"):
        assert name in MODELS


@pytest.mark.parametrize("name", NAMES)
def test_class_attributes(name):
    cls = MODELS.get(name)
    assert cls.name == name
    assert dataclasses.is_dataclass(cls.config_cls) and cls.config_cls.__dataclass_params__.frozen
    assert isinstance(getattr(cls, "requires", ()), tuple)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_losses_and_gradients(name):
    model = _build(name)
    batch = make_batch(TASK)
    out, loss = _train_step_loss(model, batch)
    b, n = batch.shape
    assert out.logits.shape == (b, n, TASK.n_classes)
    assert torch.isfinite(out.logits[batch.mask]).all()
    assert out.embeddings is not None and out.embeddings.shape[:2] == (b, n)
    for key, value in out.losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    model.zero_grad(set_to_none=True)
    loss.backward()
    missing = [pn for pn, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # param_groups partition the parameters: every parameter in exactly one group, "main" always there
    groups = model.param_groups()
    assert "main" in groups and groups["main"].main
    grouped = [id(p) for g in groups.values() for p in g.params]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_returns_no_label_losses(name):
    model = _build(name).eval()
    batch = make_batch(TASK)
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out.logits[batch.mask]).all()
    assert not out.losses, f"{name}: auxiliary losses computed in eval mode: {sorted(out.losses)}"


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip_through_yaml(name):
    cls = MODELS.get(name)
    cfg = cls.config_cls()
    text = yaml.safe_dump(dataclasses.asdict(cfg))
    assert cls.config_cls(**yaml.safe_load(text)) == cfg


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mods", SUBSETS, ids=lambda s: "".join(s))
def test_every_modality_subset(name, mods):
    cls = MODELS.get(name)
    if any(m not in mods for m in getattr(cls, "requires", ())):
        pytest.skip(f"{name} requires {cls.requires}")
    model = _build(name, mods)
    batch = make_batch(TASK, seed=1)
    out, loss = _train_step_loss(model, batch)
    assert out.logits.shape == (*batch.shape, TASK.n_classes)
    assert torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("name", NAMES)
def test_text_only_minilm_width(name):
    task = TaskInfo(7, TASK.class_names, {"t": 384}, max_speakers=9, class_polarities=MELD_POL)
    torch.manual_seed(0)
    model = build_model(name, task, ("t",))
    out, loss = _train_step_loss(model, make_batch(task, seed=2))
    assert torch.isfinite(loss) and out.logits.shape[-1] == 7


@pytest.mark.parametrize("name", NAMES)
def test_missing_media_and_unlabelled_utterances(name):
    model = _build(name)
    batch = make_batch(TASK, seed=3, drop={"a": 0.5, "v": 0.5})
    batch.label[0, :2] = -1  # unlabelled but real utterances: no contrastive/polarity target
    out, loss = _train_step_loss(model, batch)
    assert torch.isfinite(out.logits[batch.mask]).all() and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("name", NAMES)
def test_batch_invariance_in_eval_mode(name):
    model = _build(name).eval()
    batch = make_batch(TASK, seed=4)
    with torch.no_grad():
        full = model(batch).logits
        for i, length in enumerate(LENGTHS):
            alone = model(sub_batch(batch, i)).logits
            torch.testing.assert_close(alone[0], full[i, :length], atol=1e-5, rtol=1e-4,
                                       msg=lambda m: f"{name}: dialogue {i} alone differs from batched: {m}")


COMPOSITIONS = {"one-utterance": (1,), "one-dialogue": (5,)}  # (LENGTHS above mixes 1-utterance dialogues in)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mods", SUBSETS, ids=lambda s: "".join(s))
@pytest.mark.parametrize("composition", sorted(COMPOSITIONS))
def test_trains_on_any_batch_composition(name, mods, composition):
    """A training batch of one utterance (a k-fold remainder) or of one dialogue, with every modality subset:
    a finite loss and gradient (BatchNorm on one row used to raise here)."""
    cls = MODELS.get(name)
    if any(m not in mods for m in cls.requires):
        pytest.skip(f"{name} requires {cls.requires}")
    model = _build(name, mods)
    batch = make_batch(TASK, lengths=COMPOSITIONS[composition], seed=5)
    out, loss = _train_step_loss(model, batch)
    assert torch.isfinite(loss) and out.logits.shape == (*batch.shape, TASK.n_classes)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("composition", ["one-utterance", "one-dialogue"])
def test_paper_profile_model_trains_on_a_batch_of_one(name, composition):
    """The specification's configs (DeepMSI's BatchNorm classifier, TS-GCL's 2-layer BiLSTM, ...) too."""
    model = _paper_model(name)
    batch = make_batch(TASK, lengths=COMPOSITIONS[composition], seed=6)
    out, loss = _train_step_loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()


def _with_noise_where_absent(batch: DialogueBatch, m: str) -> DialogueBatch:
    """A copy whose modality-m features (and frames) are large noise wherever m is absent."""
    absent = batch.mask & ~batch.present[m]
    g = torch.Generator().manual_seed(7)
    noisy = lambda x: torch.where(absent.reshape(*absent.shape, *[1] * (x.dim() - 2)),  # noqa: E731
                                  100 * torch.randn(x.shape, generator=g), x)
    return dataclasses.replace(batch, feats={**batch.feats, m: noisy(batch.feats[m])},
                               frames={k: noisy(v) if k == m else v for k, v in batch.frames.items()})


def _absent_batch(m: str) -> DialogueBatch:
    batch = make_batch(TASK, seed=8, drop={m: 0.5})
    batch.present[m][0] = False  # dialogue 0 has no modality m at all
    return batch


def _perturb_modality_params(model, m: str) -> int:
    """Add noise to every parameter that belongs to modality m alone (a ModuleDict / ParameterDict entry
    named m: projections, context RNNs, generators, graph encoders, fusion layers); returns how many."""
    n = 0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if m in pname.split("."):
                p.add_(torch.randn_like(p) * 0.5 + 0.1)
                n += 1
    return n


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("m", MODALITIES)
def test_absent_modality_contributes_nothing(name, m):
    """docs/models.md §1 "Missing media": noise in an absent modality's rows changes no output, and a
    dialogue without modality m is untouched by everything that only modality m's parameters compute."""
    model = _build(name).eval()
    batch = _absent_batch(m)
    with torch.no_grad():
        ref = model(batch).logits
        noisy = model(_with_noise_where_absent(batch, m)).logits
        torch.testing.assert_close(noisy[batch.mask], ref[batch.mask])
        _perturb_modality_params(model, m)
        after = model(batch).logits
    n0 = LENGTHS[0]
    torch.testing.assert_close(after[0, :n0], ref[0, :n0],
                               msg=lambda s: f"{name}: absent modality {m!r} still reaches the output: {s}")


@pytest.mark.parametrize("name", ["ts-gcl", "ar-iigcn", "deepmsi-mer"])
def test_absent_encode_is_the_earlier_behaviour(name):
    """absent=encode: the absent node still gets context / biases, so the same check sees it (the test above
    can fail)."""
    cls = MODELS.get(name)
    torch.manual_seed(0)
    model = build_model(name, TASK, MODALITIES, cls.config_cls(absent="encode")).eval()
    m = "v" if name == "deepmsi-mer" else "a"
    batch = _absent_batch(m)
    with torch.no_grad():
        ref = model(batch).logits
        assert _perturb_modality_params(model, m) > 0
        after = model(batch).logits
    assert not torch.allclose(after[0, :LENGTHS[0]], ref[0, :LENGTHS[0]])


@pytest.mark.parametrize("name", ["ts-gcl", "ar-iigcn", "deepmsi-mer"])
def test_absent_option_changes_nothing_when_every_modality_is_present(name):
    cls = MODELS.get(name)
    batch = make_batch(TASK, seed=9)
    outs = []
    for absent in ("zero", "encode"):
        torch.manual_seed(0)
        model = build_model(name, TASK, MODALITIES, cls.config_cls(absent=absent)).eval()
        with torch.no_grad():
            outs.append(model(batch).logits)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", NAMES)
def test_a_config_saved_before_an_option_existed_keeps_its_behaviour(name):
    """Checkpoints store the full config; one written before `absent` existed re-scores with `encode`."""
    cls = MODELS.get(name).config_cls
    saved = cls().to_dict()
    assert cls.from_saved(saved) == cls()
    for key, old in cls.saved_defaults.items():
        saved.pop(key)
        assert getattr(cls.from_saved(saved), key) == old
