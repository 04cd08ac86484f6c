"""HDF5 shards and the feature store: layouts, failures, atomic writes, lock, load, ls/verify/gc/du."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mer_pipe.cache.loading import load_table
from mer_pipe.cache import maintenance
from mer_pipe.cache import shard as shard_mod
from mer_pipe.cache.shard import read_shard, write_shard
from mer_pipe.cache.store import FeatureStore, default_root
from mer_pipe.common.errors import CacheError, ConfigError, FeaturesMissing

KEY = "0123456789abcdef"
KEY2 = "fedcba9876543210"
RNG = np.random.default_rng(0)


def _arrays(layout: str, n: int, d: int = 3) -> list[np.ndarray]:
    if layout == "pooled":
        return [RNG.standard_normal(d).astype(np.float32) for _ in range(n)]
    if layout == "sequence":
        return [RNG.standard_normal((4, d)).astype(np.float32) for _ in range(n)]
    return [RNG.standard_normal((i + 1, d)).astype(np.float32) for i in range(n)]


def _fill(store: FeatureStore, ds: str = "ds", ex: str = "enc", key: str = KEY, *, n_shards: int = 3,
          per: int = 2, layout: str = "pooled", fail: tuple[str, ...] = (), lock: str | None = "t") -> list:
    """Write a complete feature set; returns (ids, arrays) in manifest order."""
    store.write_spec(ds, ex, key, {"stage": "s", "version": "1", "n_shards": n_shards, "shard_size": per,
                                   "dim": 3, "layout": layout, "manifest_digest": "m" * 8})
    rows = []
    for i in range(n_shards):
        ids = [f"dia{i}_utt{j}" for j in range(per)]
        arrs = [None if u in fail else a for u, a in zip(ids, _arrays(layout, per))]
        write_shard(store.shard_path(ds, ex, key, i, n_shards), ids, arrs, {u: "no video" for u in fail},
                    attrs={"key": key})
        rows += list(zip(ids, arrs))
    if lock:
        store.set_lock(ds, lock, {"extractor": ex, "key": key, "dim": 3})
    return rows


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return FeatureStore(tmp_path / "cache")


# ---- shards ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["pooled", "sequence", "ragged"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_shard_round_trip(tmp_path, layout, dtype):
    ids = ["a", "b", "c", "ü-4"]
    arrs = _arrays(layout, 4)
    arrs[1] = None
    path = write_shard(tmp_path / "s.h5", ids, arrs, {"b": "audio stream missing"}, dtype=dtype,
                       attrs={"key": KEY, "provenance": {"h5py": h5py.__version__}, "n_frames": 4})
    sh = read_shard(path)
    assert sh.ids == ids and sh.layout == layout and sh.dim == 3 and len(sh) == 4
    assert sh.valid.tolist() == [True, False, True, True]
    assert sh.reasons == {"b": "audio stream missing"}
    assert sh.attrs["key"] == KEY and sh.attrs["provenance"] == {"h5py": h5py.__version__}
    assert sh.attrs["n"] == 4 and sh.attrs["dtype"] == dtype and sh.attrs["n_frames"] == 4
    tol = 1e-3 if dtype == "float16" else 0
    got = sh.values if layout == "ragged" else list(sh.values)
    for i, a in enumerate(arrs):
        assert got[i].dtype == np.dtype(dtype)
        if a is None:
            assert not np.any(got[i]) and (got[i].shape[0] == 0 if layout == "ragged" else True)
        else:
            np.testing.assert_allclose(got[i], a, atol=tol, rtol=tol)
    if layout == "sequence":
        assert sh.values.shape == (4, 4, 3)
    if layout == "pooled":
        assert sh.values.shape == (4, 3)
    if layout == "ragged":
        assert sh.offsets.tolist() == [0, 1, 1, 4, 8]
    assert sh.checksum() == sh.attrs["checksum"]
    assert not list(tmp_path.glob("*.tmp*"))


def test_shard_layout_hints(tmp_path):
    same_len = [np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)]
    assert read_shard(write_shard(tmp_path / "a.h5", ["x", "y"], same_len, {}, layout="ragged")).layout == "ragged"
    all_failed = write_shard(tmp_path / "b.h5", ["x"], [None], {"x": "missing file"}, layout="pooled", dim=3)
    sh = read_shard(all_failed)
    assert sh.values.shape == (1, 3) and not sh.valid.any()
    with pytest.raises(CacheError, match="requested layout 'pooled'"):
        write_shard(tmp_path / "c.h5", ["x"], [np.ones((2, 3))], {}, layout="pooled")


@pytest.mark.parametrize(
    "ids, arrays, reasons, kwargs, fragment",
    [
        (["a"], [None], {}, {}, "no features and no reason"),
        (["a", "a"], [np.ones(3), np.ones(3)], {}, {}, "appears twice"),
        (["a", "b"], [np.ones(3), np.ones(4)], {}, {}, "utterance 'b'.*dim"),
        (["a", "b"], [np.ones(3), np.ones((2, 3))], {}, {}, "mixes pooled"),
        (["a"], [np.ones((1, 2, 3))], {}, {}, "must be \\[D\\] or \\[T, D\\]"),
        (["a"], [np.ones(3)], {}, {"dim": 4}, "dim"),
        (["a"], [np.full(3, 1e6)], {}, {"dtype": "float16"}, "overflow float16"),
        (["a"], [np.ones(3)], {}, {"attrs": {"checksum": "x"}}, "reserved"),
        (["a"], [np.ones(3), np.ones(3)], {}, {}, "1 ids but 2 arrays"),
    ],
)
def test_write_shard_rejects_bad_input(tmp_path, ids, arrays, reasons, kwargs, fragment):
    with pytest.raises(CacheError, match=fragment):
        write_shard(tmp_path / "s.h5", ids, arrays, reasons, **kwargs)
    assert not list(tmp_path.iterdir())


def test_write_shard_bad_dtype(tmp_path):
    with pytest.raises(ConfigError, match="float32, float16"):
        write_shard(tmp_path / "s.h5", ["a"], [np.ones(3)], {}, dtype="float64")


def test_failed_write_leaves_nothing_and_keeps_old_shard(tmp_path, monkeypatch):
    path = write_shard(tmp_path / "s.h5", ["a"], [np.ones(3)], {})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(shard_mod, "content_checksum", boom)  # fails after the datasets are written
    with pytest.raises(RuntimeError, match="disk full"):
        write_shard(path, ["a"], [np.zeros(3)], {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    np.testing.assert_array_equal(read_shard(path).values, [[1, 1, 1]])


def test_crash_before_rename_leaves_only_a_temp_file(store):
    """A writer killed hard (no cleanup) leaves a *.tmp* file: never counted as a shard, removed by gc."""
    target = store.shard_path("ds", "enc", KEY, 0, 1)
    code = (
        "import os, numpy as np\n"
        "from mer_pipe.cache import shard\n"
        "os.replace = lambda a, b: os._exit(3)\n"
        f"shard.write_shard({str(target)!r}, ['a'], [np.ones(3)], {{}}, attrs={{'key': {KEY!r}}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert not target.exists()
    temps = list(target.parent.glob("*.tmp*"))
    assert len(temps) == 1
    assert store.existing_shards("ds", "enc", KEY, 1) == set()
    store.mark()  # written by any store write; write_shard alone is not one
    # the writer process is gone, so its temp file is stale even inside the grace period
    assert temps[0] in maintenance.gc(store, dry_run=True)
    maintenance.gc(store, dry_run=False, grace_s=1e9)
    assert not temps[0].exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_read_shard_unreadable_names_path(tmp_path, damage):
    path = write_shard(tmp_path / "s.h5", ["a", "b"], _arrays("pooled", 2), {})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not hdf5" * 100, "empty": b""}[damage])
    with pytest.raises(CacheError, match=r"s\.h5 is truncated or unreadable"):
        read_shard(path)
    with pytest.raises(CacheError, match="does not exist"):
        read_shard(tmp_path / "nope.h5")


# ---- store paths, spec, lock ----------------------------------------------------------------------
def test_paths_and_default_root(store, monkeypatch, tmp_path):
    assert store.shard_path("meld", "roberta", KEY, 3, 16) == store.root / "meld" / "roberta" / KEY / "shard-00003-of-00016.h5"
    monkeypatch.setenv("MER_PIPE_CACHE", str(tmp_path / "env"))
    assert default_root() == tmp_path / "env" and FeatureStore().root == tmp_path / "env"
    monkeypatch.delenv("MER_PIPE_CACHE")
    assert default_root() == Path.home() / ".cache" / "mer-pipe"
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ConfigError, match="not usable in the cache"):
            store.feature_dir(bad, "enc", KEY)
    with pytest.raises(ConfigError, match="out of range"):
        store.shard_path("ds", "enc", KEY, 16, 16)


def test_existing_shards_only_counts_complete_files(store):
    _fill(store, n_shards=4, lock=None)
    fdir = store.feature_dir("ds", "enc", KEY)
    (fdir / "shard-00001-of-00004.h5").unlink()
    (fdir / "shard-00001-of-00004.h5.tmp-host-1-abcd").write_bytes(b"partial")
    (fdir / "shard-00000-of-00008.h5").write_bytes(b"other sharding")
    assert store.existing_shards("ds", "enc", KEY, 4) == {0, 2, 3}
    assert store.existing_shards("ds", "enc", KEY2, 4) == set()


def test_spec_round_trip(store):
    store.write_spec("ds", "enc", KEY, {"stage": "text", "config": {"a": [1, 2]}, "n_shards": 2})
    spec = store.read_spec("ds", "enc", KEY)
    assert spec["config"] == {"a": [1, 2]} and spec["key"] == KEY and spec["extractor"] == "enc" and spec["created"]
    with pytest.raises(CacheError, match="does not match"):
        store.write_spec("ds", "enc", KEY, {"key": KEY2})
    with pytest.raises(CacheError, match="no spec.json"):
        store.read_spec("ds", "enc", KEY2)


def test_lock_round_trip(store):
    assert store.read_lock("ds") == {}
    _fill(store, lock=None)
    _fill(store, ex="other", key=KEY2, lock=None)
    store.set_lock("ds", "t", {"extractor": "enc", "key": KEY, "dim": 3, "layout": "pooled"})
    store.set_lock("ds", "a", {"extractor": "other", "key": KEY2, "dim": 3})
    lock = FeatureStore(store.root).read_lock("ds")
    assert lock == {"t": {"extractor": "enc", "key": KEY, "dim": 3, "layout": "pooled"},
                    "a": {"extractor": "other", "key": KEY2, "dim": 3}}
    assert json.loads(store.lock_path("ds").read_text()) == lock
    assert store.unset_lock("ds", "a") == {"t": lock["t"]}
    with pytest.raises(CacheError, match="lacks \\['dim'\\]"):
        store.set_lock("ds", "v", {"extractor": "enc", "key": KEY})
    with pytest.raises(CacheError, match="no such feature set"):
        store.set_lock("ds", "v", {"extractor": "enc", "key": KEY2, "dim": 3})
    store.lock_path("ds").write_text("[1, 2]")
    with pytest.raises(CacheError, match="malformed"):
        store.read_lock("ds")


def test_concurrent_set_lock_loses_no_slot(store):
    from concurrent.futures import ThreadPoolExecutor

    _fill(store, lock=None)
    slots = [f"s{i}" for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: store.set_lock("ds", s, {"extractor": "enc", "key": KEY, "dim": 3}), slots))
    assert sorted(store.read_lock("ds")) == sorted(slots)


# ---- load -----------------------------------------------------------------------------------------
def test_load_keeps_manifest_order_across_shards(store):
    rows = _fill(store, n_shards=4, per=3, fail=("dia2_utt1",))
    table = load_table(store, "ds", "t")
    assert table.ids == [u for u, _ in rows]
    assert table.values.shape == (12, 3) and table.values.dtype == np.float32
    for i, (_, a) in enumerate(rows):
        np.testing.assert_array_equal(table.values[i], np.zeros(3) if a is None else a)
    assert table.valid.tolist() == [a is not None for _, a in rows]
    assert table.reasons == {"dia2_utt1": "no video"} and table.n_failed == 1
    assert (table.extractor, table.key, table.dim, table.layout) == ("enc", KEY, 3, "pooled")
    assert table.index()["dia3_utt0"] == 9


@pytest.mark.parametrize("layout", ["sequence", "ragged"])
def test_load_sequence_and_ragged(store, layout):
    rows = _fill(store, layout=layout, fail=("dia0_utt1",))
    table = load_table(store, "ds", "t")
    assert table.layout == layout
    if layout == "sequence":
        assert table.values.shape == (6, 4, 3)
    else:
        assert isinstance(table.values, list) and table.values[1].shape == (0, 3)
    for got, (_, a) in zip(table.values, rows):
        if a is not None:
            np.testing.assert_array_equal(got, a)


def test_load_mixed_shards(store):
    """An all-failed shard has no shape information; sequence shards of different T become ragged."""
    store.write_spec("ds", "enc", KEY, {"n_shards": 3})
    write_shard(store.shard_path("ds", "enc", KEY, 0, 3), ["a"], [np.ones((4, 3))], {}, attrs={"key": KEY})
    write_shard(store.shard_path("ds", "enc", KEY, 1, 3), ["b"], [None], {"b": "x"}, attrs={"key": KEY})
    write_shard(store.shard_path("ds", "enc", KEY, 2, 3), ["c"], [np.ones((4, 3))], {}, attrs={"key": KEY})
    store.set_lock("ds", "v", {"extractor": "enc", "key": KEY, "dim": 3})
    table = load_table(store, "ds", "v")
    assert table.layout == "sequence" and table.values.shape == (3, 4, 3) and not table.values[1].any()
    write_shard(store.shard_path("ds", "enc", KEY, 2, 3), ["c"], [np.ones((5, 3))], {}, attrs={"key": KEY})
    table = load_table(store, "ds", "v")
    assert table.layout == "ragged" and [v.shape[0] for v in table.values] == [4, 0, 5]


def test_load_errors_are_structured_and_name_the_slot(store):
    # The cache says what is wrong and for which (dataset, slot); the pipeline adds the command (sealed boundary).
    with pytest.raises(FeaturesMissing, match="slot 't'") as exc:
        load_table(store, "ds", "t")
    assert (exc.value.dataset, exc.value.slot) == ("ds", "t") and "mer-pipe" not in str(exc.value)
    _fill(store, n_shards=3)
    store.shard_path("ds", "enc", KEY, 1, 3).unlink()
    with pytest.raises(FeaturesMissing, match=r"1 of 3 shards missing \(index 1\)"):
        load_table(store, "ds", "t")
    with pytest.raises(FeaturesMissing, match="locked slots: t"):
        load_table(store, "ds", "a")


def test_load_refuses_features_of_another_manifest(store):
    _fill(store)
    with pytest.raises(FeaturesMissing, match="another manifest"):
        load_table(store, "ds", "t", manifest_digest="new")
    assert len(load_table(store, "ds", "t", manifest_digest="m" * 8)) == 6


# ---- ls / verify / gc / du ------------------------------------------------------------------------
def test_ls_and_du(store):
    _fill(store, fail=("dia1_utt0",))
    _fill(store, ex="other", key=KEY2, n_shards=2, lock=None)
    store.shard_path("ds", "other", KEY2, 1, 2).unlink()
    infos = {i.key: i for i in maintenance.ls(store)}
    a, b = infos[KEY], infos[KEY2]
    assert (a.slots, a.dim, a.layout, a.utterances, a.failures, a.shards_present, a.shards_expected) == (
        ("t",), 3, "pooled", 6, 1, 3, 3)
    assert a.complete and not b.complete and b.slots == () and b.shards_present == 1 and a.bytes > 0
    assert a.row()["shards"] == "3/3" and a.row()["slots"] == "t"
    assert maintenance.ls(store, "missing-ds") == []
    usage = maintenance.du(store)
    sets = {(u.extractor, u.key): u for u in usage}
    assert sets[("enc", KEY)].locked and not sets[("other", KEY2)].locked
    assert sets[(None, None)].bytes >= a.bytes + b.bytes
    assert sets[(None, None)].row()["extractor"] == "(total)"


def test_verify_clean_store_has_no_problems(store):
    _fill(store, layout="ragged")
    assert maintenance.verify(store) == []


def test_verify_detects_damage(store):
    _fill(store, n_shards=4)
    _fill(store, key=KEY2, n_shards=1, lock=None)
    # truncation
    p0 = store.shard_path("ds", "enc", KEY, 0, 4)
    p0.write_bytes(p0.read_bytes()[:300])
    # an altered value (file still perfectly readable)
    with h5py.File(store.shard_path("ds", "enc", KEY, 1, 4), "r+") as f:
        f["values"][0, 0] += 1.0
    # a shard copied in from another key
    foreign = store.shard_path("ds", "enc", KEY2, 0, 1).read_bytes()
    store.shard_path("ds", "enc", KEY, 2, 4).write_bytes(foreign)
    # a missing shard, a stray shard and a lock to nowhere
    store.shard_path("ds", "enc", KEY, 3, 4).unlink()
    (store.feature_dir("ds", "enc", KEY) / "shard-00000-of-00002.h5").write_bytes(b"")
    lock = store.read_lock("ds")
    lock["a"] = {"extractor": "gone", "key": KEY, "dim": 3}
    store.lock_path("ds").write_text(json.dumps(lock))
    (store.feature_dir("ds", "enc", KEY2) / "spec.json").unlink()

    found = {(p.kind, p.path.name) for p in maintenance.verify(store)}
    assert found == {
        ("unreadable", "shard-00000-of-00004.h5"),
        ("checksum", "shard-00001-of-00004.h5"),
        ("key-mismatch", "shard-00002-of-00004.h5"),
        ("missing-shard", "shard-00003-of-00004.h5"),
        ("stray-shard", "shard-00000-of-00002.h5"),
        ("missing-spec", "spec.json"),
        ("dangling-lock", "lock.json"),
    }
    assert all(p.fix and p.message for p in maintenance.verify(store, "ds"))


def test_gc_dry_run_then_real(store):
    _fill(store)  # locked: kept
    _fill(store, key=KEY2, lock=None)  # unlocked: collected
    _fill(store, ex="lonely", key=KEY2, lock=None)
    keep_other = store.dataset_dir("ds") / "reports"
    keep_other.mkdir()
    (keep_other / "r.json").write_text("{}")  # not a feature set: gc must never touch it
    stale_tmp = store.dataset_dir("ds") / "lock.json.tmp-otherhost-1-abcd"
    stale_tmp.write_text("{")
    old = time.time() - 3600  # older than the default grace period
    for d in (store.feature_dir("ds", "enc", KEY2), store.feature_dir("ds", "lonely", KEY2)):
        for p in [*d.iterdir(), d]:
            os.utime(p, (old, old))
    os.utime(stale_tmp, (old, old))

    victims = maintenance.gc(store)
    assert victims == sorted([store.feature_dir("ds", "enc", KEY2), store.feature_dir("ds", "lonely", KEY2), stale_tmp])
    assert all(p.exists() for p in victims)  # dry run by default: deletes nothing
    assert maintenance.gc(store, dry_run=False) == victims
    assert not any(p.exists() for p in victims)
    assert not (store.dataset_dir("ds") / "lonely").exists()  # emptied extractor folder goes too
    assert (keep_other / "r.json").exists()
    assert len(load_table(store, "ds", "t")) == 6
    assert maintenance.gc(store, dry_run=True, grace_s=0) == []


def test_gc_spares_recent_unlocked_sets(store):
    _fill(store, lock=None)  # just written, e.g. by a feature run that has not set its lock yet
    assert maintenance.gc(store, dry_run=True) == []
    assert maintenance.gc(store, dry_run=True, grace_s=0) == [store.feature_dir("ds", "enc", KEY)]


def test_temp_pattern_matches_the_writers_names_and_nothing_else():
    from mer_pipe.cache.collect import is_temp
    from mer_pipe.common.files import temp_name

    assert is_temp(temp_name("shard-00000-of-00001.h5")) and is_temp("lock.json.tmp-otherhost-1-abcd")
    for name in ("notes.tmp-draft", "x.tmp", "a.tmp-host-pid-zz", ".tmp-host-1-abcd", "spec.json"):
        assert not is_temp(name), name


def test_gc_refuses_an_unmarked_root_and_marks_on_write(tmp_path):
    from mer_pipe.cache.collect import UnmarkedCache
    from mer_pipe.cache.store import MARKER_FILE

    store = FeatureStore(tmp_path / "c")
    with pytest.raises(UnmarkedCache, match="not marked"):
        maintenance.gc(store)
    _fill(store)
    assert json.loads((tmp_path / "c" / MARKER_FILE).read_text())["format"] == 1
    assert maintenance.gc(store, grace_s=0) == []


def test_recover_layout_takes_the_sharding_of_sound_shards_and_drops_the_rest(store):
    from mer_pipe.cache.recovery import recover_layout

    fdir = store.feature_dir("ds", "enc", KEY)
    for i in range(3):  # 5 utterances in shards of 2
        ids = [f"u{j}" for j in range(2 * i, min(2 * i + 2, 5))]
        write_shard(fdir / f"shard-{i:05d}-of-00003.h5", ids, [np.ones(3)] * len(ids), {},
                    attrs={"key": KEY, "n_shards": 3, "shard_index": i, "start": 2 * i})
    write_shard(fdir / "shard-00000-of-00001.h5", ["u0"], [np.ones(3)], {}, attrs={"key": KEY2, "n_shards": 1,
                                                                                 "shard_index": 0, "start": 0})
    (fdir / "shard-00001-of-00002.h5").write_bytes(b"garbage")
    layout, dropped = recover_layout(store, "ds", "enc", KEY, 5)
    assert layout == (2, 3)
    assert [p.name for p in dropped] == ["shard-00000-of-00001.h5", "shard-00001-of-00002.h5"]
    assert sorted(p.name for p in fdir.iterdir()) == [f"shard-{i:05d}-of-00003.h5" for i in range(3)]
