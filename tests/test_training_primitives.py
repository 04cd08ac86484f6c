"""The training primitives shared by the fine-tune stage, the trainer and the extractors (common/training.py):
the autocast precision rule, weighted F1, class weights, the warm-up schedule, thread pinning; and the fine-tune
budget that adapts to the corpus (`SLOT.finetune.patience`, issue 19)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.common import training
from mer_pipe.common.errors import ConfigError
from mer_pipe.common.training import (autocast, autocast_dtype, class_weights_from_counts, lr_factor, lr_schedule,
                                      patience_ran_out, pin_torch_threads, weighted_f1)

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


# --- the autocast precision rule -------------------------------------------------------------------------
def test_precision_rule_is_the_three_rules_it_replaced():
    """extract: bf16 CPU / fp16 CUDA (extractors/base.py); finetune: bf16 on both (the old fine-tune _autocast);
    train: bf16 on CUDA only (the old loop._autocast). Off means float32 everywhere."""
    want = {("extract", "cpu"): "bfloat16", ("extract", "cuda"): "float16", ("extract", "cuda:1"): "float16",
            ("finetune", "cpu"): "bfloat16", ("finetune", "cuda"): "bfloat16", ("finetune", "cuda:0"): "bfloat16",
            ("train", "cpu"): None, ("train", "cuda"): "bfloat16", ("train", "cuda:2"): "bfloat16"}
    for (use, device), dtype in want.items():
        assert autocast_dtype(True, device, use) == dtype, (use, device)
        assert autocast_dtype(False, device, use) is None
    with pytest.raises(ValueError, match="extract, finetune, train"):
        autocast_dtype(True, "cpu", "inference")


def test_autocast_contexts_on_cpu():
    from mer_pipe.extractors.base import autocast_context

    a, b = torch.randn(4, 8), torch.randn(8, 3)
    for ctx in (autocast(True, "cpu", "extract"), autocast_context(True, "cpu"), autocast(True, "cpu", "finetune")):
        with ctx:
            assert (a @ b).dtype == torch.bfloat16
    for ctx in (autocast(True, "cpu", "train"), autocast(False, "cpu", "finetune"), autocast_context(False, "cpu")):
        with ctx:
            assert (a @ b).dtype == torch.float32


# --- weighted F1: one score for fine-tuning and training ----------------------------------------------------
def _cases():
    rng = np.random.default_rng(0)
    for n_classes in (3, 6, 7, 9):
        for n in (1, 5, 40, 300):
            gold = rng.integers(0, n_classes, n)
            pred = np.where(rng.random(n) < 0.5, gold, rng.integers(0, n_classes, n))
            yield n_classes, gold, pred
    yield 7, np.array([0, 0, 1, 1, 2]), np.array([0, 5, 1, 6, 2])  # predicted classes absent from gold
    yield 7, np.array([3, 3, 3]), np.array([3, 3, 3])  # most classes absent from both


def test_finetune_and_training_weighted_f1_are_identical():
    """The fine-tune loop scores dev with `weighted_f1(y, p)` (finetune_eval too); the trainer with
    `classification_metrics` (labels 0..C-1): the same values, bit for bit, and the sklearn calls they replaced."""
    from sklearn.metrics import accuracy_score, f1_score

    from mer_pipe.pipeline.train.metrics import classification_metrics

    for n_classes, gold, pred in _cases():
        ft = weighted_f1(gold.tolist(), pred.tolist())
        tr = classification_metrics(gold, pred, [f"c{i}" for i in range(n_classes)])
        assert ft == tr["weighted_f1"], (n_classes, gold, pred)
        assert ft == float(f1_score(gold.tolist(), pred.tolist(), average="weighted", zero_division=0))  # old fine-tune
        assert tr["weighted_f1"] == float(f1_score(gold, pred, labels=list(range(n_classes)), average="weighted",
                                                   zero_division=0))  # old trainer
        assert training.accuracy(gold.tolist(), pred.tolist()) == tr["accuracy"] == float(accuracy_score(gold, pred))


# --- class weights ------------------------------------------------------------------------------------------
def test_class_weights_are_the_trainers_and_give_the_balanced_loss():
    counts = np.array([50, 10, 0, 5])
    w = class_weights_from_counts(counts)
    assert w.tolist() == pytest.approx([65 / 50, 65 / 10, 0.0, 65 / 5], rel=1e-15)
    # the fine-tune's "balanced" (sklearn: N / (C n_c)) differs by the constant C, which a mean-reduced
    # weighted cross-entropy divides out: the loss is the same up to float rounding
    balanced = np.where(counts > 0, counts.sum() / (4 * np.maximum(counts, 1)), 0.0)
    np.testing.assert_allclose(w / 4, balanced, rtol=1e-14)
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(64, 4, generator=g), torch.tensor([0, 1, 3] * 21 + [0])
    new = torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32))(logits, target)
    old = torch.nn.CrossEntropyLoss(weight=torch.tensor(balanced, dtype=torch.float32))(logits, target)
    assert float(new) == pytest.approx(float(old), rel=1e-6)


# --- the warm-up schedule -----------------------------------------------------------------------------------
def _old_finetune_factor(step: int, total: int, warm: int) -> float:
    if step < warm:
        return (step + 1) / max(1, warm)
    return max(0.0, (total - step) / max(1, total - warm))


def _old_trainer_factor(step: int, total: int, warm: int, scheduler: str) -> float:
    if warm and step < warm:
        return (step + 1) / warm
    if scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return 1.0


def test_lr_factor_is_both_old_schedules_bit_for_bit():
    for total in (1, 7, 40, 333):
        for warm in sorted({0, 1, total // 10, int(round(0.1 * total)), total // 2}):
            for step in range(total + 3):
                assert lr_factor(step, total, warm, "linear") == _old_finetune_factor(step, total, warm)
                for sched in ("cosine", "none"):
                    assert lr_factor(step, total, warm, sched) == _old_trainer_factor(step, total, warm, sched)


def test_lr_schedule_steps_and_saves_plain_values():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_schedule(opt, 10, 2, "linear")
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [_old_finetune_factor(s, 10, 2) for s in range(10)]
    assert sched.state_dict()["lr_lambdas"] == [None]  # a function: nothing pickled into state.pt


# --- early stopping -----------------------------------------------------------------------------------------
def test_patience_ran_out_is_the_trainers_old_counter():
    """The trainer counted epochs without a better score (`bad`, reset on improvement); the shared rule reads the
    distance to the best epoch: the same stops, for every score sequence."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        epochs, patience = int(rng.integers(1, 12)), int(rng.integers(0, 5))
        scores = rng.choice([0.1, 0.2, 0.3, float("nan")], epochs).tolist()
        best, best_epoch, bad, old_stop, new_stop = -1.0, -1, 0, None, None
        for epoch, score in enumerate(scores):
            if score > best:
                best, best_epoch, bad = score, epoch, 0
            else:
                bad += 1
            if old_stop is None and patience and bad >= patience and epoch + 1 < epochs:
                old_stop = epoch
            if new_stop is None and patience_ran_out(epoch + 1, best_epoch + 1, patience, epochs):
                new_stop = epoch
        assert old_stop == new_stop, (scores, patience)


# --- thread pinning -----------------------------------------------------------------------------------------
def test_pin_torch_threads(monkeypatch):
    monkeypatch.setattr(training, "_PINNED", [])
    before = torch.get_num_threads()
    try:
        assert not pin_torch_threads(None) and not pin_torch_threads(0)
        assert pin_torch_threads(1) and torch.get_num_threads() == 1
        assert not pin_torch_threads(2, once=True) and torch.get_num_threads() == 1  # pinned already
        assert pin_torch_threads(1)  # without `once` it always sets
    finally:
        torch.set_num_threads(before)


# --- fine-tune patience (issue 19 deliverable 3) -----------------------------------------------------------------
GOLDEN_KEY_DICTS = {  # sha256 of FinetuneConfig(...).key_dict() before `patience` existed: keys must not move
    (): "af84ba6b44f826f4",
    (("epochs", 5), ("lr", 1e-3), ("crossfit", 3)): "4d6cecdd15953283",
}


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_patience_key_unchanged_when_off_and_part_of_the_key_when_on():
    from mer_pipe.extractors.finetune import FinetuneConfig

    for fields, digest in GOLDEN_KEY_DICTS.items():
        assert _digest(FinetuneConfig(**dict(fields)).key_dict()) == digest
        assert _digest(FinetuneConfig(**dict(fields), patience=0).key_dict()) == digest
        on = FinetuneConfig(**dict(fields), patience=1).key_dict()
        assert on["patience"] == 1 and _digest(on) != digest
        assert _digest(FinetuneConfig(**dict(fields), patience=2).key_dict()) != _digest(on)
    assert FinetuneConfig.from_dict({"patience": "3"}).patience == 3
    with pytest.raises(ConfigError, match="patience"):
        FinetuneConfig(patience=-1)


def test_patience_changes_the_stage_key_only_when_on(fresh_cache):
    from conftest import SYNTH_DATASET

    from mer_pipe.pipeline.extract.plan import make_plan
    from mer_pipe.pipeline.extract.presets import resolve_slots

    cache = fresh_cache

    def key(*extra: str) -> str:
        slots = resolve_slots("offline", only="t", overrides=["t.model=tiny:text", "t.finetune=true", *extra],
                              cache_root=cache)
        (stage,) = make_plan(SYNTH_DATASET, slots, cache_dir=cache).finetunes
        return stage.key

    plain = key()
    assert key("t.finetune.patience=0") == plain
    assert key("t.finetune.patience=1") != plain


WORDS = "happy sad angry great good bad love hate sorry thanks wow okay".split()


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> str:
    from mer_pipe.extractors.tiny import ensure_tiny_text

    return str(ensure_tiny_text(tmp_path_factory.mktemp("tiny") / "text"))


def _data(n: int, seed: int):
    from mer_pipe.extractors.finetune import FinetuneData

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).tolist()
    texts = [" ".join(rng.choice(WORDS, 4).tolist() + [WORDS[y]]) for y in labels]
    return FinetuneData(texts, labels)


def _finetune(ref: str, work: Path, steps: list[int] | None = None, **cfg):
    from mer_pipe.extractors.finetune import FinetuneConfig, finetune

    log: list[str] = []
    c = FinetuneConfig(batch_size=8, max_length=16, **cfg)
    rec = finetune("text", ref, None, c, _data(24, 0), _data(12, 1), 3, work, log=log.append,
                   on_step=None if steps is None else lambda s, n: steps.append(s))
    return rec, log


def test_patience_stops_when_dev_does_not_improve_and_a_resume_trains_no_more(tiny_text, tmp_path):
    # lr 1e-9: the weights barely move, dev W-F1 never beats epoch 1 (strictly), so patience 1 stops after epoch 2
    rec, log = _finetune(tiny_text, tmp_path / "w", epochs=4, patience=1, lr=1e-9)
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2]
    assert rec["best_epoch"] == 1 and rec["stopped_early"] is True and rec["stopped_epoch"] == 2
    assert "stopping: no better dev W-F1 for 1 epochs" in log[-1]
    assert (tmp_path / "w" / "best").is_dir()
    steps: list[int] = []
    again, log = _finetune(tiny_text, tmp_path / "w", steps, epochs=4, patience=1, lr=1e-9)
    assert log[0].startswith("resuming after epoch 2") and steps == []  # stopped: not one more step
    assert [e["epoch"] for e in again["epochs"]] == [1, 2] and again["stopped_early"] and again["stopped_epoch"] == 2


def test_patience_off_runs_every_epoch(tiny_text, tmp_path):
    rec, _ = _finetune(tiny_text, tmp_path / "w", epochs=3, lr=1e-9)
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2, 3]
    assert rec["best_epoch"] == 1 and rec["stopped_early"] is False and rec["stopped_epoch"] == 3
    # patience larger than what remains never stops early either; the LR schedule spans all `epochs`
    rec, _ = _finetune(tiny_text, tmp_path / "p", epochs=3, lr=1e-9, patience=5)
    assert len(rec["epochs"]) == 3 and rec["stopped_early"] is False
    assert rec["epochs"][-1]["lr_end"] == 0.0  # linear decay reaches 0 at the last of `epochs` steps


def test_audio_finetune_is_deterministic_on_cpu(tmp_path):
    """wav2vec2 draws its SpecAugment masks (and LayerDrop) from numpy's global RNG: the fine-tune seeds it per
    epoch like torch, so two identical runs give the same weights (and a resumed run what an uninterrupted one
    would)."""
    from mer_pipe.extractors.finetune import FinetuneConfig, FinetuneData, finetune
    from mer_pipe.extractors.tiny import ensure_tiny_wav2vec2

    ref = str(ensure_tiny_wav2vec2(tmp_path / "w2v"))
    rng = np.random.default_rng(0)

    def data(n: int) -> FinetuneData:
        return FinetuneData([rng.standard_normal(16000).astype(np.float32) for _ in range(n)],
                            rng.integers(0, 3, n).tolist())

    train, dev = data(8), data(4)
    cfg = FinetuneConfig(batch_size=4, epochs=2, lr=1e-3, max_seconds=1.0)
    runs = []
    for name in ("a", "b"):
        np.random.seed(12345 if name == "a" else 54321)  # whatever the global state was before
        finetune("audio", ref, None, cfg, train, dev, 3, tmp_path / name, log=lambda line: None)
        runs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name / "best").glob("*.safetensors"))})
    assert runs[0] and runs[0] == runs[1]
