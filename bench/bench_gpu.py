"""The device benchmark (issue 21): feature extraction and training on one accelerator, in one script.

Prepared to run when a GPU is lent (about 15 minutes in all; this script aims at <= 8 on one H100):
1. Checkpoints: the `paper` preset's encoders with random weights at their real sizes (RoBERTa-large,
   wav2vec2-base, Swin-base; extractors/archs.py), no downloads. `--quick`: tiny widths of the same families.
2. Corpus: `synth meld --text-from <MELD CSVs>` (real H.264 clips), replicated under new dialogue and
   utterance ids up to `--clips` (about 2,000: MELD-shaped); replication keeps the decode cost per clip.
3. Extraction, per slot (t, a_w2v, v), one process owning the device (one worker per GPU), every shard
   task run in turn in three arms: the serial worker (decode then encoder, in turn; fp32), the overlapped
   worker (pipeline/extract/overlap.py; fp32) and the overlapped worker with autocast (bf16 on CPU, fp16 on
   CUDA: extractors/base.py autocast_context). Per arm: clips/s, GPU busy % (NVML via pynvml, else
   `nvidia-smi --query-gpu=utilization.gpu`, sampled every 0.2 s), peak GPU memory, decode / forward
   seconds and the seconds the encoder waited for a batch (`decode-bound` when it waited > 10 % of the
   wall time, else `forward-bound`); the overlap ratio = serial wall / overlapped wall; whether fp32
   features of the two arms are bit-identical. Plus the decode time of a 1280x720 H.264 clip (MELD's
   resolution; the synthetic clips are small) and what it implies for the video slot.
4. Training: one seed, `--epochs` epochs of the four models (`--profile paper`, quick: dev; t,a,v with
   a = the wav2vec2 slot: openSMILE is CPU work and outside this budget); seconds per epoch.
5. A multi-GPU sweep smoke test (api.sweep, dask, one run per GPU) when more than one GPU is visible.
Writes bench/results/gpu_<device name>.json (`--device cpu --quick`: bench/results/gpu_quick_cpu.json).

Run: `python bench/bench_gpu.py --device cuda` (GPU) or `--device cpu --quick` (the same code path, < 2 min).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MELD_CSVS = HERE.parent.parent / "shared" / "data" / "meld"
DATASET = "bench-gpu"
MODELS = ("ts-gcl", "ar-iigcn", "jv-icl", "deepmsi-mer")
CKPTS = {"t": "roberta-large", "a_w2v": "wav2vec2-base", "v": "swin-base"}
WARM_CLIPS = 64


class GpuSampler:
    """Mean / max GPU utilisation (% of time a kernel ran) over a window, sampled in a thread."""

    def __init__(self, device: str, period: float = 0.2) -> None:
        self.period, self.read, self.source = period, None, None
        if not device.startswith("cuda"):
            return
        import torch

        index = torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if index < len(visible) and visible[index].isdigit():
            index = int(visible[index])  # NVML and nvidia-smi count every GPU, torch only the visible ones
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.read, self.source = (lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)), "pynvml"
        except Exception as exc:  # noqa: BLE001 - pynvml absent, or any of its NVMLError kinds: try nvidia-smi
            if shutil.which("nvidia-smi"):
                cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(index)]
                self.read = lambda: float(subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.split()[0])
                self.source = f"nvidia-smi ({type(exc).__name__} from pynvml)"

    def __enter__(self) -> "GpuSampler":
        self.samples: list[float] = []
        self._stop = threading.Event()
        if self.read is not None:
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append(self.read())
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.read is not None:
            self._t.join(timeout=10)

    def summary(self) -> dict:
        s = self.samples
        return {"gpu_busy_pct": round(sum(s) / len(s), 1) if s else None,
                "gpu_busy_pct_max": max(s) if s else None, "gpu_samples": len(s), "gpu_sampler": self.source}


def device_info(device: str) -> dict:
    import platform

    import torch

    info = {"device": device, "torch": torch.__version__, "cpus": os.cpu_count(), "cpu": platform.processor() or None,
            "cuda_available": torch.cuda.is_available()}
    if device.startswith("cuda"):
        info.update(gpu_name=torch.cuda.get_device_name(device), gpus_visible=torch.cuda.device_count(),
                    cuda=torch.version.cuda, gpu_memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    return info


def build_corpus(work: Path, clips: int, cache: Path) -> dict:
    """synth meld (real H.264 clips), replicated under new ids up to `clips`; prepared as DATASET."""
    from mer_pipe.pipeline.corpus.manifest import read_manifest, write_manifest
    from mer_pipe.pipeline.corpus.prepare import prepare
    from mer_pipe.pipeline.corpus.synth import synthesize

    t0 = time.perf_counter()
    dialogues = max(3, min(40, math.ceil(clips / 10)))  # ~10 clips per MELD dialogue; synth is CPU work
    syn = synthesize("meld", work / "corpus", dialogues=dialogues, text_from=MELD_CSVS if MELD_CSVS.is_dir() else None)
    synth_s = time.perf_counter() - t0
    prepare("meld", syn.root, name="bench-gpu-base", cache_dir=cache)
    base = read_manifest(cache / "bench-gpu-base" / "manifest.jsonl")
    k = max(1, round(clips / len(base)))  # whole copies: every split keeps its dialogues
    utts = [dataclasses.replace(u, id=f"r{i}/{u.id}", dialogue_id=f"r{i}/{u.dialogue_id}") for i in range(k) for u in base]
    n_dia = len({u.dialogue_id for u in base})
    path = work / "manifest.jsonl"
    write_manifest(path, utts)
    prepare("manifest", syn.root, name=DATASET, cache_dir=cache, manifest_file=path)
    return {"synth_dialogues": n_dia, "synth_clips": len(base), "copies": k, "clips": len(utts),
            "synth_s": round(synth_s, 1), "seconds": round(time.perf_counter() - t0, 1)}


def slot_tasks(cache: Path, slot: str, weights: Path, device: str, batch_size: int | None, autocast: bool):
    from mer_pipe.pipeline.extract.plan import make_plan, with_run_settings
    from mer_pipe.pipeline.extract.presets import resolve_slots

    sets = [f"{slot}.model={weights}"] + ([f"{slot}.autocast=true"] if autocast else [])
    specs = resolve_slots("paper", only=slot, overrides=sets, cache_root=cache)
    plan = make_plan(DATASET, specs, cache_dir=cache, shard_size=256)
    bs = batch_size or specs[0].batch_size
    return specs, [with_run_settings(t, device=device, batch_size=bs) for t in plan.stages[0].tasks]


def run_arm(tasks: list, overlap, device: str, suffix: str | None) -> dict:
    """Every task of a slot in turn, as one worker does; the shards go to `path + suffix` (None: the real path)."""
    import torch

    from mer_pipe.pipeline.extract import shardrun
    from mer_pipe.pipeline.extract.shardrun import run_shard

    cuda = device.startswith("cuda")
    shardrun._LOADED.clear()  # only this arm's encoder on the device: the peak memory is its own (private, bench only)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    tasks = [dataclasses.replace(t, path=t.path + suffix) if suffix else t for t in tasks]
    warm = dataclasses.replace(tasks[0], items=tasks[0].items[:WARM_CLIPS], path=tasks[0].path + ".warm.h5")
    run_shard(warm, overlap=overlap)  # model load, first kernels and shapes (CPU: oneDNN per shape): untimed
    Path(warm.path).unlink(missing_ok=True)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with GpuSampler(device) as gpu:
        t0 = time.perf_counter()
        rs = [run_shard(t, overlap=overlap) for t in tasks]
        wall = time.perf_counter() - t0
    n = sum(r.n for r in rs)
    dec, fwd, wait = (sum(getattr(r, k) for r in rs) for k in ("decode_s", "forward_s", "wait_s"))
    row = {"clips": n, "ok": sum(r.n_ok for r in rs), "wall_s": round(wall, 2), "clips_per_s": round(n / wall, 2),
           "decode_s": round(dec, 2), "forward_s": round(fwd, 2), "wait_s": round(wait, 2),
           "bound": ("decode-bound" if wait > 0.1 * wall else "forward-bound") if overlap.enabled else None,
           "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if cuda else None,
           **gpu.summary(), "paths": [t.path for t in tasks]}
    return row


def same_features(paths_a: list[str], paths_b: list[str]) -> bool:
    import numpy as np

    from mer_pipe.cache.shard import read_shard

    for a, b in zip(paths_a, paths_b):
        x, y = read_shard(a), read_shard(b)
        vx = x.values if hasattr(x.values, "shape") else np.concatenate(x.values)
        vy = y.values if hasattr(y.values, "shape") else np.concatenate(y.values)
        if x.ids != y.ids or vx.tobytes() != vy.tobytes():
            return False
    return True


def bench_slot(cache: Path, slot: str, weights: Path, device: str, args, overlap) -> dict:
    from mer_pipe.pipeline.extract.overlap import SERIAL

    specs, tasks = slot_tasks(cache, slot, weights, device, args.batch_size, autocast=False)
    serial = run_arm(tasks, SERIAL, device, ".serial.h5")
    over = run_arm(tasks, overlap, device, None)  # the real shards: training reads these
    _, tasks_ac = slot_tasks(cache, slot, weights, device, args.batch_size, autocast=True)
    ac = run_arm(tasks_ac, overlap, device, ".autocast.h5")
    identical = same_features(serial["paths"], over["paths"])
    from mer_pipe.extractors import EXTRACTORS
    from mer_pipe.extractors.base import Extractor

    split = EXTRACTORS.get(specs[0].extractor).prepare is not Extractor.prepare
    for p in serial["paths"] + ac["paths"]:
        Path(p).unlink(missing_ok=True)
    for row in (serial, over, ac):
        row.pop("paths")
    print(f"  {slot}: serial {serial['clips_per_s']} clips/s, overlap {over['clips_per_s']} ({over['bound']}), "
          f"autocast {ac['clips_per_s']}", file=sys.stderr, flush=True)
    return {"slot": slot, "extractor": specs[0].extractor, "checkpoint": CKPTS[slot], "batch_size": tasks[0].batch_size,
            "fp32_serial": serial, "fp32_overlap": over, "autocast_overlap": ac,
            "autocast_dtype": ("float16" if device.startswith("cuda") else "bfloat16"),
            "overlap_ratio": round(serial["wall_s"] / over["wall_s"], 3),
            "autocast_speedup": round(over["wall_s"] / ac["wall_s"], 3), "fp32_overlap_bit_identical": identical,
            # False: the extractor preprocesses inside forward (counted in forward_s, on the encoder's thread)
            "preprocess_in_decode_thread": split,
            # one decode thread's rate vs the encoder's (serial arm): decode threads needed to keep it fed
            "decode_clips_per_s_1thread": round(serial["clips"] / max(serial["decode_s"], 1e-9), 1),
            "forward_clips_per_s": round(serial["clips"] / max(serial["forward_s"], 1e-9), 1),
            "decode_threads_to_feed": round(serial["decode_s"] / max(serial["forward_s"], 1e-9), 2)}


def lock_slots(cache: Path, weights: dict, device: str) -> None:
    """The fp32 overlapped shards are the stage's own: planning finds them all present and locks the slots."""
    from mer_pipe.pipeline.executors import ExecutorConfig
    from mer_pipe.pipeline.extract.presets import resolve_slots
    from mer_pipe.pipeline.extract.run import extract_features

    sets = [f"{s}.model={w}" for s, w in weights.items()]
    specs = resolve_slots("paper", only=",".join(weights), overrides=sets, cache_root=cache)
    s = extract_features(DATASET, specs, cache_dir=cache, executor=ExecutorConfig("serial"), device=device,
                         shard_size=256, progress=False)
    assert s.submitted_shards == 0, "the overlapped arm's shards should have completed every stage"


def decode_720p(work: Path) -> dict | None:
    """Seconds to decode 15 frames of a 1280x720 H.264 clip (MELD's resolution) on one thread."""
    from mer_pipe.extractors.media import load_frames

    big = work / "720p.mp4"
    if shutil.which("ffmpeg") is None:
        return None
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=24:duration=3.2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(big)], check=True)
    load_frames(big)
    t0 = time.perf_counter()
    for _ in range(5):
        load_frames(big)
    return {"frames_decode_s_720p": round((time.perf_counter() - t0) / 5, 4)}


def train_models(cache: Path, work: Path, device: str, epochs: int, profile: str) -> list[dict]:
    from mer_pipe.pipeline import api

    out = []
    for model in MODELS:
        t0 = time.perf_counter()
        res = api.train(model, DATASET, out=work / "runs" / model, cache_dir=cache, overwrite=True, progress=False,
                        log=lambda s: None, profile=profile, modalities="t,a,v", seeds="0", epochs=epochs,
                        device=device, slots={"a": "a_w2v"})
        runs = json.loads((res.run_dir / "metrics.json").read_text()).get("runs", [])
        per_epoch = [r.get("seconds_per_epoch") for r in runs if r.get("seconds_per_epoch") is not None]
        out.append({"model": model, "profile": profile, "wall_s": round(time.perf_counter() - t0, 2), "epochs": epochs,
                    "seconds_per_epoch": round(per_epoch[0], 3) if per_epoch else None})
        print(f"  train {model}: {out[-1]['seconds_per_epoch']} s/epoch", file=sys.stderr, flush=True)
    return out


def sweep_smoke(cache: Path, work: Path) -> dict:
    """Two runs per visible GPU through api.sweep on a local dask cluster (one run per GPU at a time)."""
    import torch

    from mer_pipe.pipeline import api

    gpus = torch.cuda.device_count()
    t0 = time.perf_counter()
    res = api.sweep("ar-iigcn", DATASET, grid=["trainer.lr=" + ",".join(str(1e-3 / (i + 1)) for i in range(2 * gpus))],
                    seeds="0", epochs=1, device="cuda", profile="paper", modalities="t,a,v", slots={"a": "a_w2v"},
                    out=work / "sweep", cache_dir=cache, executor="dask", log=lambda s: None)
    import yaml

    devices = sorted({str(yaml.safe_load(p.read_text()).get("device")) for p in (work / "sweep").glob("configs/*/seed-*/config.yaml")})
    return {"gpus": gpus, "runs": 2 * gpus, "failed": len(res.failed), "seconds": round(time.perf_counter() - t0, 1),
            "devices_seen": devices}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--quick", action="store_true", help="tiny widths, ~60 clips, 1 epoch: checks the code path")
    ap.add_argument("--clips", type=int, default=None, help="corpus size (default 2000, quick 60)")
    ap.add_argument("--batch-size", type=int, default=None, help="clips per batch (default: the preset's)")
    ap.add_argument("--decode-threads", type=int, default=None, help="decode threads per worker (default: cores/2, <= 8)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per model (default 2, quick 1)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default /tmp/mer-bench-gpu[-quick])")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mer_pipe.common.devices import resolve_device

    device = resolve_device(args.device)  # --device cuda without CUDA: ConfigError, before any work
    from mer_pipe.extractors.archs import build_random_checkpoint
    from mer_pipe.pipeline.extract.overlap import OverlapConfig

    t_all = time.perf_counter()
    info = device_info(device)
    work = args.work or Path("/tmp/mer-bench-gpu" + ("-quick" if args.quick else ""))
    for sub in ("corpus", "cache", "runs", "sweep"):
        shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    texts = None
    if (MELD_CSVS / "train_sent_emo.csv").is_file():
        with open(MELD_CSVS / "train_sent_emo.csv", encoding="utf-8", errors="replace") as fh:
            texts = [r["Utterance"] for r in csv.DictReader(fh)]
    t0 = time.perf_counter()
    weights = {slot: build_random_checkpoint(name, work / ("weights-tiny" if args.quick else "weights") / name,
                                             tiny=args.quick, texts=texts) for slot, name in CKPTS.items()}
    build_s = time.perf_counter() - t0
    corpus = build_corpus(work, args.clips or (60 if args.quick else 2000), cache)
    threads = args.decode_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
    overlap = OverlapConfig(enabled=True, decode_threads=threads)
    print(f"bench_gpu on {info.get('gpu_name', device)}: {corpus['clips']} clips, decode threads {threads}",
          file=sys.stderr, flush=True)
    slots = [bench_slot(cache, slot, weights[slot], device, args, overlap) for slot in CKPTS]
    lock_slots(cache, weights, device)
    scale = decode_720p(work)
    if scale:
        v = next(s for s in slots if s["slot"] == "v")
        fwd_clips_s = v["fp32_overlap"]["clips"] / max(v["fp32_overlap"]["forward_s"], 1e-9)
        scale["decode_threads_to_feed_v_fp32"] = round(fwd_clips_s * scale["frames_decode_s_720p"], 1)
    # quick: the dev profile's small widths (the paper profile's models take ~20 s an epoch on 2 CPU cores)
    trains = train_models(cache, work, device, args.epochs or (1 if args.quick else 2), "dev" if args.quick else "paper")
    gpus = info.get("gpus_visible", 0)
    sweep = sweep_smoke(cache, work) if device.startswith("cuda") and gpus > 1 else {"skipped": f"{gpus or 0} GPU(s) visible"}
    report = {"quick": args.quick, **info, "overlap": vars(overlap), "checkpoints": {s: str(w) for s, w in weights.items()},
              "checkpoint_build_s": round(build_s, 1), "corpus": corpus, "extraction": slots, "decode_scale": scale,
              "train": trains, "sweep": sweep, "total_s": round(time.perf_counter() - t_all, 1),
              "note": "random weights at the published sizes (quick: tiny widths): cost only. One process owns the "
                      "device; the serial arm decodes and runs the encoder in turn, the overlap arms decode ahead "
                      "in threads. bound: decode-bound when the encoder waited > 10% of the wall time."}
    name = "gpu_quick_cpu" if args.quick and device == "cpu" else "gpu_" + re.sub(r"[^a-z0-9]+", "_",
                                                                                  info.get("gpu_name", device).lower()).strip("_")
    out = args.out or HERE / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return report


def format_report(r: dict) -> str:
    head = ("slot", "arm", "clips/s", "wall s", "decode s", "fwd s", "wait s", "bound", "GPU busy %", "peak MB")
    rows = [head]
    for s in r["extraction"]:
        for arm in ("fp32_serial", "fp32_overlap", "autocast_overlap"):
            a = s[arm]
            rows.append((s["slot"], arm, str(a["clips_per_s"]), str(a["wall_s"]), str(a["decode_s"]), str(a["forward_s"]),
                         str(a["wait_s"]), str(a["bound"] or "-"), str(a["gpu_busy_pct"]), str(a["peak_gpu_mb"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines += [f"{s['slot']}: overlap ratio {s['overlap_ratio']}x, autocast {s['autocast_speedup']}x, fp32 bit-identical "
              f"{s['fp32_overlap_bit_identical']}" for s in r["extraction"]]
    lines += [f"train {t['model']}: {t['seconds_per_epoch']} s/epoch" for t in r["train"]]
    lines.append(f"device {r.get('gpu_name', r['device'])}; total {r['total_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
