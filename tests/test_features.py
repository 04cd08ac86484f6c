"""The staged feature run with the serial executor: plan, keys, resume, failures, strict, presets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.cache.loading import load_table
from mer_pipe.cache.store import FeatureStore
from mer_pipe.common.errors import ConfigError, MediaError, ModelLoadError
from mer_pipe.pipeline.executors import ExecutorConfig
from mer_pipe.pipeline.extract.run import extract_features
from mer_pipe.pipeline.extract.plan import make_plan, shard_bounds, write_new_specs
from mer_pipe.pipeline.extract.presets import SlotSpec, parse_override, resolve_slots
from mer_pipe.pipeline.extract.progress import reason_category

DATASET = "synth-meld"
SERIAL = ExecutorConfig("serial")
# Planted faults that break decoding (the others are caught by prepare, see faults.json "detect").
MEDIA_FAULTS = ("no_audio_clip", "truncated_clip", "missing_clip")


def faults(prepared: Path) -> dict[str, str]:
    rows = json.loads((prepared / "corpus" / "faults.json").read_text())["faults"]
    return {r["id"]: r["kind"] for r in rows if r["kind"] in MEDIA_FAULTS}


def slots(cache: Path, only: str = "t,a") -> list[SlotSpec]:
    return resolve_slots("offline", only=only, overrides=["t.model=tiny:text"], cache_root=cache)


def shard_files(cache: Path) -> list[Path]:
    return sorted((cache / DATASET).glob("*/*/shard-*.h5"))


def test_serial_run_locks_slots_and_records_media_failures(prepared, fresh_cache):
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    cache = fresh_cache
    summary = extract_features(DATASET, slots(cache), cache_dir=cache, executor=SERIAL, shard_size=8, progress=False)
    _, utts = load_dataset(DATASET, cache)
    ids = [u.id for u in utts]
    store = FeatureStore(cache)
    assert set(store.read_lock(DATASET)) == {"t", "a"}
    text, audio = load_table(store, DATASET, "t"), load_table(store, DATASET, "a")
    assert text.ids == ids and audio.ids == ids  # manifest order, each utterance exactly once
    assert text.valid.all() and text.values.shape == (len(ids), text.dim)
    planted = faults(prepared)
    bad = {u for u in ids if not audio.valid[ids.index(u)]}
    assert bad == {u for u, k in planted.items() if u in ids}
    assert all(audio.reasons[u] for u in bad) and audio.values.shape == (len(ids), 88)
    assert np.isfinite(audio.values[audio.valid]).all() and np.abs(audio.values[audio.valid]).sum() > 0
    st = {s.extractor: s for s in summary.stages.values()}
    assert st["opensmile"].n_failed == len(bad) and st["text-hf"].n_failed == 0
    assert sum(st["opensmile"].failures.values()) == len(bad)
    assert summary.items == 2 * len(ids) and summary.bytes > 0
    n_shards = len(shard_bounds(len(ids), 8))
    assert len(shard_files(cache)) == 2 * n_shards
    spec = store.read_spec(DATASET, "opensmile", audio.key)
    assert spec["shard_size"] == 8 and spec["n_shards"] == n_shards and spec["n_failed"] == len(bad)
    assert "failed" in summary.format()


def test_second_run_submits_nothing_and_deleted_shard_is_the_only_one_recomputed(fresh_cache):
    from mer_pipe.cache.shard import read_shard
    from mer_pipe.cache.store import FeatureStore

    cache = fresh_cache
    extract_features(DATASET, slots(cache), cache_dir=cache, executor=SERIAL, shard_size=8, progress=False)
    before = load_table(FeatureStore(cache), DATASET, "t").values.copy()
    again = extract_features(DATASET, slots(cache), cache_dir=cache, executor=SERIAL, progress=False)
    assert again.submitted_shards == 0 and again.items == 0
    assert "everything was cached" in again.format()

    victim = [p for p in shard_files(cache) if "text-hf" in str(p)][2]
    victim.unlink()
    others = {p: p.stat().st_mtime_ns for p in shard_files(cache)}
    third = extract_features(DATASET, slots(cache), cache_dir=cache, executor=SERIAL, progress=False)
    assert third.submitted_shards == 1 and third.items == read_shard(victim, values=False).attrs["n"]
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())  # nothing else was rewritten
    np.testing.assert_array_equal(load_table(FeatureStore(cache), DATASET, "t").values, before)


def test_keys_ignore_run_settings_and_follow_config(fresh_cache):
    cache = fresh_cache
    # the shard layout recorded in spec.json (written once the run holds the set's lock) wins over a later
    # --shard-size; planning itself writes nothing
    plan = make_plan(DATASET, slots(cache, "t"), cache_dir=cache, shard_size=5)
    assert plan.stages[0].shard_size == 5
    spec_file = FeatureStore(cache).feature_dir(DATASET, plan.stages[0].extractor, plan.stages[0].key) / "spec.json"
    assert not spec_file.exists() and plan.stages[0].new_spec
    assert write_new_specs(plan) and spec_file.is_file()
    plan2 = make_plan(DATASET, slots(cache, "t"), cache_dir=cache, shard_size=50)
    assert plan2.stages[0].shard_size == 5 and len(plan2.tasks) == plan.stages[0].n_shards
    k1 = make_plan(DATASET, slots(cache, "t"), cache_dir=cache).stages[0].key
    batchy = resolve_slots("offline", only="t", overrides=["t.model=tiny:text", "t.batch_size=3"], cache_root=cache)
    assert make_plan(DATASET, batchy, cache_dir=cache).stages[0].key == k1
    pooled = resolve_slots("offline", only="t", overrides=["t.model=tiny:text", "t.pooling=cls"], cache_root=cache)
    assert make_plan(DATASET, pooled, cache_dir=cache).stages[0].key != k1


def test_two_slots_with_one_config_share_a_stage(fresh_cache):
    cache = fresh_cache
    specs = resolve_slots("offline", only="t,t2", overrides=["t.model=tiny:text", "t2.extractor=text-hf",
                                                            "t2.model=tiny:text"], cache_root=cache)
    plan = make_plan(DATASET, specs, cache_dir=cache)
    assert len(plan.stages) == 1 and plan.stages[0].slots == ("t", "t2")


def test_strict_stops_at_first_media_failure_and_keeps_completed_work(prepared, fresh_cache):
    from mer_pipe.cache.store import FeatureStore

    cache = fresh_cache
    with pytest.raises(MediaError) as err:
        extract_features(DATASET, slots(cache, "t,a"), cache_dir=cache, executor=SERIAL, strict=True,
                         shard_size=8, progress=False)
    msg = str(err.value)
    print(msg)
    from mer_pipe.pipeline.corpus.manifest import load_dataset

    first_bad = next(u.id for u in load_dataset(DATASET, cache)[1] if u.id in faults(prepared))
    assert first_bad in msg and ".mp4" in msg and "--strict" in msg
    store = FeatureStore(cache)
    assert set(store.read_lock(DATASET)) == {"t"}  # the text stage completed before audio failed
    assert load_table(store, DATASET, "t").valid.all()


def test_unloadable_model_gets_one_clear_message(fresh_cache):
    cache = fresh_cache
    specs = resolve_slots("paper", only="t", cache_root=cache)
    with pytest.raises(ModelLoadError) as err:
        extract_features(DATASET, specs, cache_dir=cache, executor=SERIAL, progress=False)
    msg = str(err.value)
    print(msg)
    assert "roberta-large" in msg and "--set t.model=" in msg
    missing = resolve_slots("offline", only="v", overrides=["v.model=/nonexistent/swin"], cache_root=cache)
    with pytest.raises(ModelLoadError, match="/nonexistent/swin"):
        make_plan(DATASET, missing, cache_dir=cache)


def test_presets_overrides_and_only(tmp_path):
    specs = resolve_slots("offline", only="a,t", overrides=["a.feature_set=ComParE_2016", "t.max_length=64"],
                          cache_root=tmp_path)
    assert [s.slot for s in specs] == ["a", "t"]
    assert specs[0].config == {"feature_set": "ComParE_2016"} and specs[1].config["max_length"] == 64
    assert parse_override("v.model=/a/b=c") == ("v", "model", "/a/b=c")
    assert parse_override("t.normalize=true")[2] is True
    assert parse_override("t.revision=null")[2] is None
    with pytest.raises(ConfigError, match="SLOT.KEY=VALUE"):
        parse_override("model=/x")
    with pytest.raises(ConfigError, match="choose from: t, a, v, a_w2v"):
        resolve_slots("offline", only="t,x", cache_root=tmp_path)
    with pytest.raises(ConfigError, match="offline, paper"):
        resolve_slots("nope", cache_root=tmp_path)
    with pytest.raises(ConfigError, match="--set x.extractor"):
        resolve_slots("offline", overrides=["x.model=y"], cache_root=tmp_path)
    paper = resolve_slots("paper", cache_root=tmp_path)
    assert {s.slot: s.extractor for s in paper} == {"t": "text-hf", "a": "opensmile", "a_w2v": "wav2vec2", "v": "swin"}
    assert not (tmp_path / "_weights").exists()  # the paper preset builds no tiny checkpoints


def test_bad_run_options_name_the_option(fresh_cache):
    cache = fresh_cache
    with pytest.raises(ConfigError, match="--device"):
        extract_features(DATASET, slots(cache, "t"), cache_dir=cache, executor=SERIAL, device="tpu")
    with pytest.raises(ConfigError, match="--executor"):
        ExecutorConfig("threads")
    with pytest.raises(ConfigError, match="--scheduler"):
        ExecutorConfig("serial", scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="unknown option"):
        extract_features(DATASET, resolve_slots("offline", only="t", overrides=["t.modle=x"], cache_root=cache),
                         cache_dir=cache, executor=SERIAL)


def test_reason_category_strips_paths_and_details():
    assert reason_category("/c/dia1_utt2.mp4: no audio stream (streams: video:h264); point the manifest") == \
        "no audio stream"
    assert reason_category("/c/x.mp4: cannot open (InvalidDataError: moov atom); file is truncated") == "cannot open"
    assert reason_category("manifest row has no audio file (it was missing)") == "manifest row has no audio file"
