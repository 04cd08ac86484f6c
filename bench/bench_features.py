"""Benchmark of the feature run on a synthetic MELD-shaped corpus (CPU).

Per extractor of the `offline` preset: utterances/s of the pipeline (serial executor, batched, sharded,
written to HDF5) against a naive loop in the same process (decode one clip, forward with batch size 1,
append to a list, pickle at the end), as a ratio of medians over a few repeats; the time of a fully
cached rerun; dask with 1 vs 2 worker processes (wall time, cluster start-up included); decode vs
forward time. Then the cached rerun of a MELD-sized manifest (13,708 utterances from the real MELD
CSVs, text slot). Writes bench/results/features.json and prints a table.

The tiny Swin / wav2vec2 checkpoints are plumbing: their throughput is dominated by decoding, unlike
the real models. Run: `python bench/bench_features.py [--quick]` (full: < ~10 min on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MELD_CSVS = HERE.parent.parent / "shared" / "data" / "meld"
MELD_SIZE = 13708
DATASET = "bench-meld"


def naive_loop(spec, items, modality: str, out: Path) -> float:
    """Seconds for: decode one clip, forward batch 1, append; pickle everything at the end."""
    from mer_pipe.common.errors import MediaError
    from mer_pipe.extractors import build_extractor
    from mer_pipe.extractors.media import load_audio, load_frames

    ext = build_extractor(spec.extractor, dict(spec.config))
    ext.setup("cpu")  # loading is not timed (the pipeline's extractor is warm too)
    kw = ext.decode_kwargs()
    if modality == "text":  # one untimed call, as the pipeline's extractor has seen inputs already
        ext.extract([items[0]["text"]])
    else:
        first = next(it for it in items if it["path"] is not None)
        ext.extract([(load_audio if modality == "audio" else load_frames)(first["path"], segment=first["segment"], **kw)])
    t0 = time.perf_counter()
    feats = []
    for it in items:
        try:
            if modality == "text":
                x = it["text"]
            elif it["path"] is None:
                feats.append(None)
                continue
            elif modality == "audio":
                x = load_audio(it["path"], segment=it["segment"], **kw)
            else:
                x = load_frames(it["path"], segment=it["segment"], **kw)
        except MediaError:
            feats.append(None)
            continue
        feats.append(ext.extract([x])[0])
    with open(out, "wb") as fh:
        pickle.dump(feats, fh)
    return time.perf_counter() - t0


def drop_features(cache: Path, dataset: str, extractor: str) -> None:
    shutil.rmtree(cache / dataset / extractor, ignore_errors=True)
    lock = cache / dataset / "lock.json"
    lock.unlink(missing_ok=True)


def bench_slot(spec, cache: Path, repeats: int, workers: tuple[int, ...]) -> dict:
    from mer_pipe.pipeline.executors import ExecutorConfig
    from mer_pipe.pipeline.extract.run import extract_features
    from mer_pipe.pipeline.extract.plan import make_plan

    serial = ExecutorConfig("serial")
    # Warm-up: loads the extractor into this process once (the per-process cache keeps it).
    extract_features(DATASET, [spec], cache_dir=cache, executor=serial, progress=False)
    plan = make_plan(DATASET, [spec], cache_dir=cache)
    stage = plan.stages[0]
    from mer_pipe.pipeline.extract.plan import _items  # same items the tasks get

    from mer_pipe.pipeline.corpus.manifest import load_dataset

    _, utts = load_dataset(DATASET, cache)
    items = _items(stage.modality, utts, plan.corpus_root)
    n = len(items)
    pipe_s, naive_s, decode, forward = [], [], [], []
    for _ in range(repeats):
        drop_features(cache, DATASET, spec.extractor)
        s = extract_features(DATASET, [spec], cache_dir=cache, executor=serial, progress=False)
        pipe_s.append(s.seconds)
        st = next(iter(s.stages.values()))
        decode.append(st.decode_s)
        forward.append(st.forward_s)
        with tempfile.TemporaryDirectory() as tmp:
            naive_s.append(naive_loop(spec, items, stage.modality, Path(tmp) / "feats.pkl"))
    t0 = time.perf_counter()
    cached = extract_features(DATASET, [spec], cache_dir=cache, executor=serial, progress=False)
    cached_s = time.perf_counter() - t0
    assert cached.submitted_shards == 0
    dask = {}
    for w in workers:
        drop_features(cache, DATASET, spec.extractor)
        s = extract_features(DATASET, [spec], cache_dir=cache, executor=ExecutorConfig("dask", workers=w),
                             progress=False)
        dask[str(w)] = {"seconds": s.seconds, "utt_per_s": n / s.seconds}
    pipe, naive = statistics.median(pipe_s), statistics.median(naive_s)
    return {
        "slot": spec.slot, "extractor": spec.extractor, "utterances": n,
        "pipeline_utt_per_s": n / pipe, "naive_utt_per_s": n / naive, "ratio": naive / pipe,
        "pipeline_s": pipe_s, "naive_s": naive_s, "cached_rerun_s": cached_s,
        "decode_s": statistics.median(decode), "forward_s": statistics.median(forward), "dask": dask,
    }


def bench_w2v_base(work: Path, cache: Path) -> list[dict]:
    """The tiny wav2vec2 is all decoding; a randomly initialised wav2vec2-base-sized model (95 M parameters,
    transformers' default Wav2Vec2Config, weights irrelevant for speed) shows the forward cost a user pays.
    fp32 and bf16 autocast; one repeat each, no dask sweep (minutes per pass on 2 cores)."""
    from mer_pipe.pipeline.extract.presets import resolve_slots

    path = work / "w2v-base-random"
    if not path.exists():
        import torch
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        torch.manual_seed(0)
        Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(path)
        Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(path)
    out = []
    for autocast in (False, True):
        over = [f"a_w2v.model={path}", f"a_w2v.autocast={str(autocast).lower()}"]
        (spec,) = resolve_slots("offline", only="a_w2v", overrides=over, cache_root=cache)
        r = bench_slot(spec, cache, 1, ())
        r["extractor"] = "wav2vec2-base-sized" + (" bf16" if autocast else "")
        out.append(r)
        print(f"  done wav2vec2 base-sized (autocast={autocast})", file=sys.stderr)
    return out


def meld_sized_manifest(work: Path, n_max: int) -> Path:
    """A text-only manifest with the real MELD CSV rows (13,708), prepared with the `manifest` recipe."""
    import csv

    from mer_pipe.pipeline.corpus.manifest import Utterance, write_manifest
    from mer_pipe.pipeline.corpus.prepare import prepare

    labels = "neutral surprise fear sadness joy disgust anger".split()
    utts = []
    for split, fname in (("train", "train_sent_emo.csv"), ("dev", "dev_sent_emo.csv"), ("test", "test_sent_emo.csv")):
        with open(MELD_CSVS / fname, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        speakers: dict[str, dict[str, int]] = {}
        counts: dict[str, int] = {}
        for r in rows:
            did = f"{split}/dia{r['Dialogue_ID']}"
            spk = speakers.setdefault(did, {})
            spk.setdefault(r["Speaker"], len(spk))
            idx = counts.get(did, 0)
            counts[did] = idx + 1
            utts.append(Utterance(
                id=f"meld/{split}/dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}", dataset="meld", dialogue_id=did,
                index=idx, speaker=r["Speaker"], speaker_idx=spk[r["Speaker"]], text=r["Utterance"], video=None,
                audio=None, video_segment=None, audio_segment=None, start=None, end=None, split=split,
                label=r["Emotion"], label_id=labels.index(r["Emotion"]), sentiment=r["Sentiment"]))
    utts = utts[:n_max]
    path = work / "meld_text.jsonl"
    write_manifest(path, utts)
    prepare("manifest", work, name="meld-text", cache_dir=work / "cache", manifest_file=path)
    return path


def bench_meld_sized(work: Path, quick: bool) -> dict:
    from mer_pipe.pipeline.executors import ExecutorConfig
    from mer_pipe.pipeline.extract.run import extract_features
    from mer_pipe.pipeline.extract.presets import resolve_slots

    cache = work / "cache"
    n_max = 2000 if quick else MELD_SIZE
    meld_sized_manifest(work, n_max)
    overrides = ["t.model=tiny:text"] if quick else []
    spec = resolve_slots("offline", only="t", overrides=overrides, cache_root=cache)
    first = extract_features("meld-text", spec, cache_dir=cache, executor=ExecutorConfig("serial"), progress=False)
    t0 = time.perf_counter()
    again = extract_features("meld-text", spec, cache_dir=cache, executor=ExecutorConfig("serial"), progress=False)
    in_process = time.perf_counter() - t0
    assert again.submitted_shards == 0
    cli = [str(Path(sys.executable).parent / "mer-pipe"), "features", "--dataset", "meld-text", "--cache-dir",
           str(cache), "--only", "t", "--no-progress", *sum((["--set", o] for o in overrides), [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cli, capture_output=True, text=True)
    cli_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return {"utterances": n_max, "model": "tiny text (quick)" if quick else "all-MiniLM-L6-v2",
            "first_run_s": first.seconds, "first_run_utt_per_s": first.throughput,
            "cached_rerun_in_process_s": in_process, "cached_rerun_cli_s": cli_s, "target_s": 5.0}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny corpus, 1 repeat, 2,000-row text manifest (checks it runs)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "features.json")
    ap.add_argument("--dialogues", type=int, default=None, help="synthetic dialogues (default 30, quick 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: torch's)")
    ap.add_argument("--no-base", action="store_true", help="skip the base-sized random wav2vec2 measurement")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 3, quick 1)")
    args = ap.parse_args(argv)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mer_pipe.pipeline.corpus.prepare import prepare
    from mer_pipe.pipeline.extract.presets import resolve_slots
    from mer_pipe.pipeline.corpus.synth import synthesize

    dialogues = args.dialogues or (5 if args.quick else 30)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        syn = synthesize("meld", work / "corpus", dialogues=dialogues, text_from=MELD_CSVS if MELD_CSVS.is_dir() else None)
        prepare("meld", syn.root, name=DATASET, cache_dir=cache)
        results = []
        for spec in resolve_slots("offline", cache_root=cache):
            workers = (1, 2) if not args.quick or spec.slot == "a" else ()
            results.append(bench_slot(spec, cache, repeats, workers))
            print(f"  done {spec.slot} ({spec.extractor})", file=sys.stderr)
        base = [] if args.quick or args.no_base else bench_w2v_base(work, cache)
        meld = bench_meld_sized(work / "meld", args.quick) if MELD_CSVS.is_dir() else None
    import torch

    report = {"quick": args.quick, "dialogues": dialogues, "repeats": repeats, "torch_threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "extractors": results, "wav2vec2_base_sized": base, "meld_sized": meld,
              "total_s": time.perf_counter() - t_all,
              "note": "tiny Swin/wav2vec2 are plumbing checkpoints; ratio = naive seconds / pipeline seconds"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return report


def format_report(r: dict) -> str:
    head = ("slot", "extractor", "utts", "pipe utt/s", "naive utt/s", "ratio", "cached s", "decode s", "fwd s",
            "dask1 s", "dask2 s")
    rows = [head]
    for e in r["extractors"] + (r.get("wav2vec2_base_sized") or []):
        rows.append((e["slot"], e["extractor"], str(e["utterances"]), f"{e['pipeline_utt_per_s']:.1f}",
                     f"{e['naive_utt_per_s']:.1f}", f"{e['ratio']:.2f}x", f"{e['cached_rerun_s']:.2f}",
                     f"{e['decode_s']:.2f}", f"{e['forward_s']:.2f}",
                     *(f"{e['dask'][w]['seconds']:.1f}" if w in e["dask"] else "-" for w in ("1", "2"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    m = r.get("meld_sized")
    if m:
        lines.append(f"MELD-sized manifest ({m['utterances']} utts, {m['model']}): first run {m['first_run_s']:.1f} s "
                     f"({m['first_run_utt_per_s']:.0f} utt/s); cached rerun {m['cached_rerun_in_process_s']:.2f} s "
                     f"in process, {m['cached_rerun_cli_s']:.2f} s via the CLI (target < {m['target_s']:.0f} s)")
    lines.append(f"total {r['total_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
