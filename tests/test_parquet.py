"""`cache export --format parquet` and `prepare parquet`: readers, metadata, round trip, refusals."""
import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from test_train import DATASET, build_synth_features  # shared, built once per session


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    torch.set_num_threads(1)
    return build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")


@pytest.fixture(scope="module")
def exported(cache, tmp_path_factory):
    from mer_pipe.pipeline.interop.parquet import export_parquet

    out = tmp_path_factory.mktemp("pq") / "synth.parquet"
    export_parquet(DATASET, out, cache_dir=cache)
    return out


def _meta(path):
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(str(path)).metadata[b"mer_pipe"])


def test_pandas_and_pyarrow_read_the_columns_and_metadata(cache, exported):
    import pandas as pd

    from mer_pipe.cache.loading import load_table
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    df = pd.read_parquet(exported)
    info, utts = load_dataset(DATASET, cache)
    assert list(df["id"]) == [u.id for u in utts]
    assert {"dialogue_id", "index", "speaker", "split", "label", "valid", "failure_reason"} <= set(df.columns)
    meta = _meta(exported)
    store = FeatureStore(cache)
    lock = store.read_lock(DATASET)
    assert set(meta["slots"]) == set(lock) == {"t", "a", "v"}
    assert meta["manifest_digest"] == info["manifest_digest"] and meta["label_names"] == info["label_names"]
    for slot, entry in lock.items():
        s = meta["slots"][slot]
        assert s["lock"]["key"] == entry["key"] and s["spec"]["config"] and s["spec"]["provenance"]
        table = load_table(store, DATASET, slot)
        got = np.stack([np.asarray(x.tolist() if x.dtype == object else x, dtype=np.float32) for x in df[slot]])
        assert np.array_equal(got, np.asarray(table.values)), slot  # pooled [N, D] and frames [N, T, D] alike
        assert df[f"{slot}_valid"].all() and df[f"{slot}_reason"].isna().all()


def test_datasets_loads_it(exported, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(exported), split="train", cache_dir=str(tmp_path / "hf"))
    row = ds[0]
    assert np.asarray(row["v"]).ndim == 2 and len(row["t"]) == _meta(exported)["slots"]["t"]["lock"]["dim"]


def test_import_keeps_keys_and_trains_the_same(cache, exported, capsys):
    import shutil

    from mer_pipe.cache.maintenance import verify
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.pipeline import api

    code, out, err = run_cli(["prepare", "parquet", "--root", exported.parent, "--name", "synth-pq", "--cache-dir", cache], capsys)
    assert code == 0, err
    store = FeatureStore(cache)
    src, imp = store.read_lock(DATASET), store.read_lock("synth-pq")
    assert imp == src  # same extractors, keys, dims, layouts
    for slot, e in imp.items():
        spec = store.read_spec("synth-pq", e["extractor"], e["key"])
        ref = store.read_spec(DATASET, e["extractor"], e["key"])
        assert spec["config"] == ref["config"] and spec["provenance"] == ref["provenance"] and spec["imported_from"]
    assert verify(store, "synth-pq") == []
    scores = []
    for ds in (DATASET, "synth-pq"):
        cfg = api.train_config("bigru", ds, seeds="0", epochs=3, sets=["model.hidden=16"], device="cpu")
        res = api.train(config=cfg, out=exported.parent / f"run-{ds}", cache_dir=cache, log=lambda s: None, progress=False)
        scores.append(res.metrics["aggregate"]["test"]["weighted_f1"]["mean"])
    assert scores[0] == scores[1]
    # runs compare: two dataset names, one manifest -> comparable, and it says which feature keys differ
    runs = [exported.parent / f"run-{ds}" for ds in (DATASET, "synth-pq")]
    code, out, err = run_cli(["runs", "compare", *runs], capsys)
    assert code == 0, err
    assert f"A is on dataset {DATASET!r} and B on 'synth-pq', prepared from the same manifest" in out
    assert "feature keys differ" not in out and "A and B tie" in out
    cfg = api.train_config("bigru", "synth-pq", modalities="t,a", seeds="0", epochs=1, device="cpu")
    api.train(config=cfg, out=exported.parent / "run-ta", cache_dir=cache, log=lambda s: None, progress=False)
    code, out, err = run_cli(["runs", "compare", runs[0], exported.parent / "run-ta"], capsys)
    assert code == 0, err
    assert f"feature keys differ: v: swin {src['v']['key']} (A) vs not used (B)" in out
    other = exported.parent / "run-other-manifest"  # same ids and labels, another manifest: refused
    shutil.copytree(runs[1], other)
    met = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps({**met, "manifest_digest": "0" * 64}))
    code, out, err = run_cli(["runs", "compare", runs[0], other], capsys)
    assert code == 2 and "different manifests" in err and err.count("\n") == 1, err


def _rewrite(src, dest, edit):
    import pyarrow.parquet as pq

    table = pq.read_table(str(src))
    pq.write_table(edit(table), str(dest))
    return dest


def test_failed_rows_travel(cache, exported, tmp_path):
    import pyarrow as pa

    from mer_pipe.cache.loading import load_table
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.pipeline.interop.parquet_import import import_parquet

    def fail_row_3(t):
        a = t.column("a").to_pylist()
        a[3] = None
        t = t.set_column(t.schema.get_field_index("a"), "a", pa.array(a, type=t.schema.field("a").type))
        for name, val in (("a_valid", False), ("a_reason", "x.wav: no audio stream")):
            col = t.column(name).to_pylist()
            col[3] = val
            t = t.set_column(t.schema.get_field_index(name), name, pa.array(col, type=t.schema.field(name).type))
        return t

    path = _rewrite(exported, tmp_path / "failed.parquet", fail_row_3)
    import_parquet(path, name="synth-fail", cache_dir=cache)
    table = load_table(FeatureStore(cache), "synth-fail", "a")
    assert not table.valid[3] and table.reasons[table.ids[3]] == "x.wav: no audio stream" and table.valid.sum() == len(table) - 1


@pytest.mark.parametrize("case, words", [
    ("no-column", "column(s) t_valid missing"),
    ("no-metadata", "no 'mer_pipe' key-value metadata"),
    ("edited-rows", "do not match the metadata's manifest digest"),
    ("bad-width", "the metadata says dim"),
    ("not-parquet", "not a readable Parquet file"),
])
def test_mismatching_files_are_refused_in_one_line(cache, exported, tmp_path, case, words, capsys):
    import pyarrow as pa

    path = tmp_path / "bad.parquet"
    if case == "no-column":
        _rewrite(exported, path, lambda t: t.drop_columns(["t_valid"]))
    elif case == "no-metadata":
        _rewrite(exported, path, lambda t: t.replace_schema_metadata({}))
    elif case == "edited-rows":
        def edit(t):
            text = t.column("text").to_pylist()
            text[0] += " (edited)"
            return t.set_column(t.schema.get_field_index("text"), "text", pa.array(text))
        _rewrite(exported, path, edit)
    elif case == "bad-width":
        def edit(t):
            a = t.column("a").to_pylist()
            a[0] = a[0][:-1]
            return t.set_column(t.schema.get_field_index("a"), "a", pa.array(a, type=t.schema.field("a").type))
        _rewrite(exported, path, edit)
    else:
        path.write_bytes(b"not parquet at all")
    code, out, err = run_cli(["prepare", "parquet", "--root", path, "--name", "bad", "--cache-dir", cache], capsys)
    assert code == 2 and err.startswith("mer-pipe: error:") and err.count("\n") == 1 and words in err, err


def test_import_never_replaces_a_prepared_corpus(cache, exported, capsys):
    code, out, err = run_cli(["prepare", "parquet", "--root", exported, "--name", DATASET, "--cache-dir", cache], capsys)
    assert code == 2 and err.count("\n") == 1 and "prepared by recipe 'meld'" in err and "--name" in err


def test_existing_out_needs_overwrite(cache, exported, capsys):
    argv = ["cache", "export", "--dataset", DATASET, "--format", "parquet", "--out", exported, "--cache-dir", cache]
    before = exported.read_bytes()
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err and exported.read_bytes() == before
    code, out, err = run_cli([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert "wrote" in out and _meta(exported)["dataset"] == DATASET
