"""Interop with the published ERC feature pickles: every layout imports, export -> import is a round trip,
a crafted pickle cannot run code, broken files are one-line errors, and real MELD text trains the same."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from mer_pipe.common.errors import ManifestError
from mer_pipe.pipeline.cli import main
from mer_pipe.pipeline.corpus.manifest import load_dataset
from mer_pipe.pipeline.corpus.recipes.iemocap import load_splits
from mer_pipe.pipeline.interop import export_dataset, import_pickle

REPO = Path(__file__).resolve().parents[1]
MER_PIPE = str(Path(sys.executable).parent / "mer-pipe")
DIMS = {"text": 6, "audio": 5, "visual": 4, "roberta": 7}
LATIN1 = "caf\xe9 au lait".encode("latin1")  # not UTF-8: stays latin-1 text
UTF8 = "you\u2019re here".encode("utf-8")  # UTF-8 in a Python 2 str: must come back as U+2019


# ---- writing pickles the way Python 2 did ---------------------------------------------------------------------
class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: bytes are py2 `str` (BINSTRING), builtins live in `__builtin__`,
    numpy globals in `numpy.core`."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module, name = obj.__module__, name or obj.__qualname__
        module = {"builtins": "__builtin__"}.get(module, module.replace("numpy._core", "numpy.core"))
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def py2_dump(obj, path: Path) -> Path:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())
    return path


def _dialogues(keys, rng, n_classes):
    """key -> n, labels, features per role, sentences (bytes), M/F speakers (bytes), one-hot speakers, sentiment."""
    out = {}
    for j, k in enumerate(keys):
        n = 3 + j % 3
        labels = [int((j + i) % n_classes) for i in range(n)]
        out[k] = {
            "labels": labels,
            "feats": {r: [rng.standard_normal(d) for _ in range(n)] for r, d in DIMS.items()},
            "roberta": [rng.standard_normal((n, DIMS["roberta"])).astype(np.float32) for _ in range(4)],
            "sent": [LATIN1 if i == 0 else UTF8 if i == 1 else f"line {i} of {k}".encode() for i in range(n)],
            "mf": [b"M" if i % 2 == 0 else b"F" for i in range(n)],
            "onehot": [[1 if s == (i % 3) else 0 for s in range(9)] for i in range(n)],
            # MELD: neutral 0, positive 1, negative 2 (DialogueRNN order); labels 0 neutral, 4 joy, else negative
            "sentiment": [0 if y == 0 else 1 if y == 4 else 1 if y == 1 else 2 for y in labels],
        }
    return out


SPLITS = load_splits()
IEMOCAP_TRAIN, IEMOCAP_DEV, IEMOCAP_TEST = SPLITS["train"][:3], SPLITS["dev"][:2], SPLITS["test"][:2]
MELD_TRAIN, MELD_DEV, MELD_TEST = [0, 1, 2], [1039, 1040], [1153, 1154]  # published numbering: dev d+1039, test d+1153


def build(layout: str, tmp: Path) -> tuple[Path, dict]:
    """A pickle in `layout`'s exact structure; returns (path, the dialogue data)."""
    rng = np.random.default_rng(0)
    if layout.endswith("iemocap"):
        keys = [k.encode() for k in IEMOCAP_TRAIN + IEMOCAP_DEV + IEMOCAP_TEST]
        data = _dialogues(keys, rng, 6)
        train, test = keys[:5], keys[5:]
    else:
        keys = MELD_TRAIN + MELD_DEV + MELD_TEST
        data = _dialogues(keys, rng, 7)
        train, test = keys[:5], keys[5:]
    per = lambda f: {k: f(k, v) for k, v in data.items()}
    ids = per(lambda k, v: [(k + b"_" + (b"F" if i % 2 else b"M") + b"%03d" % i) if isinstance(k, bytes) else i
                            for i in range(len(v["labels"]))])
    labels, sents = per(lambda k, v: v["labels"]), per(lambda k, v: v["sent"])
    feat = {r: per(lambda k, v, r=r: v["feats"][r]) for r in DIMS}
    rob = [per(lambda k, v, i=i: list(v["roberta"][i])) for i in range(4)]
    if layout == "mmgcn-iemocap":
        obj = (ids, per(lambda k, v: v["mf"]), labels, feat["text"], feat["audio"], feat["visual"], sents, train, test)
        return py2_dump(obj, tmp / "IEMOCAP_features.pkl"), data
    if layout == "mmgcn-meld":
        obj = (ids, per(lambda k, v: v["onehot"]), labels, feat["text"], feat["audio"], feat["visual"], sents,
               train, test, per(lambda k, v: v["sentiment"]))
        return py2_dump(obj, tmp / "MELD_features_raw1.pkl"), data
    if layout == "dialoguernn-meld":
        obj = (ids, per(lambda k, v: v["onehot"]), labels, feat["text"], feat["audio"], sents, set(train), set(test),
               per(lambda k, v: v["sentiment"]))
        return py2_dump(obj, tmp / "MELD_features_raw.pkl"), data
    # COSMIC: Python 3 pickles (a list, str sentences, rows as lists of arrays), with their own dev list
    dev = [k for k in train if k in (IEMOCAP_DEV + MELD_DEV) or (isinstance(k, bytes) and k.decode() in IEMOCAP_DEV)]
    train = [k for k in train if k not in dev]
    text_of = per(lambda k, v: [s.decode("latin1") if s is LATIN1 else s.decode("utf-8") for s in v["sent"]])
    if layout == "cosmic-iemocap":
        dk = lambda ks: [k.decode() for k in ks]
        strk = lambda d: {k.decode(): v for k, v in d.items()}
        spk = per(lambda k, v: [s.decode() for s in v["mf"]])
        obj = [strk(spk), strk(labels), *(strk(r) for r in rob), strk(text_of), dk(train), dk(test), dk(dev)]
        path = tmp / "iemocap_features_roberta.pkl"
    else:
        obj = [per(lambda k, v: v["onehot"]), labels, per(lambda k, v: v["sentiment"]), *rob, text_of, train, test, dev]
        path = tmp / "meld_features_roberta.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path, data


LAYOUTS = ("mmgcn-iemocap", "mmgcn-meld", "dialoguernn-meld", "cosmic-iemocap", "cosmic-meld")
EXPECTED_SLOTS = {"mmgcn-iemocap": {"t": 6, "a": 5, "v": 4}, "mmgcn-meld": {"t": 6, "a": 5, "v": 4},
                  "dialoguernn-meld": {"t": 6, "a": 5}, "cosmic-iemocap": {"t": 7, "t_r2": 7, "t_r3": 7, "t_r4": 7},
                  "cosmic-meld": {"t": 7, "t_r2": 7, "t_r3": 7, "t_r4": 7}}


def _table(cache: Path, name: str, slot: str):
    from mer_pipe.cache.loading import load_table
    from mer_pipe.cache.store import FeatureStore

    return load_table(FeatureStore(cache), name, slot, load_dataset(name, cache)[0]["manifest_digest"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_imports_counts_labels_speakers_splits(layout, tmp_path):
    path, data = build(layout, tmp_path)
    cache = tmp_path / "cache"
    res = import_pickle(path, name="imp", cache_dir=cache)
    info, utts = load_dataset("imp", cache)
    assert info["source"]["layout"] == layout and info["recipe"] == "pickle"
    assert {s: e["dim"] for s, e in res.slots.items()} == EXPECTED_SLOTS[layout]
    assert len(utts) == sum(len(v["labels"]) for v in data.values())
    by_dia = {}
    for u in utts:
        by_dia.setdefault(u.dialogue_id, []).append(u)
        assert u.video is None and u.audio is None and u.video_segment is None
    assert len(by_dia) == 7
    iemocap = layout.endswith("iemocap")
    names = info["label_names"]
    assert names[0] == ("happy" if iemocap else "neutral")
    expect_split = {}
    if iemocap:
        for s, ks in (("train", IEMOCAP_TRAIN), ("dev", IEMOCAP_DEV), ("test", IEMOCAP_TEST)):
            expect_split.update({k: s for k in ks})
        dia_of = {k: k for k in expect_split}
    else:
        dia_of = {0: "train/dia0", 1: "train/dia1", 2: "train/dia2", 1039: "dev/dia0", 1040: "dev/dia1",
                  1153: "test/dia0", 1154: "test/dia1"}
        expect_split = {k: d.split("/")[0] for k, d in dia_of.items()}
    for raw, v in data.items():
        key = raw.decode() if isinstance(raw, bytes) else raw
        us = by_dia[dia_of[key]]
        assert [u.label_id for u in us] == v["labels"] and [u.label for u in us] == [names[y] for y in v["labels"]]
        assert {u.split for u in us} == {expect_split[key]}
        assert us[0].text == "caf\xe9 au lait" and us[1].text == "you\u2019re here"
        assert [u.speaker_idx for u in us] == [(i % 2 if iemocap else i % 3) for i in range(len(us))]
        if iemocap:
            assert us[0].speaker == f"{key[:5]}M" and us[1].speaker == f"{key[:5]}F"
        else:
            assert [u.speaker for u in us[:3]] == ["speaker0", "speaker1", "speaker2"]
            want = ["neutral" if y == 0 else "positive" if y in (1, 4) else "negative" for y in v["labels"]]
            assert [u.sentiment for u in us] == want
    report = json.loads((cache / "imp" / "prepare_report.json").read_text())
    rule = report["interop"]["dev_rule"]["rule"]
    assert rule == ("file" if layout.startswith("cosmic") else "iemocap-packaged" if iemocap else "meld-official")
    # arrays: the imported `t` of the first dialogue is the file's element, in order
    first = next(iter(data))
    t = _table(cache, "imp", "t")
    n0 = len(data[first]["labels"])
    want = data[first]["roberta"][0] if layout.startswith("cosmic") else np.stack(data[first]["feats"]["text"])
    np.testing.assert_array_equal(t.values[:n0], np.asarray(want, np.float32))


def _same_datasets(cache: Path, a: str, b: str, slots) -> None:
    (_, ua), (_, ub) = load_dataset(a, cache), load_dataset(b, cache)
    fields = ("id", "dialogue_id", "index", "text", "split", "label", "label_id", "speaker_idx", "sentiment")
    assert [[getattr(u, f) for f in fields] for u in ua] == [[getattr(u, f) for f in fields] for u in ub]
    for slot in slots:
        ta, tb = _table(cache, a, slot), _table(cache, b, slot)
        assert ta.ids == tb.ids
        np.testing.assert_array_equal(ta.values, tb.values)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_then_import_is_a_round_trip(layout, tmp_path):
    path, _ = build(layout, tmp_path)
    cache = tmp_path / "cache"
    import_pickle(path, name="a", cache_dir=cache)
    fmt = "cosmic" if layout.startswith("cosmic") else "mmgcn"
    out = export_dataset("a", fmt, tmp_path / "out.pkl", cache_dir=cache)
    assert out.variant == ("iemocap" if layout.endswith("iemocap") else "meld")
    res = import_pickle(out.path, name="b", cache_dir=cache)
    assert set(res.slots) == set(EXPECTED_SLOTS[layout])  # zero-width (missing) elements are not imported
    _same_datasets(cache, "a", "b", EXPECTED_SLOTS[layout])
    # a second export of the re-imported set is byte-identical: nothing drifts
    export_dataset("b", fmt, tmp_path / "out2.pkl", cache_dir=cache)
    assert (tmp_path / "out2.pkl").read_bytes() == out.path.read_bytes()


class _Recorder(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: set = set()

    def find_class(self, module, name):
        self.seen.add((module, name))
        return super().find_class(module, name)


@pytest.mark.parametrize("fmt,variant", [("mmgcn", "iemocap"), ("mmgcn", "meld"), ("cosmic", "iemocap"),
                                         ("cosmic", "meld")])
def test_export_reads_like_the_public_loaders(fmt, variant, tmp_path):
    """Unpack as the repos' dataloaders do; only numpy.frombuffer/reshape are referenced (NumPy 1.x loads it)."""
    import torch

    path, _ = build(f"{'cosmic' if fmt == 'cosmic' else 'mmgcn'}-{variant}", tmp_path)
    cache = tmp_path / "cache"
    import_pickle(path, name="a", cache_dir=cache)
    out = export_dataset("a", fmt, tmp_path / "x.pkl", cache_dir=cache).path
    with open(out, "rb") as fh:
        rec = _Recorder(fh, encoding="latin1")
        obj = rec.load()
    assert rec.seen <= {("numpy", "frombuffer"), ("numpy", "reshape"), ("builtins", "bytearray")}
    if fmt == "mmgcn" and variant == "iemocap":
        _, spk, lab, text, _audio, vis, _sent, train_vid, test_vid = obj
        assert len(train_vid) == 5 and len(test_vid) == 2
        for vid in train_vid:
            sp = torch.FloatTensor([[1, 0] if x == "M" else [0, 1] for x in spk[vid]])
            assert torch.FloatTensor(text[vid]).shape == (len(lab[vid]), 6) and sp.shape == (len(lab[vid]), 2)
            assert torch.FloatTensor(vis[vid]).shape[1] == 4 and torch.LongTensor(lab[vid]).max() < 6
    elif fmt == "mmgcn":
        _, spk, lab, text, audio, _vis, _sent, train_vid, test_vid, _ = obj
        assert sorted(train_vid) == [0, 1, 2, 1039, 1040] and sorted(test_vid) == [1153, 1154]
        for vid in test_vid:
            assert torch.FloatTensor(spk[vid]).shape == (len(lab[vid]), 9)
            assert torch.FloatTensor(audio[vid]).shape == (len(lab[vid]), 5)
    else:
        *head, r1, _r2, _r3, r4, _sent, train_ids, _test_ids, valid_ids = obj
        assert len(head) == (3 if variant == "meld" else 2) and len(valid_ids) == 2
        for vid in train_ids + valid_ids:
            assert torch.FloatTensor(r4[vid]).shape == (len(head[1][vid]), 7)
        text = r1
    arr = text[next(iter(text))]
    assert arr.dtype == np.float32 and arr.flags.writeable


def test_crafted_pickle_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    bad = tmp_path / "IEMOCAP_features.pkl"
    bad.write_bytes(pickle.dumps(({"a": Evil()},), protocol=2))
    with pytest.raises(ManifestError) as err:
        import_pickle(bad, name="x", cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert str(bad) in msg and f"{os.system.__module__}.system" in msg and "\n" not in msg
    assert not marker.exists()
    # nested inside numpy-looking data, through builtins.eval, and via a non-latin1 codec: all refused
    for evil in (b"cbuiltins\neval\n(S'1'\ntR.", b"c__builtin__\neval\n(S'1'\ntR.",
                 b"c_codecs\nencode\n(X\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13tR."):
        bad.write_bytes(evil)
        with pytest.raises(ManifestError):
            import_pickle(bad, name="x", cache_dir=tmp_path / "c")
    with pytest.raises(SystemExit) as ex:
        main(["prepare", "pickle", "--root", str(bad), "--cache-dir", str(tmp_path / "c")])
    assert ex.value.code == 2


@pytest.mark.parametrize("what", ["truncated", "unknown"])
def test_broken_or_unknown_pickle_is_one_line_exit_2(what, tmp_path, capsys):
    path, _ = build("mmgcn-iemocap", tmp_path)
    if what == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(pickle.dumps(({"a": [1]}, {"a": ["x"]}, [1, 2]), protocol=2))
    with pytest.raises(SystemExit) as ex:
        main(["prepare", "pickle", "--root", str(path), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err and str(path) in err
    assert ("truncated" in err) if what == "truncated" else ("unknown feature-pickle layout" in err and "keys(2)" in err)


def test_real_entry_point_and_forced_layout(tmp_path):
    path, _ = build("mmgcn-meld", tmp_path)
    r = subprocess.run([MER_PIPE, "prepare", "pickle", "--root", str(path), "--layout", "cosmic-meld",
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "is not a cosmic-meld pickle" in r.stderr
    r = subprocess.run([MER_PIPE, "prepare", "pickle", "--root", str(path), "--layout", "mmgcn-meld", "--name", "m",
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "meld-official" in r.stdout and "slot t" in r.stdout


def test_keys_follow_the_file_and_fallback_dev_is_documented(tmp_path):
    path, _ = build("mmgcn-meld", tmp_path)
    cache = tmp_path / "cache"
    k1 = import_pickle(path, name="m", cache_dir=cache).slots["t"]["key"]
    assert import_pickle(path, name="m", cache_dir=cache).slots["t"]["key"] == k1  # same file, same key
    obj = pickle.loads(path.read_bytes(), encoding="latin1")  # our own test file: trusted
    ids = {f"ep{k}": v for k, v in obj[0].items()}  # keys outside the MELD numbering
    renamed = tuple({f"ep{k}": v for k, v in d.items()} for d in obj[:7]) + (
        [f"ep{k}" for k in obj[7]], [f"ep{k}" for k in obj[8]], None)
    (tmp_path / "renamed.pkl").write_bytes(pickle.dumps((ids,) + renamed[1:], protocol=4))
    res = import_pickle(tmp_path / "renamed.pkl", name="m", cache_dir=cache)
    assert res.slots["t"]["key"] != k1  # another file re-keys
    rule = json.loads((cache / "m" / "prepare_report.json").read_text())["interop"]["dev_rule"]
    assert rule["rule"] == "held-out" and "random.Random(0)" in rule["detail"]
    splits = [u.split for u in load_dataset("m", cache)[1]]
    assert splits.count("dev") > 0 and "test" in splits


def test_ts_gcl_trains_unchanged_on_an_import(tmp_path):
    path, _ = build("mmgcn-iemocap", tmp_path)
    c = ["--cache-dir", str(tmp_path / "c")]
    main(["prepare", "pickle", "--root", str(path), "--name", "iem", *c])
    main(["train", "--model", "ts-gcl", "--dataset", "iem", "--seeds", "0", "--epochs", "1", "--device", "cpu",
          "--out", str(tmp_path / "run"), *c])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["aggregate"]["test"]["weighted_f1"]["mean"] <= 1


@pytest.mark.slow  # ~20 s: synth + MiniLM features + two trainings (run with -m slow)
def test_real_meld_text_export_import_trains_the_same(tmp_path, capsys, meld_csv):
    csv_dir = meld_csv
    cache, c = tmp_path / "cache", ["--cache-dir", str(tmp_path / "cache")]
    main(["synth", "meld", "--text-from", str(csv_dir), "--dialogues", "30", "--out", str(tmp_path / "corpus")])
    main(["prepare", "meld", "--root", str(tmp_path / "corpus"), "--name", "rm", *c])
    main(["features", "--dataset", "rm", "--only", "t", "--executor", "serial", "--no-progress", *c])
    main(["cache", "export", "--dataset", "rm", "--format", "mmgcn", "--out", str(tmp_path / "rm.pkl"), *c])
    main(["prepare", "pickle", "--root", str(tmp_path / "rm.pkl"), "--name", "rm2", *c])
    out = capsys.readouterr().out
    assert "meld-official" in out and "slot t" in out
    _same_datasets(cache, "rm", "rm2", ["t"])
    f1 = {}
    for name in ("rm", "rm2"):
        main(["train", "--model", "mlp", "--dataset", name, "--modalities", "t", "--seeds", "0", "--epochs", "3",
              "--device", "cpu", "--out", str(tmp_path / f"run-{name}"), *c])
        metrics = json.loads((tmp_path / f"run-{name}" / "metrics.json").read_text())
        f1[name] = metrics["aggregate"]["test"]["weighted_f1"]["mean"]
    assert f1["rm"] == f1["rm2"]
