"""Text-only MELD quality benchmark as a sweep: real MELD utterances, offline MiniLM text features, every model,
settings chosen by `mer-pipe sweep` on dev.

    python bench/bench_meld_text.py            # the sweep below, 3 seeds, + the serial vs dask timing
    python bench/bench_meld_text.py --quick    # 1 seed, 2 epochs, no timing: checks the plumbing

Reads the MELD CSVs from ../shared/data/meld (relative to the project root; no clips needed: the meld recipe
prepares a root without clip folders as text-only), prepares dataset `meld-text`, extracts the `t` slot of the
offline preset (all-MiniLM-L6-v2, packaged) through the pipeline, then runs SWEEP (below) with `api.sweep` on
a local dask cluster: every (model, grid point, seed) is one run, standard split, model selection (epoch and
config) on dev, test reported for the config dev chose. Rerunning reuses finished runs (runs/ is git-ignored).
Then it times a small sweep serially and on the local dask cluster, alternating, medians of --repeats.
Writes bench/results/meld_text_quality.json. Target: each of the four published models >= 58.0 test weighted F1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MELD = ROOT.parent / "shared" / "data" / "meld"
OUT = ROOT / "bench" / "results" / "meld_text_quality.json"
DATASET = "meld-text"
PUBLISHED = ("ts-gcl", "ar-iigcn", "jv-icl", "deepmsi-mer")
BASELINES = ("mlp", "bigru")
TARGET_WF1 = 58.0
# The sweep: grid blocks over the models' own train defaults (their union; selection is per model). For every
# model the default learning rate competes with the paper's (models.md §8.6), so the defaults are re-decided on
# dev by the tool on every rerun (`default_is_chosen` in the JSON); plus the earlier hand choices: d 128 vs 256
# for AR-IIGCN (the paper lr is tried at d=128), JV-ICL's standardize=false, the MLP's learning rate.
SWEEP = {
    "dataset": DATASET,
    "modalities": ["t"],
    "select_on": "dev",
    "grid": [
        {"model": ["mlp"], "trainer.lr": [5e-4, 1e-3]},
        {"model": ["bigru"]},
        {"model": ["ts-gcl"], "trainer.lr": [1e-4, 5e-4]},
        {"model": ["ar-iigcn"], "model.d": [128, 256]},
        {"model": ["ar-iigcn"], "model.d": [128], "trainer.lr": [1e-4]},
        {"model": ["jv-icl"], "trainer.lr": [1e-4, 5e-4]},
        {"model": ["jv-icl"], "trainer.standardize": [True]},
        {"model": ["deepmsi-mer"], "trainer.lr": [1e-4, 3e-4]},
    ],
}
GRID_NOTE = ("13 configs x 3 seeds: paper lr vs default lr for each published model (the paper's epochs are not "
             "used: every run has the default epoch budget and early stopping on dev), d 128/256 for AR-IIGCN "
             "(the paper lr at d=128), standardize=true for JV-ICL, lr 5e-4/1e-3 for the MLP, defaults for the BiGRU")
# serial vs local dask cluster on a small sweep (4 runs), timed alternately
TIMING = {"model": "mlp", "grid": ["trainer.lr=5e-4,1e-3"], "seeds": "0,1",
          "sets": ["trainer.epochs=3", "trainer.patience=0"]}


def prepare_features(cache: Path, device: str) -> float:
    """Prepare MELD text-only and extract the offline `t` slot (a second run reuses the cache)."""
    from mer_pipe.pipeline import api

    if not (MELD / "train_sent_emo.csv").is_file():
        sys.exit(f"MELD CSVs not found in {MELD}; put train/dev/test_sent_emo.csv there")
    t0 = time.perf_counter()
    api.prepare("meld", MELD, name=DATASET, cache_dir=cache)
    api.extract(DATASET, only="t", cache_dir=cache, device=device, executor="serial")
    return time.perf_counter() - t0


def _pct(agg: dict | None, key: str = "mean") -> float | None:
    return None if not agg else 100 * agg[key]


def is_default(model: str, values: dict) -> bool:
    """Whether a grid point's values are the model's own defaults (`train_defaults`, config class defaults)."""
    from mer_pipe.models import _all  # noqa: F401  (registers the models)
    from mer_pipe.models.registry import MODELS as REGISTRY
    from mer_pipe.pipeline.train.loop import TrainConfig

    cls = REGISTRY.get(model)
    for key, value in values.items():
        part, _, name = key.partition(".")
        if part == "trainer" and value != cls.train_defaults.get(name, getattr(TrainConfig(), name)):
            return False
        if part == "model" and name and value != getattr(cls.config_cls(), name):
            return False
    return True


def model_result(sweep_dir: Path, state: dict, model: str) -> dict:
    """The chosen config of `model` in the old per-model shape, plus every config's dev score (for selection)."""
    chosen = state["selection"]["by_model"][model]
    cdir = sweep_dir / chosen["dir"]
    m = json.loads((cdir / "metrics.json").read_text())
    t, d = m["aggregate"]["test"], m["aggregate"]["dev"]
    spe = [r["seconds_per_epoch"] for r in m["runs"]]
    rows = [r for r in state["configs_table"] if r["model"] == model]
    return {
        "chosen_config": chosen["label"],
        "default_is_chosen": is_default(model, next(c["values"] for c in state["configs"] if c["id"] == chosen["config"])),
        "test_accuracy_mean": 100 * t["accuracy"]["mean"], "test_accuracy_std": 100 * t["accuracy"]["std"],
        "test_weighted_f1_mean": 100 * t["weighted_f1"]["mean"], "test_weighted_f1_std": 100 * t["weighted_f1"]["std"],
        "test_macro_f1_mean": 100 * t["macro_f1"]["mean"],
        "dev_weighted_f1_mean": 100 * d["weighted_f1"]["mean"], "dev_weighted_f1_std": 100 * d["weighted_f1"]["std"],
        "seconds_per_epoch": sum(spe) / len(spe), "train_seconds": sum(r["seconds"] for r in m["runs"]),
        "best_epochs": [r["best_epoch"] for r in m["runs"]],
        "meets_target": model not in PUBLISHED or 100 * t["weighted_f1"]["mean"] >= TARGET_WF1,
        "run_dir": str(cdir),
        "configs_dev": [{"config": r["label"], "dev_weighted_f1_mean": _pct(r["sel_weighted_f1"]),
                         "dev_weighted_f1_std": _pct(r["sel_weighted_f1"], "std")} for r in rows],
    }


def time_executors(cache: Path, repeats: int) -> dict:
    """Wall time of the same small sweep serially (torch on all cores, and on one thread) and on a local dask
    cluster (cluster start-up included), alternating so all see the same machine load; fresh sweep dirs, so
    nothing is reused."""
    from mer_pipe.pipeline import api

    base = ROOT / "runs" / "bench-meld-text" / "timing"
    variants = {"serial": {"executor": "serial", "threads": os.cpu_count()}, "dask": {"executor": "dask"},
                "serial_1thread": {"executor": "serial", "threads": 1}}
    walls: dict[str, list[float]] = {k: [] for k in variants}
    metrics: dict[str, dict] = {}
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    for i in range(repeats):
        for name, kw in variants.items():
            out = base / f"{name}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            res = api.sweep(TIMING["model"], DATASET, grid=TIMING["grid"], seeds=TIMING["seeds"], sets=TIMING["sets"],
                            modalities="t", device="cpu", cache_dir=cache, out=out, log=lambda s: None, **kw)
            walls[name].append(time.perf_counter() - t0)
            metrics[name] = {r["label"]: r["sel_weighted_f1"]["mean"] for r in res.state["configs_table"]}
            print(f"timing {name} #{i}: {walls[name][-1]:.1f}s ({res.state['executor']}, "
                  f"{res.state['threads_per_run']} torch thread(s) per run)", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {"sweep": {**TIMING, "runs": 4}, "repeats": repeats, "cores": os.cpu_count(),
            **{f"{k}_seconds": v for k, v in walls.items()}, **{f"{k}_median_s": v for k, v in med.items()},
            "speedup_dask_over_serial": med["serial"] / med["dask"],
            "speedup_dask_over_serial_1thread": med["serial_1thread"] / med["dask"],
            # equal torch threads give equal bits; the thread count itself changes floating-point sums
            "same_dev_scores_dask_vs_serial_1thread": metrics["dask"] == metrics["serial_1thread"],
            "same_dev_scores_serial_all_cores_vs_1thread": metrics["serial"] == metrics["serial_1thread"],
            "setup": "serial: one process, torch on all cores; serial_1thread: one process, one torch thread; dask: "
                     "local cluster, one worker process per core x 1 torch thread, start-up included",
            "load_average_at_start": load, "load_average_at_end": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, no timing (plumbing check)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--executor", default="dask", help="dask (local cluster, default) or serial for the sweep")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats per executor (0 = skip the timing)")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "bench-cache",
                    help="feature cache for the benchmark (runs/ is git-ignored)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import yaml

    from mer_pipe.pipeline import api
    from mer_pipe.pipeline.experiments.runs import format_rows, load_runs, sort_rows

    seeds = "0" if args.quick else args.seeds
    feat_s = prepare_features(args.cache_dir, "cpu")
    print(f"features ready in {feat_s:.0f}s", flush=True)
    timing = None if args.quick or args.repeats < 1 else time_executors(args.cache_dir, args.repeats)
    sweep_dir = ROOT / "runs" / "bench-meld-text" / ("sweep-quick" if args.quick else "sweep")
    spec = {**SWEEP, "seeds": [int(s) for s in seeds.split(",")],
            "set": ["trainer.epochs=2", "trainer.patience=0"] if args.quick else []}
    spec_file = sweep_dir.parent / ("sweep-quick.yaml" if args.quick else "sweep.yaml")
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.perf_counter()
    res = api.sweep(config_file=spec_file, device="cpu", cache_dir=args.cache_dir, out=sweep_dir,
                    executor=args.executor, log=lambda s: print(s, flush=True))
    sweep_s = time.perf_counter() - t0
    models = list(dict.fromkeys(c["model"] for c in res.state["configs"]))
    results = {m: model_result(sweep_dir, res.state, m) for m in models}
    table = format_rows(sort_rows(load_runs([sweep_dir])), "md")
    print(table, flush=True)
    report = {
        "benchmark": "MELD text-only (all-MiniLM-L6-v2 offline features), standard split, configs and epochs selected "
                     "on dev by `mer-pipe sweep`, test reported for the chosen config",
        "quick": args.quick, "seeds": spec["seeds"], "device": "cpu", "machine": platform.platform(),
        "feature_seconds": feat_s, "target_weighted_f1_published_models": TARGET_WF1,
        "sweep": {"definition": spec, "grid_note": GRID_NOTE, "executor": res.state["executor"],
                  "torch_threads_per_run": res.state["threads_per_run"], "runs": sum(res.state["counts"].values()),
                  "reused_runs": res.state["counts"]["reused"], "wall_seconds_this_invocation": sweep_s,
                  "train_seconds_all_runs": sum(r["seconds"] for r in res.state["configs_table"]),
                  "dir": str(sweep_dir)},
        "models": results,
        "runs_table_md": table.splitlines(),
        "executor_timing": timing,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for m, r in results.items():
        print(f"{m:12s} [{r['chosen_config']}] test acc {r['test_accuracy_mean']:5.2f} ± {r['test_accuracy_std']:4.2f}   "
              f"W-F1 {r['test_weighted_f1_mean']:5.2f} ± {r['test_weighted_f1_std']:4.2f}   "
              f"dev W-F1 {r['dev_weighted_f1_mean']:5.2f}   {r['seconds_per_epoch']:5.1f} s/epoch"
              + ("" if r["meets_target"] else f"   BELOW TARGET {TARGET_WF1}"), flush=True)
    if timing:
        print(f"sweep wall time, medians of {timing['repeats']}: serial {timing['serial_median_s']:.1f}s, serial 1 thread "
              f"{timing['serial_1thread_median_s']:.1f}s, local dask {timing['dask_median_s']:.1f}s "
              f"({timing['speedup_dask_over_serial']:.2f}x)", flush=True)
    print(f"wrote {args.out}")
    return 0 if args.quick or all(r["meets_target"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
