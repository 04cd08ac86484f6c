"""The memorised-training-feature leak of fine-tuned features and its remedies, on MELD text (issue 19).

    python bench/bench_finetune_leak.py            # the full comparison (hours of CPU; resumable: rerun it)
    python bench/bench_finetune_leak.py --quick    # plumbing: a tiny MELD, 1 seed, short runs (minutes)

For each corpus (all of MELD text, and a seeded ~5,000-utterance subset of its training dialogues made with
`prepare meld --train-utterances 5000 --subset-seed 0`; dev and test are the full MELD ones), five feature sets
of the packaged all-MiniLM-L6-v2, each in its own lock slot:

    t_frozen   the frozen encoder
    t_ft2      fine-tuned 2 epochs (dev picks the epoch)        t_ft5      fine-tuned 5 epochs
    t_cf5e2    cross-fitted, 5 folds, 2 epochs                  t_cf5e5    cross-fitted, 5 folds, 5 epochs

The encoder's train/dev W-F1 (and out-of-fold W-F1 for the cross-fitted sets) comes from the checkpoints'
records (finetune.json `scores`). Then ONE `mer-pipe sweep` per corpus over model x feature set (MLP, BiGRU and the
four models; 3 seeds) with `--select-on cv5`: every (model, feature set, seed) is a standard run (dev selection,
test once) plus 5 fits on folds of the training dialogues. Per model, the feature set dev would choose, the one
CV would choose (over all sets, and over the frozen + cross-fitted sets only, where CV is honest), and the one test
ranks first (read after the choices, for the agreement column only). CPU seconds of every step are recorded.

Everything is cached (features, checkpoints, sweep runs): rerunning the command after an interruption resumes it.
Writes bench/results/finetune_leak.json (or --out) after every step.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MELD = Path(os.environ.get("MER_PIPE_MELD_CSV") or ROOT.parent / "shared" / "data" / "meld")
OUT = ROOT / "bench" / "results" / "finetune_leak.json"
MODELS = ("mlp", "bigru", "ts-gcl", "ar-iigcn", "jv-icl", "deepmsi-mer")
BASE = {"lr": 5e-5, "batch_size": 32, "warmup": 0.1, "weight_decay": 0.01, "pooling": "mean", "seed": 0,
        "max_length": 64}
README_FINETUNE_UTT_S = 41.6  # README "Fine-tuned text features on real MELD": MiniLM, batch 32, 2 threads


def settings(epochs: list[int], folds: int, crossfit_epochs: list[int] | None = None) -> list[dict]:
    out = [{"slot": "t_frozen", "kind": "frozen", "epochs": 0, "folds": 0}]
    out += [{"slot": f"t_ft{e}", "kind": "fine-tuned", "epochs": e, "folds": 0} for e in epochs]
    out += [{"slot": f"t_cf{folds}e{e}", "kind": "cross-fitted", "epochs": e, "folds": folds}
            for e in (epochs if crossfit_epochs is None else crossfit_epochs)]
    return out


def feature_sets(s: dict) -> list[str]:
    sets = [f"{s['slot']}.extractor=text-hf"]
    if s["kind"] == "frozen":
        return sets
    opts = {**BASE, "epochs": s["epochs"], **({"crossfit": s["folds"]} if s["folds"] else {})}
    return sets + [f"{s['slot']}.finetune=true", *[f"{s['slot']}.finetune.{k}={v}" for k, v in opts.items()]]


def tiny_meld(dest: Path, per_split: dict[str, int]) -> Path:
    """The first N dialogues of each split of the MELD CSVs (quick mode)."""
    dest.mkdir(parents=True, exist_ok=True)
    for split, n in per_split.items():
        with open(MELD / f"{split}_sent_emo.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        head, body = rows[0], rows[1:]
        di = head.index("Dialogue_ID")
        keep = set(sorted({r[di] for r in body}, key=int)[:n])
        with open(dest / f"{split}_sent_emo.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([head, *[r for r in body if r[di] in keep]])
    return dest


def encoder_record(store, dataset: str, slot: str) -> dict:
    """Encoder scores (percent) and CPU seconds of every checkpoint behind a slot."""
    from mer_pipe.cache.checkpoints import checkpoint_dir
    from mer_pipe.cache.finetune_gap import slot_finetune

    sf = slot_finetune(store, dataset, slot)
    if sf is None:
        return {}
    pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
    spec = store.read_spec(dataset, store.read_lock(dataset)[slot]["extractor"], sf.feature_key)
    keys = list(spec.get("finetune_keys") or [spec.get("upstream")])
    metas = [json.loads((checkpoint_dir(store, dataset, k) / "finetune.json").read_text()) for k in keys]
    return {"train_rows_wf1": pct(sf.train_rows), "dev_wf1": pct(sf.dev), "gap_points": pct(sf.gap),
            "all_train_encoder": {"train_wf1": pct(sf.all.train), "dev_wf1": pct(sf.all.dev),
                                  "best_epoch": sf.all.best_epoch} if sf.all else None,
            "folds": [{"fold": list(f.fold or ()), "in_fold_train_wf1": pct(f.train), "dev_wf1": pct(f.dev),
                       "out_of_fold_wf1": pct(f.heldout), "best_epoch": f.best_epoch} for f in sf.folds],
            "checkpoints": {m["key"]: {"wall_seconds": m["wall_seconds"], "train_seconds": m["record"]["train_seconds"],
                                       "score_seconds": (m.get("scores") or {}).get("seconds"),
                                       "utt_per_s": m["record"]["utt_per_s"], "n_train": m["n_train"],
                                       "dev_wf1_by_epoch": [pct(e["dev_weighted_f1"]) for e in m["record"]["epochs"]],
                                       "with_patience": {p: early_stop(m["record"]["epochs"], p) for p in (1, 2)}}
                            for m in metas}}


def early_stop(epochs: list[dict], patience: int) -> dict:
    """What `finetune.patience=N` (same maximum, same LR schedule) does on this dev curve: the epoch it stops
    after, the epoch it keeps, and whether that is the encoder the full budget kept (then the features are
    the same) -- read from the log, not trained again."""
    best, best_f1, stop = None, None, len(epochs)
    for i, e in enumerate(epochs, 1):
        if best_f1 is None or e["dev_weighted_f1"] > best_f1:
            best, best_f1 = i, e["dev_weighted_f1"]
        elif i - best >= patience:
            stop = i
            break
    full = max(range(len(epochs)), key=lambda i: (epochs[i]["dev_weighted_f1"], -i)) + 1
    return {"stops_after_epoch": stop, "keeps_epoch": best, "same_encoder_as_full_budget": best == full,
            "epochs_saved": len(epochs) - stop}


def choices(table: dict[str, dict], slots: list[str], key: str) -> str | None:
    """The slot with the best mean `key` (ties: the earlier slot); None when a score is missing."""
    have = [s for s in slots if table.get(s, {}).get(key) is not None]
    return max(have, key=lambda s: (table[s][key], -slots.index(s))) if have else None


def pair_agreement(table: dict[str, dict], slots: list[str], key: str) -> float | None:
    """Share of feature-set pairs that `key` orders as test does."""
    pairs = [(a, b) for i, a in enumerate(slots) for b in slots[i + 1:]
             if all(table.get(s, {}).get(k) is not None for s in (a, b) for k in (key, "test"))]
    if not pairs:
        return None
    same = sum((table[a][key] > table[b][key]) == (table[a]["test"] > table[b]["test"]) for a, b in pairs)
    return round(same / len(pairs), 3)


def summarise(state: dict, sets: list[dict]) -> dict:
    """Per model: the table over feature sets and which set dev / CV / test put first."""
    slots = [s["slot"] for s in sets]
    honest = [s["slot"] for s in sets if s["kind"] != "fine-tuned"]
    out: dict = {}
    for r in state["configs_table"]:
        model, slot = r["model"], r["label"].split("slots.t=")[-1].split()[0]
        pct = lambda a: None if not a else round(100 * a["mean"], 2)  # noqa: E731
        out.setdefault(model, {"by_features": {}})["by_features"][slot] = {
            "dev": pct(r["sel_weighted_f1"]), "cv": pct(r.get("cv_weighted_f1")), "test": pct(r["test_weighted_f1"]),
            "test_std": None if not r["test_weighted_f1"] else round(100 * r["test_weighted_f1"]["std"], 2),
            "train_seconds": round(r["seconds"], 1), "cv_seconds": round(r.get("cv_seconds") or 0.0, 1)}
    for model, m in out.items():
        t = m["by_features"]
        m["dev_choice"], m["cv_choice"] = choices(t, slots, "dev"), choices(t, slots, "cv")
        m["cv_choice_frozen_or_crossfit"], m["test_best"] = choices(t, honest, "cv"), choices(t, slots, "test")
        m["dev_agrees_with_test"] = m["dev_choice"] == m["test_best"]
        m["cv_agrees_with_test"] = m["cv_choice"] == m["test_best"]
        m["cv_honest_agrees_with_test"] = m["cv_choice_frozen_or_crossfit"] == choices(t, honest, "test")
        m["dev_honest_agrees_with_test"] = choices(t, honest, "dev") == choices(t, honest, "test")
        m["pairwise_order_agreement"] = {"dev": pair_agreement(t, slots, "dev"), "cv": pair_agreement(t, slots, "cv"),
                                         "dev_frozen_or_crossfit": pair_agreement(t, honest, "dev"),
                                         "cv_frozen_or_crossfit": pair_agreement(t, honest, "cv")}
    return out


README_EXTRACT_UTT_S = 194.4  # README "Feature run": text-hf all-MiniLM-L6-v2, pipeline utt/s
README_MODELS_3SEEDS_S = 748.0  # bench/results/finetune.json: the six models x 3 seeds on full MELD text, 2 threads


def projection(report: dict, epochs: list[int], folds: int, cv: int, subset: int) -> dict:
    """CPU seconds of the full run on this 2-core machine (idle, 2 torch threads), from the README's rates and the
    quick run's ratio of scoring (inference) to training speed; every term is listed so it can be checked."""
    from mer_pipe.pipeline.corpus.prepare import PrepareReport
    from mer_pipe.pipeline.corpus.recipes import get_recipe
    from mer_pipe.pipeline.corpus.subset import subset_train

    utts = get_recipe("meld").collect(MELD, PrepareReport("x", "meld", str(MELD)), probe=False, manifest_file=None)
    cks = [c for corpus in report["corpora"].values() for f in corpus["features"].values()
           for c in (f.get("checkpoints") or {}).values() if c.get("score_seconds")]
    score_x = sum(c["n_train"] / c["score_seconds"] for c in cks) / sum(c["utt_per_s"] for c in cks) if cks else 8.0
    out: dict = {"assumptions": {"finetune_utt_s": README_FINETUNE_UTT_S, "extract_utt_s": README_EXTRACT_UTT_S,
                                 "scoring_speed_vs_training": round(score_x, 1),
                                 "six_models_3_seeds_full_meld_s": README_MODELS_3SEEDS_S,
                                 "cv_fits_in_standard_fits": cv - 1}}  # K fits on (K-1)/K of train
    total = 0.0
    for corpus, n_train in (("full", None), ("subset", subset)):
        kept = subset_train(utts, n_train, 0)[0] if n_train else utts
        tr = sum(u.split == "train" for u in kept)
        ft = lambda n, e: n * e / README_FINETUNE_UTT_S  # noqa: E731
        score = tr / (README_FINETUNE_UTT_S * score_x)
        ex_all, ex_train = len(kept) / README_EXTRACT_UTT_S, tr / README_EXTRACT_UTT_S
        sets = {"t_frozen": ex_all}
        for e in epochs:
            sets[f"t_ft{e}"] = ft(tr, e) + score + ex_all
            sets[f"t_cf{folds}e{e}"] = folds * (ft(tr * (folds - 1) / folds, e) + score) + ex_train
        scale = tr / 9989 * 0.9 + 0.1  # downstream epochs scale with the training split; dev/test scoring does not
        per_set = README_MODELS_3SEEDS_S * scale * (1 + (cv - 1))  # the standard runs + K fits on (K-1)/K
        out[corpus] = {"train_utterances": tr, "features_s": {k: round(v) for k, v in sets.items()},
                       "sweep_s_per_feature_set": round(per_set), "sweep_s": round(per_set * len(sets))}
        total += sum(sets.values()) + per_set * len(sets)
    out["total_s"], out["total_h"] = round(total), round(total / 3600, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="plumbing: tiny MELD, epochs 1,2, 2 folds, cv2, 1 seed")
    ap.add_argument("--corpora", default="full,subset", help="full and/or subset")
    ap.add_argument("--subset", type=int, default=5000, help="training utterances of the subset (whole dialogues)")
    ap.add_argument("--epochs", default=None, help="fine-tune epoch budgets (default 2,5)")
    ap.add_argument("--crossfit-epochs", default=None, help="epoch budgets of the cross-fitted sets (default: --epochs)")
    ap.add_argument("--folds", type=int, default=None, help="cross-fit folds (default 5)")
    ap.add_argument("--cv", type=int, default=None, help="CV folds of the selection (default 5)")
    ap.add_argument("--models", default=None, help=f"default {','.join(MODELS)}")
    ap.add_argument("--seeds", default=None, help="default 0,1,2")
    ap.add_argument("--executor", default=None, help="sweep executor: dask (default; 2 workers x 1 thread) or serial")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for fine-tunes and extraction")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache (sweeps go to CACHE-sweeps/)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    q = args.quick
    epochs = [int(x) for x in (args.epochs or ("1,2" if q else "2,5")).split(",")]
    folds, cv = args.folds or (2 if q else 5), args.cv or (2 if q else 5)
    models = (args.models or ("mlp,bigru,ar-iigcn" if q else ",".join(MODELS))).split(",")
    seeds = args.seeds or ("0" if q else "0,1,2")
    executor = args.executor or ("serial" if q else "dask")
    cache = args.cache_dir or ROOT / "runs" / ("bench-finetune-leak-quick" if q else "bench-finetune-leak-cache")
    out = args.out or (OUT.with_name("finetune_leak_quick.json") if q else OUT)
    subset_n = 120 if q else args.subset
    quick_sets = ["trainer.epochs=2", "trainer.patience=0"] if q else []

    import torch

    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.common.devices import resolve_device
    from mer_pipe.pipeline import api
    from mer_pipe.pipeline.corpus.prepare import prepare

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    if not (MELD / "train_sent_emo.csv").is_file():
        sys.exit(f"MELD CSVs not found in {MELD}")
    cf_epochs = [int(x) for x in args.crossfit_epochs.split(",")] if args.crossfit_epochs else None
    sets = settings(epochs, folds, cf_epochs)
    report: dict = {"benchmark": __doc__.split("\n\n")[1].strip(), "command": " ".join([Path(sys.argv[0]).name,
                    *(argv if argv is not None else sys.argv[1:])]), "quick": q, "device": device,
                    "torch_threads": args.threads, "machine": platform.platform(), "cpus": os.cpu_count(),
                    "fine_tune_base": BASE, "epochs": epochs, "crossfit_epochs": cf_epochs or epochs, "crossfit_folds": folds, "cv_folds": cv,
                    "models": models, "seeds": seeds, "executor": executor, "sweep_trainer_sets": quick_sets,
                    "corpora": {}, "status": "running", "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out)

    try:  # a rerun resumes from the caches; keep the first run's wall times
        earlier = json.loads(out.read_text())["corpora"]
    except (OSError, ValueError, KeyError):
        earlier = {}
    root = tiny_meld(cache / "quick-meld", {"train": 24, "dev": 8, "test": 8}) if q else MELD
    store = FeatureStore(cache)
    for corpus in args.corpora.split(","):
        name = "meld-text-leak" if corpus == "full" else f"meld-text-{subset_n}"
        t0 = time.perf_counter()
        rep = prepare("meld", root, name=name, cache_dir=cache,
                      train_utterances=None if corpus == "full" else subset_n, subset_seed=None if corpus == "full" else 0)
        c = report["corpora"].setdefault(corpus, {"dataset": name, "subset": rep.subset, "splits": rep.splits,
                                                  "prepare_seconds": time.perf_counter() - t0, "features": {}})
        save()
        for s in sets:  # features (fine-tunes run in this process; cached on a rerun)
            t0 = time.perf_counter()
            api.extract(name, only=s["slot"], sets=feature_sets(s), cache_dir=cache, executor="serial", device=device,
                        progress=False, log=lambda line: None)
            wall = time.perf_counter() - t0
            enc = encoder_record(store, name, s["slot"])
            prev = ((earlier.get(corpus) or {}).get("features") or {}).get(s["slot"], {})
            c["features"][s["slot"]] = {**s, "sets": feature_sets(s), **enc,
                                        "wall_seconds_first_run": prev.get("wall_seconds_first_run", wall)}
            print(f"{corpus} {s['slot']}: encoder train rows {enc.get('train_rows_wf1')} dev {enc.get('dev_wf1')} "
                  f"gap {enc.get('gap_points')}  ({wall:.0f}s)", flush=True)
            save()
        t0 = time.perf_counter()
        res = api.sweep(None, name, grid=[f"model={','.join(models)}", f"slots.t={','.join(s['slot'] for s in sets)}"],
                        seeds=seeds, modalities="t", sets=quick_sets, select_on=f"cv{cv}", executor=executor,
                        threads=1, device=device, cache_dir=cache, out=cache.parent / f"{cache.name}-sweeps" / name,
                        log=lambda line: print(line, flush=True) if line.startswith(("NOTE", "sweep:")) else None)
        wall = time.perf_counter() - t0
        prev = (earlier.get(corpus) or {}).get("sweep") or {}
        c["sweep"] = {"dir": str(res.sweep_dir), "wall_seconds_this_invocation": wall,
                      "wall_seconds_first_run": prev.get("wall_seconds_first_run", prev.get("wall_seconds", wall)),
                      "failed": len(res.failed), "notes": res.state.get("notes", [])}
        c["models"] = summarise(res.state, sets)
        save()
    if q:  # what the full command would cost here
        report["projection_full_run"] = projection(report, [2, 5], 5, 5, 5000)
    report["status"] = "complete"
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    save()
    for corpus, c in report["corpora"].items():
        print(f"\n{corpus} ({c['dataset']}): model | " + " | ".join(s["slot"] for s in sets) + " | dev / cv / test pick")
        for model, m in c["models"].items():
            cells = [f"{m['by_features'][s['slot']]['test']}" for s in sets]
            print(f"  {model} | " + " | ".join(cells) + f" | {m['dev_choice']} / {m['cv_choice']} / {m['test_best']}")
    if q:
        pj = report["projection_full_run"]
        print(f"projected full run on this machine (idle, 2 threads): {pj['total_h']} h "
              f"(full: features {sum(pj['full']['features_s'].values()) / 3600:.1f} h + sweep {pj['full']['sweep_s'] / 3600:.1f} h; "
              f"subset: features {sum(pj['subset']['features_s'].values()) / 3600:.1f} h + sweep "
              f"{pj['subset']['sweep_s'] / 3600:.1f} h)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
