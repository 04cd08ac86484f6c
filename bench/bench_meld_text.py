"""Text-only MELD quality benchmark: real MELD utterances, offline MiniLM text features, every model.

    python bench/bench_meld_text.py            # 3 seeds, full schedule (tens of minutes on 2 CPU cores)
    python bench/bench_meld_text.py --quick    # 1 seed, 2 epochs: checks the plumbing

Reads the MELD CSVs from ../shared/data/meld (relative to the project root; no clips needed: the meld
recipe prepares a root without clip folders as text-only), prepares dataset `meld-text`, extracts the
`t` slot of the offline preset (all-MiniLM-L6-v2, packaged) through the pipeline, then trains each model
on the text modality with the standard split, selection on dev, and reports test accuracy and weighted
F1 (mean ± std over seeds) plus seconds per epoch. Writes bench/results/meld_text_quality.json.
Target: each of the four published models >= 58.0 test weighted F1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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
# The models' own defaults are the settings dev selected here (see each model's `train_defaults`): lr 5e-4
# beat 1e-4 and 1e-3 for the graph/fusion models on MiniLM's 384-d input; then d=128 (+ dropout 0.5 for the
# graph models) raised the mean *dev* weighted F1 over 3 seeds for TS-GCL, AR-IIGCN and JV-ICL. TS-GCL's +-10
# window matches the reference GCN. JV-ICL's standardize=false is the one choice dev did not back (single
# seed: dev 54.90 vs 54.97 standardised); it is kept and flagged in the README rather than silently re-tuned.
# Extra per-model overrides for this benchmark (none: it measures the defaults).
SETTINGS: dict[str, list[str]] = {}


def prepare_features(cache: Path, device: str) -> float:
    """Prepare MELD text-only and extract the offline `t` slot (a second run reuses the cache)."""
    from mer_pipe.pipeline import api

    if not (MELD / "train_sent_emo.csv").is_file():
        sys.exit(f"MELD CSVs not found in {MELD}; put train/dev/test_sent_emo.csv there")
    t0 = time.perf_counter()
    api.prepare("meld", MELD, name=DATASET, cache_dir=cache)
    api.extract(DATASET, only="t", cache_dir=cache, device=device, executor="serial")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 epochs (plumbing check; numbers meaningless)")
    ap.add_argument("--models", default=",".join(PUBLISHED + BASELINES), help="comma list of models")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "bench-cache",
                    help="feature cache for the benchmark (runs/ is git-ignored)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import torch

    from mer_pipe.common.devices import resolve_device
    from mer_pipe.pipeline import api

    device = resolve_device(args.device)
    if device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    seeds = "0" if args.quick else args.seeds
    feat_s = prepare_features(args.cache_dir, "cuda" if device.startswith("cuda") else "cpu")
    print(f"features ready in {feat_s:.0f}s", flush=True)
    results: dict[str, dict] = {}
    for model in args.models.split(","):
        sets = SETTINGS.get(model, []) + (["trainer.epochs=2", "trainer.patience=0"] if args.quick else [])
        t0 = time.perf_counter()
        res = api.train(model, DATASET, modalities="t", seeds=seeds, select_on="dev", sets=sets, device=device,
                        out=ROOT / "runs" / "bench-meld-text" / model, overwrite=True, cache_dir=args.cache_dir,
                        log=lambda s: None, progress=False)
        run_dir, m = res.run_dir, res.metrics
        t, d = m["aggregate"]["test"], m["aggregate"]["dev"]
        spe = [r["seconds_per_epoch"] for r in m["runs"]]
        results[model] = {
            "test_accuracy_mean": 100 * t["accuracy"]["mean"], "test_accuracy_std": 100 * t["accuracy"]["std"],
            "test_weighted_f1_mean": 100 * t["weighted_f1"]["mean"], "test_weighted_f1_std": 100 * t["weighted_f1"]["std"],
            "test_macro_f1_mean": 100 * t["macro_f1"]["mean"],
            "dev_weighted_f1_mean": 100 * d["weighted_f1"]["mean"],
            "seconds_per_epoch": sum(spe) / len(spe), "seconds_total": time.perf_counter() - t0,
            "best_epochs": [r["best_epoch"] for r in m["runs"]], "settings": sets,
            "meets_target": model not in PUBLISHED or 100 * t["weighted_f1"]["mean"] >= TARGET_WF1,
            "run_dir": str(run_dir),
        }
        r = results[model]
        print(f"{model:12s} test acc {r['test_accuracy_mean']:5.2f} ± {r['test_accuracy_std']:4.2f}   "
              f"W-F1 {r['test_weighted_f1_mean']:5.2f} ± {r['test_weighted_f1_std']:4.2f}   "
              f"{r['seconds_per_epoch']:6.1f} s/epoch   {r['seconds_total']:6.0f} s total"
              + ("" if r["meets_target"] else f"   BELOW TARGET {TARGET_WF1}"), flush=True)
    report = {
        "benchmark": "MELD text-only (all-MiniLM-L6-v2 offline features), standard split, selected on dev, test reported",
        "quick": args.quick, "seeds": [int(s) for s in seeds.split(",")], "device": device,
        "torch_threads": torch.get_num_threads(), "machine": platform.platform(), "feature_seconds": feat_s,
        "target_weighted_f1_published_models": TARGET_WF1, "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0 if args.quick or all(r["meets_target"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
