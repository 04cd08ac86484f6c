"""pipeline/train/plots.py: every figure is a real PNG written atomically, for one and several seeds,
with and without auxiliary / dev losses; format_mean_std prints no ± for a single seed."""
from __future__ import annotations

import math

import pytest

from mer_pipe.common.formatting import format_mean_std
from mer_pipe.pipeline.train.plots import plot_confusion, plot_curves, plot_per_class_f1

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # axes, text and lines, not an empty canvas
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # no temp file left behind


def history(seed: int, epochs: int = 12, aux: tuple[str, ...] = (), dev_loss: bool = False,
            main: bool = True) -> list[dict]:
    out = []
    for e in range(epochs):
        f1 = 0.45 + 0.15 * (1 - math.exp(-e / 3)) + 0.01 * seed - 0.004 * max(0, e - 7)
        rec = {"epoch": e, "dev_weighted_f1": f1, "dev_accuracy": 0.5 + 0.01 * e, "seconds": 1.0}
        lm = 1.6 * math.exp(-e / 4) + 0.4 + 0.02 * seed
        for i, a in enumerate(aux):
            rec[f"loss_{a}"] = (0.05 + 0.02 * i) * math.exp(-e / 6) + 0.01
        if main:
            rec["loss_main"] = lm
        rec["train_loss"] = lm + sum(rec[f"loss_{a}"] for a in aux)
        if dev_loss:
            rec["dev_loss"] = 1.2 * math.exp(-e / 5) + 0.7 + 0.01 * max(0, e - 6)
        out.append(rec)
    return out


def runs(seeds, folds=("split",), **kw) -> list[dict]:
    """Runs whose best_epoch is the first maximum of the selection W-F1, as the trainer picks it."""
    out = []
    for s in seeds:
        for f in folds:
            h = history(s, **kw)
            f1 = [x["dev_weighted_f1"] for x in h]
            out.append({"seed": s, "fold": f, "best_epoch": f1.index(max(f1)), "history": h})
    return out


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)], ids=["1seed", "3seeds"])
@pytest.mark.parametrize("kw", [{}, {"aux": ("contrast", "adv"), "dev_loss": True}, {"aux": ("icl",), "main": False}],
                         ids=["plain", "aux+dev", "aux-no-loss_main"])
@pytest.mark.parametrize("select_on", ["dev", "test"])
def test_plot_curves_writes_png(tmp_path, seeds, kw, select_on):
    out = tmp_path / "curves.png"
    plot_curves(out, runs(seeds, **kw), model="ts-gcl", dataset="meld", select_on=select_on)
    assert_png(out)


def test_plot_curves_many_folds_and_missing_best_epoch(tmp_path):
    rs = runs((0, 1, 2), folds=tuple(f"fold{k}" for k in range(10)), aux=("contrastive",))
    rs[0]["best_epoch"] = 99  # not in the history: drawn without a marker, not an error
    out = tmp_path / "curves.png"
    plot_curves(out, rs, model="deepmsi-mer", dataset="iemocap", select_on="test")
    assert_png(out)


def test_plot_curves_reads_the_trainers_records(tmp_path):
    """Records as loop.fit writes them: extra keys (best_epoch, stop text), a dev loss missing in places."""
    rs = runs((0, 1), aux=("adversarial", "iccl"), dev_loss=True)
    for r in rs:
        for rec in r["history"]:
            rec.update(best_weighted_f1=0.6, best_epoch=3, stop="")
        r["history"][0]["dev_loss"] = None
    out = tmp_path / "curves.png"
    plot_curves(out, rs, model="ar-iigcn", dataset="meld", select_on="dev")
    assert_png(out)


def test_plot_curves_without_history_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="history"):
        plot_curves(tmp_path / "c.png", [{"seed": 0, "fold": "split", "best_epoch": 0, "history": []}],
                    model="mlp", dataset="meld", select_on="dev")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("scale", [1, 3], ids=["1seed-counts", "3seeds-summed"])
def test_plot_confusion_writes_png(tmp_path, scale):
    cm = [[scale * (40 if i == j else (i + 2 * j) % 5) for j in range(7)] for i in range(7)]
    cm[2] = [0] * 7  # a class absent from the test set: no division by zero
    out = tmp_path / "confusion.png"
    plot_confusion(out, cm, CLASSES, "ts-gcl on meld test (summed over runs)\nW-F1 0.6123 ± 0.0110")
    assert_png(out)


def test_plot_confusion_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_confusion(tmp_path / "c.png", [[1, 2], [3, 4]], CLASSES, "x")


@pytest.mark.parametrize("n", [1, 3])
def test_plot_per_class_f1_writes_png(tmp_path, n):
    per_class = {c: {"f1": {"mean": 0.1 + 0.12 * i, "std": 0.0 if n == 1 else 0.01 * (i + 1), "n": n}}
                 for i, c in enumerate(CLASSES)}
    out = tmp_path / "per_class_f1.png"
    plot_per_class_f1(out, per_class, CLASSES, f"ts-gcl on meld test, per-class F1 ({n} seeds)")
    assert_png(out)


def test_plot_per_class_f1_without_n_and_missing_class(tmp_path):
    per_class = {c: {"f1": {"mean": 0.5, "std": 0.02}} for c in CLASSES}
    plot_per_class_f1(tmp_path / "f1.png", per_class, CLASSES, "no n")
    assert_png(tmp_path / "f1.png")
    with pytest.raises(ValueError, match="fear"):
        plot_per_class_f1(tmp_path / "g.png", {c: v for c, v in per_class.items() if c != "fear"}, CLASSES, "x")


@pytest.mark.parametrize("args, expected", [
    ((0.61234, 0.01101, 3), "0.6123 ± 0.0110"),
    ((0.61234, 0.0, 1), "0.6123"),
    ((0.61234, 0.05, 1), "0.6123"),  # one seed: no ± even if a std is passed
    ((0.61234, 0.0, 0), "0.6123"),
    ((0.5, 0.25, 2), "0.5000 ± 0.2500"),
])
def test_format_mean_std(args, expected):
    assert format_mean_std(*args) == expected


def test_format_mean_std_digits():
    assert format_mean_std(0.61234, 0.01101, 5, digits=2) == "0.61 ± 0.01"
    assert format_mean_std(61.234, 1.1, 1, digits=1) == "61.2"
