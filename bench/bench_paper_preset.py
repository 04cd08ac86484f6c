"""The real-size paper path on this CPU: `features --preset paper|deepmsi` with the published encoder
architectures (random weights), fp32 and bf16, then `train --profile paper` of the four models.

Checkpoints: RoBERTa-large, BERT-base-uncased, wav2vec2-base and Swin-base-patch4-window7-224, built by
`save_pretrained` from configs written in code (extractors/archs.py); no downloads. Corpus: `mer-pipe synth
meld --text-from <MELD CSVs>` (real MELD dialogues and text, synthesised H.264 clips). Every step goes
through the `mer-pipe` CLI in a child process; `features` runs as the CLI's own `main()` with api.extract
wrapped to save its run summary (per-stage decode / forward seconds), while a sampler records the peak RSS
of the client and of each dask worker. One `features --only SLOT` run per slot and precision; then a fully
cached fp32 rerun re-locks the fp32 features that training reads. Projection to full MELD / IEMOCAP:
per slot, (wall - work / workers) + N * per-utterance work / workers, the audio slots scaled by mean clip
duration and video decoding by a measured 1280x720 clip. Writes bench/results/bench_paper_preset.json.

Run: `nice -n 10 python bench/bench_paper_preset.py [--quick] [--dialogues 20]` (quick: 3 dialogues, tiny
widths of the same families, well under 2 minutes).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MELD_CSVS = HERE.parent.parent / "shared" / "data" / "meld"
MER_PIPE = Path(sys.executable).parent / "mer-pipe"
DATASET = "bench-paper"
MODELS = ("ts-gcl", "ar-iigcn", "jv-icl", "deepmsi-mer")
CKPTS = {"paper": {"t": "roberta-large", "a_w2v": "wav2vec2-base", "v": "swin-base"},
         "deepmsi": {"t": "bert-base-uncased", "a_w2v": "wav2vec2-base", "v": "swin-base"}}
SLOTS = ("t", "a", "a_w2v", "v")
TARGETS = {"MELD": {"utterances": 13708, "train": 9989, "mean_audio_s": None},
           "IEMOCAP": {"utterances": 7433, "train": 5163, "mean_audio_s": 4.5}}
IEMOCAP_NOTE = "IEMOCAP mean utterance length taken as 4.5 s (published corpus statistics; no media here)"
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def cli_child(summary: str, argv: list[str]) -> None:
    """`mer-pipe ARGV` in this process, saving api.extract's RunSummary (decode / forward per stage)."""
    from mer_pipe.pipeline import api
    from mer_pipe.pipeline.cli import main

    real = api.extract

    def extract(*a, **k):
        s = real(*a, **k)
        Path(summary).write_text(json.dumps(s.to_dict()))
        return s

    api.extract = extract
    main(argv)


def run(argv: list[str], log: Path, summary: Path | None = None) -> dict:
    """Run a mer-pipe command in a child; wall seconds, peak RSS (MB) of the client and of each worker."""
    import psutil

    cmd = [sys.executable, __file__, "--cli-child", str(summary), *argv] if summary else [str(MER_PIPE), *argv]
    peaks: dict[int, list] = {}
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ mer-pipe {' '.join(argv)}\n")
        fh.flush()
        proc = psutil.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
        while proc.poll() is None:
            try:
                for p in [proc, *proc.children(recursive=True)]:
                    with p.oneshot():
                        rss, cmdline = p.memory_info().rss, " ".join(p.cmdline())
                    role = "client" if p.pid == proc.pid else (
                        "worker" if ("spawn_main" in cmdline or "forkserver" in cmdline)
                        and "resource_tracker" not in cmdline else "other")
                    peaks.setdefault(p.pid, [role, 0])[1] = max(peaks.get(p.pid, [role, 0])[1], rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"mer-pipe {' '.join(argv)} exited {proc.returncode}; see {log}")
    mb = lambda role: sorted(round(v / 2**20) for r, v in peaks.values() if r == role)  # noqa: E731
    return {"wall_s": round(wall, 2), "client_peak_rss_mb": max(mb("client"), default=None),
            "worker_peak_rss_mb": mb("worker"), "load_avg_1m": round(os.getloadavg()[0], 2)}


def features(preset: str, slots: list[str], precision: str, ctx: dict) -> list[dict]:
    """One `features --only SLOTS` run; a row per stage it computed (cached stages: no row)."""
    sets = [f"{s}.model={ctx['weights'][name]}" for s, name in CKPTS[preset].items()]
    sets += [f"{s}.autocast=true" for s in slots if precision == "bf16" and s != "a"]
    argv = ["features", "--dataset", DATASET, "--cache-dir", str(ctx["cache"]), "--preset", preset,
            "--only", ",".join(slots), "--executor", "dask", "--workers", str(ctx["workers"]),
            "--shard-size", str(ctx["shard_size"]), "--no-progress", *[x for s in sets for x in ("--set", s)]]
    summary = ctx["work"] / "summary.json"
    summary.unlink(missing_ok=True)
    res = run(argv, ctx["log"], summary)
    stages = [st for st in json.loads(summary.read_text())["stages"].values() if st["computed_shards"]]
    ctx["calls"].append({"preset": preset, "slots": slots, "precision": precision, **res,
                         "computed_stages": len(stages)})
    rows = []
    for st in stages:
        n, work = st["items"], st["decode_s"] + st["forward_s"]
        slot = st["slots"][0]
        row = {"preset": preset, "slot": slot, "precision": precision, "extractor": st["extractor"],
               "checkpoint": CKPTS[preset].get(slot, "eGeMAPSv02"), "dim": st["dim"], "layout": st["layout"],
               "utterances": n, "shards": st["n_shards"], **res, "rss_shared_with": [s for s in slots if s != slot],
               "decode_s": round(st["decode_s"], 2), "forward_s": round(st["forward_s"], 2),
               "task_s": round(st["task_s"], 2), "shard_mb": round(st["bytes"] / 1e6, 3),
               "utt_per_s_wall": round(n / res["wall_s"], 3),
               "utt_per_s_steady": round(n / (work / ctx["workers"]), 3) if work else None,
               "mb_per_1000_utt": round(st["bytes"] / 1e6 / n * 1000, 2),
               "fixed_s": round(max(0.0, res["wall_s"] / len(stages) - work / ctx["workers"]), 2)}
        rows.append(row)
        print(f"  {preset:7} {slot:5} {precision}: {n} utts in {res['wall_s']:.1f} s, decode {row['decode_s']} s, "
              f"forward {row['forward_s']} s, worker RSS {res['worker_peak_rss_mb']} MB", file=sys.stderr, flush=True)
    return rows


def train(model: str, ctx: dict) -> dict:
    out = ctx["work"] / "runs" / model
    base = ["--model", model, "--dataset", DATASET, "--cache-dir", str(ctx["cache"]), "--profile", "paper",
            "--modalities", "t,a,v", *(["--slot", "a=a_w2v"] if model == "deepmsi-mer" else [])]
    cfg_text = subprocess.run([str(MER_PIPE), "train", *base, "--print-config"], capture_output=True, text=True,
                              env={**os.environ, **ENV}, check=True).stdout
    res = run(["train", *base, "--seeds", "0", "--epochs", str(ctx["epochs"]), "--out", str(out), "--overwrite", "--no-progress"],
              ctx["log"])
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").exists() else yaml.safe_load(cfg_text)
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    print(f"  train {model}: {res['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return {"model": model, **res, "profile": cfg.get("profile"), "slots": cfg.get("slots"),
            "model_config": cfg.get("model_config"), "trainer": cfg.get("trainer"),
            "inputs": _inputs(metrics, out), "test_weighted_f1": _wf1(metrics)}


def _inputs(metrics: dict, out: Path) -> dict | None:
    """What the run recorded about its input features (widths, frames), wherever it keeps them."""
    for source in (metrics, *(json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "metrics.json")):
        for key in ("features", "inputs", "input_dims", "dims"):
            if isinstance(source, dict) and key in source:
                return source[key]
    return None


def _wf1(metrics: dict) -> float | None:
    test = (metrics.get("aggregate") or {}).get("test") or {}
    v = test.get("weighted_f1") if isinstance(test, dict) else None
    return v.get("mean") if isinstance(v, dict) else v


def widths(cache: Path) -> dict:
    """Per locked slot: extractor, dim, layout and the stored array shape of the first shard."""
    from mer_pipe.cache.shard import read_shard
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(cache)
    out = {}
    for slot, lock in sorted(store.read_lock(DATASET).items()):
        first = sorted(store.feature_dir(DATASET, lock["extractor"], lock["key"]).glob("shard-*.h5"))[0]
        sh = read_shard(first)
        shape = list(sh.values.shape) if hasattr(sh.values, "shape") else [len(sh.values), "ragged", lock["dim"]]
        out[slot] = {"extractor": lock["extractor"], "dim": lock["dim"], "layout": lock.get("layout"),
                     "shard_values_shape": shape, "dtype": str(getattr(sh.values, "dtype", "?"))}
    return out


def finetunes(cache: Path) -> dict:
    out = {}
    for p in sorted(cache.rglob("finetune.json")):
        m = json.loads(p.read_text())
        out[m["slot"]] = {"wall_s": round(m["wall_seconds"], 1), "n_train": m["n_train"], "n_dev": m["n_dev"],
                          "epochs": m["config"].get("epochs", 2), "best_epoch": m["record"].get("best_epoch")}
    return out


def meld_mean_seconds() -> float | None:
    def sec(t: str) -> float:
        h, m, s = t.replace(",", ".").split(":")
        return 3600 * int(h) + 60 * int(m) + float(s)

    d = []
    for split in ("train", "dev", "test"):
        path = MELD_CSVS / f"{split}_sent_emo.csv"
        if path.is_file():
            for r in csv.DictReader(open(path, encoding="utf-8", errors="replace")):
                x = sec(r["EndTime"]) - sec(r["StartTime"])
                if 0 < x < 60:
                    d.append(x)
    return sum(d) / len(d) if d else None


def media_scale(work: Path, corpus: Path) -> dict:
    """Mean clip seconds of the synthetic corpus; decode seconds per clip, synthetic vs 1280x720 H.264."""
    from mer_pipe.extractors.media import load_audio, load_frames

    clips = sorted(corpus.rglob("*.mp4"))[:12]
    big = work / "720p.mp4"
    if not big.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=24:duration=3.2",
                        "-f", "lavfi", "-i", "sine=frequency=220:duration=3.2", "-c:v", "libx264", "-pix_fmt",
                        "yuv420p", "-c:a", "aac", "-shortest", str(big)], check=True)

    def per_clip(paths, fn) -> float:
        fn(paths[0])
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        return (time.perf_counter() - t0) / len(paths)

    synth_s = sum(len(load_audio(c)) for c in clips) / 16000 / len(clips)
    return {"synth_mean_audio_s": round(synth_s, 3), "meld_mean_audio_s": meld_mean_seconds(),
            "frames_decode_s_synth_clip": per_clip(clips, load_frames), "frames_decode_s_720p": per_clip([big] * 5, load_frames)}


def project(rows: list[dict], fts: dict, scale: dict, workers: int) -> dict:
    """Wall seconds of a full run per preset and precision: sum over slots of fixed + N * work / workers."""
    out = {}
    for target, t in TARGETS.items():
        audio_s = t["mean_audio_s"] or scale["meld_mean_audio_s"] or scale["synth_mean_audio_s"]
        a_ratio = audio_s / scale["synth_mean_audio_s"]
        v_ratio = scale["frames_decode_s_720p"] / scale["frames_decode_s_synth_clip"]
        for preset in CKPTS:
            for precision in ("fp32", "bf16"):
                total, parts = 0.0, {}
                for slot in SLOTS:
                    cands = [r for r in rows if r["preset"] in (preset, "paper") and r["slot"] == slot
                             and r["precision"] == (precision if slot != "a" else "fp32")]
                    cands = [r for r in cands if r["preset"] == preset] or cands
                    if not cands:
                        continue
                    r = cands[0]
                    dec = r["decode_s"] * (a_ratio if slot.startswith("a") else v_ratio if slot == "v" else 1.0)
                    fwd = r["forward_s"] * (a_ratio if slot.startswith("a") else 1.0)
                    s = r["fixed_s"] + t["utterances"] * (dec + fwd) / r["utterances"] / workers
                    if preset == "deepmsi" and slot in fts:
                        f = fts[slot]
                        s += f["wall_s"] * t["train"] / f["n_train"] * (a_ratio if slot.startswith("a") else 1.0)
                    parts[slot] = round(s)
                    total += s
                out[f"{target} {preset} {precision}"] = {"hours": round(total / 3600, 2), "slot_seconds": parts}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 dialogues, tiny widths of the same families")
    ap.add_argument("--dialogues", type=int, default=None, help="synthetic MELD dialogues (default 20, quick 3)")
    ap.add_argument("--note", default=None, help="recorded in the JSON (e.g. why --dialogues was reduced)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 2, quick 1)")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes (1 torch thread each)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default /tmp/mer-bench-paper[-quick])")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/bench_paper_preset.json; "
                    "quick: <work>/bench_paper_preset.json)")
    args = ap.parse_args(argv)
    import shutil

    from mer_pipe.extractors.archs import PUBLISHED, build_random_checkpoint

    dialogues = args.dialogues or (3 if args.quick else 20)
    work = args.work or Path("/tmp/mer-bench-paper" + ("-quick" if args.quick else ""))
    out_json = args.out or (work / "bench_paper_preset.json" if args.quick else HERE / "results" / "bench_paper_preset.json")
    for sub in ("corpus", "cache", "runs"):
        shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    ctx = {"work": work, "cache": work / "cache", "workers": args.workers, "shard_size": 8 if args.quick else 32,
           "log": work / "commands.log", "weights": {}, "calls": []}
    ctx["log"].write_text("")
    ctx["epochs"] = args.epochs or (1 if args.quick else 2)
    texts = None
    if (MELD_CSVS / "train_sent_emo.csv").is_file():
        texts = [r["Utterance"] for r in csv.DictReader(open(MELD_CSVS / "train_sent_emo.csv", encoding="utf-8",
                                                             errors="replace"))]
    builds = {}
    for name in PUBLISHED:
        t0 = time.perf_counter()
        path = build_random_checkpoint(name, work / ("weights-tiny" if args.quick else "weights") / name,
                                       tiny=args.quick, texts=texts)
        ctx["weights"][name] = path
        builds[name] = {"published": PUBLISHED[name], "path": str(path), "seconds": round(time.perf_counter() - t0, 1),
                        "mb": round(sum(f.stat().st_size for f in path.iterdir()) / 1e6, 1)}
    synth = ["synth", "meld", "--out", str(work / "corpus"), "--dialogues", str(dialogues)]
    synth += ["--text-from", str(MELD_CSVS)] if MELD_CSVS.is_dir() else []
    run(synth, ctx["log"])
    run(["prepare", "meld", "--root", str(work / "corpus"), "--name", DATASET, "--cache-dir", str(ctx["cache"])],
        ctx["log"])
    rows, trains = [], []
    for preset in CKPTS:  # fp32 and bf16 (a slot per run; quick: all at once), then fp32 re-locked (cached)
        for precision in ("fp32", "bf16"):
            slots = [s for s in SLOTS if precision == "fp32" or s != "a"]  # openSMILE has no autocast
            for group in ([slots] if args.quick else [[s] for s in slots]):
                rows += features(preset, group, precision, ctx)
        features(preset, list(SLOTS), "fp32", ctx)
        ws = widths(ctx["cache"])
        ctx.setdefault("widths", {})[preset] = ws
        for model in (MODELS[:3] if preset == "paper" else MODELS[3:]):
            trains.append(train(model, ctx))
    fts = finetunes(ctx["cache"])
    scale = media_scale(work, work / "corpus")
    import torch

    report = {
        "quick": args.quick, "dialogues": dialogues, "train_epochs": ctx["epochs"], "seeds": [0], "utterances": rows[0]["utterances"],
        "corpus": "mer-pipe synth meld" + (" --text-from MELD CSVs (real dialogues and text)" if texts else ""),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "workers": args.workers,
                    "torch_threads_per_worker": 1, "client_threads_max": 2, "nice": os.nice(0)},
        "note_run": args.note, "checkpoints": builds, "features": rows, "feature_calls": ctx["calls"], "finetune": fts, "widths": ctx["widths"], "train": trains,
        "media_scale": scale, "projection": project(rows, fts, scale, args.workers),
        "projection_notes": [IEMOCAP_NOTE, "projection = per slot fixed seconds (start-up, model loads) + N x "
                             "measured decode+forward worker-seconds per utterance / workers; audio scaled by mean "
                             "clip length, video decoding by a 1280x720 H.264 clip; bf16 uses fp32 for openSMILE"],
        "total_s": round(time.perf_counter() - t_all, 1),
        "note": "random weights: time, memory and sizes are the real architectures', features carry no emotion "
                "information; deepmsi's a and v stages are the paper preset's (same cache key: cached)",
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return report


def format_report(r: dict) -> str:
    head = ("preset", "slot", "prec", "dim", "utts", "utt/s wall", "utt/s steady", "decode s", "fwd s",
            "worker RSS MB", "MB/1k utt")
    rows = [head] + [(f["preset"], f["slot"], f["precision"], str(f["dim"]), str(f["utterances"]),
                      str(f.get("utt_per_s_wall")), str(f.get("utt_per_s_steady")), str(f["decode_s"]),
                      str(f["forward_s"]), str(max(f["worker_peak_rss_mb"], default="-")),
                      str(f.get("mb_per_1000_utt"))) for f in r["features"]]
    widths_ = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths_)) for row in rows]
    lines += [f"train {t['model']}: {t['wall_s']} s, inputs "
              + ", ".join(f"{m}={v.get('dim')}" for m, v in (t["inputs"] or {}).items()) for t in r["train"]]
    lines += [f"projection {k}: {v['hours']} h" for k, v in r["projection"].items()]
    lines.append(f"total {r['total_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--cli-child":
        cli_child(sys.argv[2], sys.argv[3:])
    else:
        main()
