"""The fine-tune stage (pipeline/extract/finetune.py): keys and the DAG edge, leakage guard, no repeated
work, SIGKILL safety and resume, cross-fitting, cache ls/verify/gc, and that fine-tuning helps.

Every test fine-tunes the tiny random BERT (`tiny:text`, built by extractors/tiny.py with
save_pretrained) through the same code path as real weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.cache.checkpoints import checkpoint_dir, is_complete, work_dir
from mer_pipe.cache.loading import load_table
from mer_pipe.cache.store import FeatureStore
from mer_pipe.common.errors import ConfigError
from mer_pipe.pipeline.corpus.manifest import load_dataset
from mer_pipe.pipeline.executors import ExecutorConfig
from mer_pipe.pipeline.extract.finetune import labels_digest
from mer_pipe.pipeline.extract.finetune_plan import format_plan, needed_stages
from mer_pipe.pipeline.extract.plan import make_plan
from mer_pipe.pipeline.extract.presets import resolve_slots
from mer_pipe.pipeline.extract.run import extract_features

DATASET = "synth-meld"
SERIAL = ExecutorConfig("serial")
FT = ["t.model=tiny:text", "t.finetune=true", "t.finetune.epochs=2", "t.finetune.batch_size=8",
      "t.finetune.lr=1e-3", "t.finetune.max_length=32"]


def _slots(cache: Path, extra: list[str] = (), only: str = "t"):
    return resolve_slots("offline", only=only, overrides=[*FT, *extra], cache_root=cache)


def _run(cache: Path, extra: list[str] = (), only: str = "t"):
    return extract_features(DATASET, _slots(cache, extra, only), cache_dir=cache, executor=SERIAL, device="cpu",
                            progress=False)


def _plan(cache: Path, extra: list[str] = (), only: str = "t"):
    return make_plan(DATASET, _slots(cache, extra, only), cache_dir=cache)


def _features(cache: Path, slot: str = "t") -> tuple[str, np.ndarray]:
    store = FeatureStore(cache)
    tab = load_table(store, DATASET, slot)
    return tab.key, np.asarray(tab.values)


def _relabel(cache: Path, split: str, dataset: str = DATASET) -> str:
    """Change the label of the first labelled utterance of `split` in the prepared manifest (labels are
    not part of the manifest digest, so the dataset stays valid); returns its id."""
    info, utts = load_dataset(dataset, cache)
    names = info["label_names"]
    path = cache / dataset / "manifest.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        if r["split"] == split and r["label_id"] is not None:
            new = (r["label_id"] + 1) % len(names)
            r["label_id"], r["label"] = new, names[new]
            path.write_text("".join(json.dumps(x) + "\n" for x in rows))
            return r["id"]
    raise AssertionError(f"no labelled {split} utterance")


def test_finetuned_slot_is_an_upstream_stage_with_its_own_key(fresh_cache):
    plan = _plan(fresh_cache)
    (ft,) = plan.finetunes
    (stage,) = plan.stages
    assert stage.spec["upstream"] == ft.key and not ft.complete
    assert [st.key for st in needed_stages(plan)] == [ft.key]
    text = format_plan(plan)
    assert f"finetune t (tiny-text, 2 ep) [train] {ft.key[:8]} ->" in text
    assert f"extract t (text-hf) {stage.key[:8]} [1/1 shards to compute]" in text
    # the frozen slot is a different feature set; a fine-tune setting re-keys both stages
    frozen = make_plan(DATASET, resolve_slots("offline", only="t", overrides=["t.model=tiny:text"],
                                              cache_root=fresh_cache), cache_dir=fresh_cache)
    assert frozen.stages[0].key != stage.key and not frozen.finetunes
    other = _plan(fresh_cache, ["t.finetune.lr=5e-4"])
    assert other.finetunes[0].key != ft.key and other.stages[0].key != stage.key
    # options are typed and named in errors
    with pytest.raises(ConfigError, match=r"t\.finetune\.epochs"):
        _plan(fresh_cache, ["t.finetune.epochs=0"])
    with pytest.raises(ConfigError, match=r"t\.finetune\.nope.*choose|nope"):
        _plan(fresh_cache, ["t.finetune.nope=1"])
    with pytest.raises(ConfigError, match="video stays frozen"):
        make_plan(DATASET, resolve_slots("offline", only="v", overrides=["v.finetune=true"], cache_root=fresh_cache),
                  cache_dir=fresh_cache)
    # t.finetune=false switches it off again
    off = _plan(fresh_cache, ["t.finetune=false"])
    assert not off.finetunes and off.stages[0].key == frozen.stages[0].key


def test_leakage_guard_test_labels_never_matter_train_labels_do(prepared, fresh_cache, tmp_path):
    import shutil

    _run(fresh_cache)
    key0, feats0 = _features(fresh_cache)
    ft0 = _plan(fresh_cache).finetunes[0].key

    # a TEST label changes: same fine-tune key, same feature key, nothing to do ...
    _relabel(fresh_cache, "test")
    plan = _plan(fresh_cache)
    assert plan.finetunes[0].key == ft0 and plan.stages[0].key == key0 and plan.stages[0].complete
    # ... and fine-tuning from scratch with the changed test label gives bit-identical features
    other = tmp_path / "other"
    shutil.copytree(fresh_cache, other)
    shutil.rmtree(other / DATASET / "finetune")
    shutil.rmtree(other / DATASET / "text-hf")
    (other / DATASET / "lock.json").unlink()
    summary = _run(other)
    assert sum(s.computed_shards for s in summary.stages.values()) == 1
    key1, feats1 = _features(other)
    assert key1 == key0 and np.array_equal(feats1, feats0)

    # a TRAIN label changes: a new fine-tune key, new features
    _relabel(fresh_cache, "train")
    plan = _plan(fresh_cache)
    assert plan.finetunes[0].key != ft0 and plan.stages[0].key != key0 and not plan.stages[0].complete
    _run(fresh_cache)
    key2, feats2 = _features(fresh_cache)
    assert key2 == plan.stages[0].key and not np.allclose(feats2, feats0)


def test_labels_digest_ignores_test_labels(prepared):
    import dataclasses

    _, utts = load_dataset(DATASET, prepared / "cache")
    train = [u.id for u in utts if u.split == "train"]
    dev = [u.id for u in utts if u.split == "dev"]
    d0 = labels_digest(utts, train, dev)
    flip = [dataclasses.replace(u, label_id=(u.label_id or 0) + 1) if u.split == "test" else u for u in utts]
    assert labels_digest(flip, train, dev) == d0
    moved = [dataclasses.replace(u, split="dev") if u.id == train[0] else u for u in utts]
    assert labels_digest(moved, train, dev) != d0  # the split assignment is part of it


def test_second_run_trains_and_extracts_nothing_and_other_slots_stay(fresh_cache, capsys):
    first = _run(fresh_cache, only="t,a_w2v")
    assert sum(s.computed_shards for s in first.stages.values()) == 2
    store = FeatureStore(fresh_cache)
    ckpt = Path(_plan(fresh_cache, only="t,a_w2v").finetunes[0].path)
    stamp = (ckpt / "finetune.json").stat().st_mtime_ns
    w2v_key = store.read_lock(DATASET)["a_w2v"]["key"]
    capsys.readouterr()

    again = _run(fresh_cache, only="t,a_w2v")
    assert sum(s.computed_shards for s in again.stages.values()) == 0
    assert (ckpt / "finetune.json").stat().st_mtime_ns == stamp
    assert "training on" not in capsys.readouterr().err

    # a fine-tune setting changes: the text fine-tune and its features recompute, a_w2v does not
    changed = _run(fresh_cache, ["t.finetune.seed=1"], only="t,a_w2v")
    by_slot = {s.slots: s for s in changed.stages.values()}
    assert by_slot[("t",)].computed_shards == 1 and by_slot[("a_w2v",)].computed_shards == 0
    assert store.read_lock(DATASET)["a_w2v"]["key"] == w2v_key
    assert "training on" in capsys.readouterr().err


def test_cache_ls_verify_gc_know_checkpoints(fresh_cache):
    from mer_pipe.cache import checkpoints

    store = FeatureStore(fresh_cache)
    _run(fresh_cache)
    first = _plan(fresh_cache).finetunes[0].key
    _run(fresh_cache, ["t.finetune.seed=1"])  # the lock moves to a second fine-tune
    second = _plan(fresh_cache, ["t.finetune.seed=1"]).finetunes[0].key
    rows = {c.key: c for c in checkpoints.ls(store, DATASET)}
    assert set(rows) == {first, second} and rows[second].used_by and not rows[first].used_by
    assert rows[second].row()["dev W-F1"] != "-"
    assert checkpoints.verify(store, DATASET) == []
    # gc: the checkpoint of the locked feature set stays, however old; the unused one goes
    victims = checkpoints.gc_victims(store, grace_s=0)
    assert checkpoint_dir(store, DATASET, first) in victims
    assert checkpoint_dir(store, DATASET, second) not in victims
    assert set(checkpoints.remove(victims, store.root)) >= set(victims)
    assert is_complete(checkpoint_dir(store, DATASET, second)) and not checkpoint_dir(store, DATASET, first).exists()
    # verify notices altered weights
    (checkpoint_dir(store, DATASET, second) / "classifier_head.pt").write_bytes(b"garbage")
    assert [p.kind for p in checkpoints.verify(store, DATASET)] == ["checksum"]


def test_cli_prints_the_dag_and_cache_ls_lists_checkpoints(fresh_cache, capsys):
    from mer_pipe.pipeline.cli import main

    args = ["features", "-d", DATASET, "--cache-dir", str(fresh_cache), "--only", "t", "--executor", "serial",
            "--no-progress", *[x for s in FT for x in ("--set", s)], "--set", "t.finetune.epochs=1"]
    main(args)
    out = capsys.readouterr()
    assert "finetune t (tiny-text, 1 ep) [train]" in out.out and "extract t (text-hf)" in out.out
    assert "epoch 1/1: train loss" in out.err and "dev W-F1" in out.err
    main(args)
    out = capsys.readouterr()
    assert "[cached]" in out.out and "training on" not in out.err and "everything was cached" in out.out
    main(["cache", "ls", "--cache-dir", str(fresh_cache)])
    listing = capsys.readouterr().out
    assert "fine-tuned checkpoints:" in listing and "tiny-text" in listing
    main(["cache", "verify", "--cache-dir", str(fresh_cache)])
    assert "1 fine-tuned checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["features", "-d", DATASET, "--cache-dir", str(fresh_cache), "--only", "t", "--executor", "serial",
              "--set", "t.finetune.context=-1"])
    assert exit_.value.code == 2 and "t.finetune.context" in capsys.readouterr().err


def test_sigkill_during_finetune_leaves_nothing_usable_and_rerun_resumes(fresh_cache, capsys):
    extra = ["t.finetune.epochs=40"]
    plan = _plan(fresh_cache, extra)
    key = plan.finetunes[0].key
    store = FeatureStore(fresh_cache)
    state = work_dir(store, DATASET, key) / "state.pt"
    cmd = [str(Path(sys.executable).parent / "mer-pipe"), "features", "-d", DATASET, "--cache-dir", str(fresh_cache),
           "--only", "t", "--executor", "serial", "--no-progress", "--device", "cpu",
           *[x for s in [*FT, *extra] for x in ("--set", s)]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the fine-tune ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # nothing extraction could use: no checkpoint folder, no features, no lock
    assert not checkpoint_dir(store, DATASET, key).exists()
    assert "t" not in store.read_lock(DATASET)
    assert not list((fresh_cache / DATASET).glob("text-hf/*/shard-*.h5"))
    assert needed_stages(_plan(fresh_cache, extra))[0].key == key
    # the rerun resumes after the last finished epoch and completes
    capsys.readouterr()
    summary = _run(fresh_cache, extra)
    err = capsys.readouterr().err
    assert "resuming after epoch" in err
    assert is_complete(checkpoint_dir(store, DATASET, key)) and not work_dir(store, DATASET, key).exists()
    assert sum(s.computed_shards for s in summary.stages.values()) == 1
    meta = json.loads((checkpoint_dir(store, DATASET, key) / "finetune.json").read_text())
    assert [e["epoch"] for e in meta["record"]["epochs"]] == list(range(1, 41))


def test_resumed_finetune_matches_uninterrupted(prepared, tmp_path):
    """Seeded per epoch: stopping after epoch 1 and resuming gives the weights of one straight run."""
    import torch

    from mer_pipe.extractors.finetune import FinetuneConfig, FinetuneData, finetune
    from mer_pipe.extractors.tiny import ensure_tiny_text

    ref = str(ensure_tiny_text(tmp_path / "tiny-text"))
    _, utts = load_dataset(DATASET, prepared / "cache")
    train = FinetuneData([u.text for u in utts if u.split == "train"], [u.label_id for u in utts if u.split == "train"])
    dev = FinetuneData([u.text for u in utts if u.split == "dev"], [u.label_id for u in utts if u.split == "dev"])
    cfg = FinetuneConfig(epochs=2, batch_size=8, lr=1e-3)
    finetune("text", ref, None, cfg, train, dev, 7, tmp_path / "straight")

    class Killed(Exception):
        pass

    def die_in_epoch_2(step: int, n: int, seen=[]) -> None:
        seen.append(step)
        if len(seen) > n + 1:  # epoch 1 finished (state saved), now one step into epoch 2
            raise Killed

    with pytest.raises(Killed):
        finetune("text", ref, None, cfg, train, dev, 7, tmp_path / "resumed", on_step=die_in_epoch_2)
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["epoch"] == 1
    msgs: list[str] = []
    rec = finetune("text", ref, None, cfg, train, dev, 7, tmp_path / "resumed", log=msgs.append)
    assert msgs[0].startswith("resuming after epoch 1") and [e["epoch"] for e in rec["epochs"]] == [1, 2]
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded per epoch: bit-identical on CPU


def test_crossfit_folds_are_stages_and_train_rows_come_from_the_other_encoder(fresh_cache):
    extra = ["t.finetune.crossfit=2", "t.finetune.epochs=1"]
    plan = _plan(fresh_cache, extra)
    assert len(plan.finetunes) == 3 and len(plan.crossfit) == 1
    (b,) = plan.crossfit
    assert b.all_key == _plan(fresh_cache, ["t.finetune.epochs=1"]).finetunes[0].key  # shared with crossfit=0
    folds = {st.fold: st for st in plan.finetunes}
    _, utts = load_dataset(DATASET, fresh_cache)
    for k in range(2):
        assert not set(folds[(k, 2)].train_ids) & {u for u, f in b.fold_of.items() if f == k}
    _run(fresh_cache, extra)
    store = FeatureStore(fresh_cache)
    lock = store.read_lock(DATASET)["t"]
    spec = store.read_spec(DATASET, lock["extractor"], lock["key"])
    assert spec["finetune_keys"] == [b.all_key, *b.fold_keys]
    cf = load_table(store, DATASET, "t")
    all_train = plan.stages[0]
    from mer_pipe.cache.shard import read_shard

    base = read_shard(store.shard_path(DATASET, "text-hf", all_train.key, 0, 1))
    rows = {uid: i for i, uid in enumerate(base.ids)}
    vals = np.asarray(cf.values)
    for u in utts:
        i = rows[u.id]
        same = np.allclose(vals[i], base.values[i])
        assert same == (u.id not in b.fold_of), u.id  # train rows replaced, dev/test copied
    assert needed_stages(_plan(fresh_cache, extra)) == []
    again = _run(fresh_cache, extra)
    assert sum(s.computed_shards for s in again.stages.values()) == 0


WEAK_CUES = {"happy": "happy", "sad": "sad", "angry": "angry", "surprise": "wow"}


def _weak_cue_corpus(root: Path, cache: Path, n_dialogues: int = 60, seed: int = 0) -> str:
    """A text-only manifest whose only signal is one emotion word among 14 random filler words, true for
    70% of the utterances: mean-pooled frozen features bury it, a fine-tuned encoder can find it."""
    from mer_pipe.extractors.tiny import _TEXT_WORDS
    from mer_pipe.pipeline import api

    rng = np.random.default_rng(seed)
    names = list(WEAK_CUES)
    filler = [w for w in _TEXT_WORDS if w not in WEAK_CUES.values() and w not in {"love", "hate", "great", "bad"}]
    rows = []
    for d in range(n_dialogues):
        split = "train" if d < 0.6 * n_dialogues else ("dev" if d < 0.8 * n_dialogues else "test")
        for i in range(6):
            y = int(rng.integers(len(names)))
            cue = y if rng.random() < 0.7 else int(rng.integers(len(names)))
            words = list(rng.choice(filler, size=14))
            words.insert(int(rng.integers(len(words) + 1)), WEAK_CUES[names[cue]])
            rows.append({"id": f"d{d}_u{i}", "dataset": "weak", "dialogue_id": f"d{d}", "index": i,
                         "speaker": f"s{i % 2}", "speaker_idx": i % 2, "text": " ".join(words), "video": None,
                         "audio": None, "video_segment": None, "audio_segment": None, "start": None, "end": None,
                         "split": split, "label": names[y], "label_id": y, "sentiment": None})
    root.mkdir(parents=True, exist_ok=True)
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    api.prepare("manifest", root, manifest=root / "m.jsonl", name="weak", cache_dir=cache)
    return "weak"


def test_finetuned_features_beat_frozen_ones_on_a_weak_text_cue(tmp_path):
    import torch

    from mer_pipe.pipeline import api

    torch.set_num_threads(1)
    cache = tmp_path / "cache"
    ds = _weak_cue_corpus(tmp_path / "corpus", cache)
    scores = {}
    for name, extra in (("frozen", []), ("finetuned", ["t.finetune=true", "t.finetune.epochs=10", "t.finetune.lr=2e-3",
                                                         "t.finetune.batch_size=16", "t.finetune.max_length=32"])):
        slots = resolve_slots("offline", only="t", overrides=["t.model=tiny:text", *extra], cache_root=cache)
        extract_features(ds, slots, cache_dir=cache, executor=SERIAL, device="cpu", progress=False)
        res = api.train("mlp", ds, modalities="t", seeds="0,1", epochs=30, out=tmp_path / f"run-{name}",
                        cache_dir=cache, log=lambda s: None, progress=False, device="cpu")
        scores[name] = res.metrics["aggregate"]["test"]["weighted_f1"]["mean"]
    assert scores["finetuned"] > scores["frozen"] + 0.1, scores


def test_audio_finetune_wav2vec2_keeps_the_equal_length_rule_and_extracts(prepared, fresh_cache):
    from mer_pipe.extractors.finetune import FinetuneConfig, _batches

    cfg = FinetuneConfig(batch_size=4, max_seconds=1.0)
    wavs = [np.zeros(n, np.float32) for n in (8000, 8000, 12000, 8000, 16000, 20000, 12000)]
    groups = _batches("audio", None, wavs, list(range(7)), cfg, pad_ok=False, min_len=400)
    # group-norm models (no attention mask): a step holds clips of one length only (16000 and 20000 are both
    # cut to max_seconds = 16000 samples)
    assert sorted(map(sorted, groups)) == [[0, 1, 3], [2, 6], [4, 5]]
    assert all(len({min(wavs[i].size, 16000) for i in g}) == 1 for g in groups)
    padded = _batches("audio", None, wavs, list(range(7)), cfg, pad_ok=True, min_len=400)
    assert padded == [[0, 1, 2, 3], [4, 5, 6]]

    extra = ["a_w2v.finetune=true", "a_w2v.finetune.epochs=1", "a_w2v.finetune.batch_size=4",
             "a_w2v.finetune.max_seconds=1.0"]
    slots = resolve_slots("offline", only="a_w2v", overrides=extra, cache_root=fresh_cache)
    plan = make_plan(DATASET, slots, cache_dir=fresh_cache)
    (ft,) = plan.finetunes
    assert ft.modality == "audio" and plan.stages[0].spec["upstream"] == ft.key
    extract_features(DATASET, slots, cache_dir=fresh_cache, executor=SERIAL, device="cpu", progress=False)
    meta = json.loads((Path(ft.path) / "finetune.json").read_text())
    assert meta["skipped_media"] > 0  # the planted missing / broken clips are skipped, not fatal
    tab = load_table(FeatureStore(fresh_cache), DATASET, "a_w2v")
    assert tab.key == plan.stages[0].key and tab.valid.sum() > 0
    with pytest.raises(ConfigError, match="context turns are text"):
        make_plan(DATASET, resolve_slots("offline", only="a_w2v", overrides=[*extra, "a_w2v.finetune.context=1"],
                                         cache_root=fresh_cache), cache_dir=fresh_cache)


def test_deepmsi_preset_fine_tunes_text_and_wav2vec2_and_keeps_video_frozen():
    slots = {s.slot: s for s in resolve_slots("deepmsi")}
    assert slots["t"].finetune is not None and slots["a_w2v"].finetune is not None
    assert slots["v"].finetune is None and slots["a"].extractor == "opensmile"
    assert resolve_slots("deepmsi", only="t", overrides=["t.finetune=false"])[0].finetune is None
    with pytest.raises(ConfigError, match="finetune takes true/false"):
        resolve_slots("offline", only="t", overrides=["t.finetune=3"])


def test_context_turns_feed_both_the_fine_tune_and_the_extraction(fresh_cache):
    from mer_pipe.pipeline.extract.finetune import context_texts

    _, utts = load_dataset(DATASET, fresh_cache)
    texts = context_texts(utts, 2, " | ")
    dia = sorted((u for u in utts if u.dialogue_id == utts[0].dialogue_id), key=lambda u: u.index)
    assert texts[dia[0].id] == f"{dia[0].speaker}: {dia[0].text}"
    assert texts[dia[3].id] == " | ".join(f"{u.speaker}: {u.text}" for u in dia[1:4])  # 2 previous turns + itself
    plan = _plan(fresh_cache, ["t.finetune.context=2", "t.finetune.epochs=1"])
    (stage,) = plan.stages
    assert stage.spec["inputs"] == {"context": 2, "sep": " | "} and stage.key != _plan(fresh_cache).stages[0].key
    items = {it["id"]: it["text"] for t in stage.tasks for it in t.items}
    assert items == texts
    _run(fresh_cache, ["t.finetune.context=2", "t.finetune.epochs=1"])
    tok = json.loads((Path(plan.finetunes[0].path) / "tokenizer_config.json").read_text())
    assert tok.get("truncation_side") == "left"  # long context is cut from the oldest turn, never the utterance


def test_with_scheduler_the_fine_tune_runs_on_a_cluster_worker_into_the_shared_cache(fresh_cache, scheduler):
    summary = extract_features(DATASET, _slots(fresh_cache), cache_dir=fresh_cache, device="cpu", progress=False,
                               executor=ExecutorConfig("dask", scheduler=scheduler))
    (ft,) = _plan(fresh_cache).finetunes
    meta = json.loads((Path(ft.path) / "finetune.json").read_text())
    assert ft.complete and meta["pid"] != os.getpid()  # trained by a worker process, written to the cache
    assert scheduler in summary.executor
    assert load_table(FeatureStore(fresh_cache), DATASET, "t").key == _plan(fresh_cache).stages[0].key


def test_frozen_layers_and_options_that_change_the_weights_change_the_key(fresh_cache):
    from mer_pipe.extractors.finetune import _load_encoder, freeze
    from mer_pipe.extractors.tiny import ensure_tiny_text

    enc, _ = _load_encoder("text", str(ensure_tiny_text(fresh_cache / "_weights" / "tiny-text")), None)
    freeze(enc, "text", 1)
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.encoder.layer[1].parameters())
    with pytest.raises(ConfigError, match=r"frozen_layers=5.*only 2 layers"):
        freeze(enc, "text", 5)
    base = _plan(fresh_cache).finetunes[0].key
    for opt in ("t.finetune.autocast=true", "t.finetune.frozen_layers=1", "t.finetune.class_weights=balanced",
                "t.finetune.context=1", "t.finetune.max_length=16"):
        assert _plan(fresh_cache, [opt]).finetunes[0].key != base, opt
    # run settings are not part of it: the crossfit all-train stage is the plain one
    assert _plan(fresh_cache, ["t.finetune.crossfit=2"]).finetunes[0].key == base
