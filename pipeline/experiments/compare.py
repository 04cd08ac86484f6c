"""`mer-pipe runs compare A B`: per-class test F1 side by side and whether A's W-F1 edge over B exceeds noise.

Two noises are checked on the seeds both runs share. Utterance noise: a paired bootstrap that resamples the
test utterance ids (the same ids for A and B, and for every seed) and recomputes W-F1 of A minus B, averaged
over seeds. Seed noise: the paired per-seed differences must agree in sign and the mean difference must exceed
the larger std over seeds of either run's test W-F1. Scores come from predictions.csv (one W-F1 per seed over
its pooled test rows), so under kfold10-utterance they can differ slightly from metrics.json's mean over folds.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mer_pipe.common.commands import command
from mer_pipe.common.errors import CacheError, ConfigError

from mer_pipe.pipeline.train.metrics import classification_metrics
from .runs import read_run

DEFAULT_RESAMPLES = 2000
DEFAULT_BOOTSTRAP_SEED = 0
_CHUNK = 250  # resamples per vectorised block: bounds memory at ~CHUNK x utterances x 8 bytes


@dataclass(frozen=True)
class PredictionsFile:
    """A run's predictions.csv: class names (from the p_<class> columns) and seed -> id -> (gold, predicted).
    (Not train.loop.Predictions, the arrays of one fit's view: this is the file of every seed, read back.)"""

    path: Path
    classes: tuple[str, ...]
    by_seed: dict[int, dict[str, tuple[int, int]]]


def read_predictions(run_dir: Path) -> PredictionsFile:
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        raise CacheError(f"{path} does not exist; compare needs run dirs written by `{command('train')}`")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CacheError(f"{path} cannot be read ({type(exc).__name__}); rerun `{command('train')}` for this run") from None
    head = list(rows[0]) if rows else []
    missing = [c for c in ("seed", "id", "gold", "predicted") if c not in head]
    classes = tuple(c[2:] for c in head if c.startswith("p_"))
    if missing or not classes:
        raise CacheError(f"{path} lacks columns {missing or ['p_<class>']}; rerun `{command('train')}` for this run")
    index = {c: i for i, c in enumerate(classes)}
    by_seed: dict[int, dict[str, tuple[int, int]]] = {}
    for n, r in enumerate(rows, start=2):
        try:
            seed, gold, pred = int(r["seed"]), index[r["gold"]], index[r["predicted"]]
        except (KeyError, ValueError, TypeError):
            raise CacheError(f"{path} line {n}: bad seed or a label outside {list(classes)}") from None
        if r["id"] in by_seed.setdefault(seed, {}):
            raise CacheError(f"{path} line {n}: utterance {r['id']} appears twice for seed {seed}")
        by_seed[seed][r["id"]] = (gold, pred)
    return PredictionsFile(path, classes, by_seed)


def weighted_f1_batch(gold: np.ndarray, pred: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """[R] weighted F1 of resamples idx [R, N] of (gold, pred) [N]; equals sklearn f1_score(average="weighted",
    zero_division=0) on each resample (tested), in one bincount instead of R sklearn calls."""
    c2 = n_classes * n_classes
    codes = (gold * n_classes + pred)[idx] + np.arange(idx.shape[0])[:, None] * c2
    cm = np.bincount(codes.ravel(), minlength=idx.shape[0] * c2).reshape(-1, n_classes, n_classes)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    denom = support + predicted
    f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)
    return (f1 * support).sum(axis=1) / np.maximum(support.sum(axis=1), 1)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    seeds: tuple[int, ...]
    n_utterances: int
    per_class: tuple[tuple[str, int, float, float], ...]  # class, test support, F1 of A, F1 of B (mean over seeds)
    wf1_a: dict[int, float]
    wf1_b: dict[int, float]
    diff: float  # mean over seeds of W-F1(A) - W-F1(B)
    ci: tuple[float, float]  # 95% bootstrap interval of diff
    share_a_better: float  # fraction of resamples with A > B
    resamples: int
    bootstrap_seed: int
    seed_std: float  # larger std over seeds of A's and B's W-F1 (0 with one seed)
    agree: int  # seeds whose paired difference has the sign of `diff`
    verdict: str
    warnings: tuple[str, ...]


def _check_same_test_set(pa: PredictionsFile, pb: PredictionsFile, seeds: list[int]) -> list[str]:
    """Sorted test ids, after refusing runs whose classes, test ids, gold labels or seed coverage differ."""
    if pa.classes != pb.classes:
        raise ConfigError(f"{pa.path} and {pb.path} have different classes ({list(pa.classes)} vs {list(pb.classes)}); "
                          "compare runs of one dataset")
    ids_a = set().union(*pa.by_seed.values())
    ids_b = set().union(*pb.by_seed.values())
    if ids_a != ids_b:
        raise ConfigError(f"{pa.path} and {pb.path} have different test sets ({len(ids_a)} vs {len(ids_b)} utterances, "
                          f"{len(ids_a & ids_b)} shared); compare runs of one dataset and protocol")
    for p in (pa, pb):
        for s in seeds:
            if len(p.by_seed[s]) != len(ids_a):
                raise CacheError(f"{p.path}: seed {s} covers {len(p.by_seed[s])} of {len(ids_a)} test utterances; "
                                 f"the file is partial, rerun `{command('train')}` for this run")
    ref = pa.by_seed[seeds[0]]
    bad = [i for p in (pa, pb) for s in seeds for i, (g, _) in p.by_seed[s].items() if g != ref[i][0]]
    if bad:
        raise ConfigError(f"{pa.path} and {pb.path} disagree on the gold label of {len(set(bad))} test utterance(s) "
                          f"(e.g. {bad[0]}); compare runs of one prepared dataset")
    return sorted(ids_a)


def _arrays(p: PredictionsFile, seed: int, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    gp = np.array([p.by_seed[seed][i] for i in ids], dtype=np.int64)
    return gp[:, 0], gp[:, 1]


def _bootstrap(pa: PredictionsFile, pb: PredictionsFile, seeds: list[int], ids: list[str], resamples: int,
               seed: int) -> np.ndarray:
    """[resamples] mean over seeds of W-F1(A) - W-F1(B), the same resampled ids for every seed and run."""
    rng, c, out = np.random.default_rng(seed), len(pa.classes), []
    arrays = [(_arrays(pa, s, ids), _arrays(pb, s, ids)) for s in seeds]
    for start in range(0, resamples, _CHUNK):
        idx = rng.integers(0, len(ids), size=(min(_CHUNK, resamples - start), len(ids)))
        out.append(np.mean([weighted_f1_batch(g, pa_, idx, c) - weighted_f1_batch(g, pb_, idx, c)
                            for (g, pa_), (_, pb_) in arrays], axis=0))
    return np.concatenate(out)


def _identity(met: dict[str, Any]) -> tuple[str | None, str | None, dict[str, str]]:
    """(dataset, manifest digest, modality -> 'extractor key') from metrics.json's content (RunRow.metrics: {}
    when unreadable); None where it is not recorded."""
    feats = met.get("features") if isinstance(met.get("features"), dict) else {}
    return (met.get("dataset"), met.get("manifest_digest"),
            {m: f"{f.get('extractor')} {f.get('key')}" for m, f in feats.items() if isinstance(f, dict)})


def _metrics_json(run_dir: Path) -> dict[str, Any]:
    import json

    try:
        met = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return met if isinstance(met, dict) else {}


def same_corpus(a_dir: Path, b_dir: Path, met_a: dict[str, Any] | None = None,
                met_b: dict[str, Any] | None = None) -> list[str]:
    """Comparable = the same utterances: equal manifest digests (ids, dialogues, order, text, media), whatever the
    datasets are called (frozen vs fine-tuned features of one corpus are prepared under two names). Refuses two
    digests that differ, or two names without a recorded digest; returns notes naming the feature keys that differ.
    `met_a` / `met_b`: the runs' metrics.json when the caller read them (read_run), else they are read here."""
    met_a = _metrics_json(Path(a_dir)) if met_a is None else met_a
    met_b = _metrics_json(Path(b_dir)) if met_b is None else met_b
    (da, ma, fa), (db, mb, fb) = _identity(met_a), _identity(met_b)
    if ma and mb and ma != mb:
        raise ConfigError(f"{a_dir} and {b_dir} were trained on different manifests (digest {ma[:12]} vs {mb[:12]}): "
                          "the utterances differ in ids, text or media; compare runs of one prepared corpus")
    if da and db and da != db and not (ma and mb):
        raise ConfigError(f"{a_dir} is on dataset {da!r} and {b_dir} on {db!r}, and a run without a recorded manifest "
                          "digest cannot show they hold the same utterances; retrain it with this mer-pipe")
    notes = [f"note: A is on dataset {da!r} and B on {db!r}, prepared from the same manifest (digest {ma[:12]}): "
             "the same utterances"] if da != db and ma else []
    diff = [f"{m}: {fa.get(m, 'not used')} (A) vs {fb.get(m, 'not used')} (B)"
            for m in sorted(set(fa) | set(fb), key="tav".find) if fa.get(m) != fb.get(m)]
    if diff:
        notes.append("note: feature keys differ: " + "; ".join(diff))
    return notes


def noise_verdict(diff: float, ci: tuple[float, float], agree: int, n_seeds: int, seed_std: float) -> str:
    """'larger than seed noise' when the utterance-bootstrap interval excludes 0, every shared seed agrees on the
    sign and |diff| exceeds the seed-to-seed std; otherwise 'within noise (why)'."""
    if ci[0] <= 0.0 <= ci[1]:
        return "within noise (the 95% interval over test utterances includes 0)"
    if agree < n_seeds:
        return f"within noise (only {agree}/{n_seeds} seeds agree on the sign)"
    if n_seeds < 2:
        return "larger than utterance noise; seed noise unknown with one shared seed (train with --seeds 0,1,2)"
    if abs(diff) <= seed_std:
        return f"within noise (not larger than the seed-to-seed std of {100 * seed_std:.2f})"
    return "larger than seed noise"


def compare_runs(a_dir: Path, b_dir: Path, resamples: int = DEFAULT_RESAMPLES,
                 bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED) -> Comparison:
    """Refuses (ConfigError) runs on different datasets or test sets, or without a shared seed."""
    if resamples < 1000:
        raise ConfigError(f"--resamples {resamples}: use at least 1000 for a stable 95% interval")
    ra, rb = read_run(Path(a_dir)), read_run(Path(b_dir))
    corpus_notes = same_corpus(Path(a_dir), Path(b_dir), ra.metrics, rb.metrics)  # by manifest digest (test ids:
    # _check_same_test_set); metrics.json read once per run, by read_run
    pa, pb = read_predictions(a_dir), read_predictions(b_dir)
    seeds = sorted(set(pa.by_seed) & set(pb.by_seed))
    if not seeds:
        raise ConfigError(f"{a_dir} (seeds {sorted(pa.by_seed)}) and {b_dir} (seeds {sorted(pb.by_seed)}) share no "
                          "seed; retrain one with the other's --seeds")
    ids = _check_same_test_set(pa, pb, seeds)
    ma = {s: classification_metrics(*_arrays(pa, s, ids), pa.classes) for s in seeds}
    mb = {s: classification_metrics(*_arrays(pb, s, ids), pb.classes) for s in seeds}
    gold = _arrays(pa, seeds[0], ids)[0]
    per_class = tuple((c, int((gold == k).sum()), float(np.mean([ma[s]["per_class"][c]["f1"] for s in seeds])),
                       float(np.mean([mb[s]["per_class"][c]["f1"] for s in seeds]))) for k, c in enumerate(pa.classes))
    wa, wb = ({s: m[s]["weighted_f1"] for s in seeds} for m in (ma, mb))
    diff = float(np.mean([wa[s] - wb[s] for s in seeds]))
    boot = _bootstrap(pa, pb, seeds, ids, resamples, bootstrap_seed)
    ci = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
    agree = sum(1 for s in seeds if diff != 0 and np.sign(wa[s] - wb[s]) == np.sign(diff))
    seed_std = max(float(np.std(list(w.values()), ddof=1)) if len(seeds) > 1 else 0.0 for w in (wa, wb))
    warnings = tuple(f"WARNING: {name} was selected on the test set; its test scores are optimistic"
                     for name, r in (("A", ra), ("B", rb)) if r.selection == "test")
    warnings += tuple(f"WARNING: {name}'s files do not match what `{command('train')}` wrote ({', '.join(r.problems)}); "
                      f"its numbers may not be the trained run's (corrupted or edited); `{command('evaluate')}` it"
                      for name, r in (("A", ra), ("B", rb)) if r.problems)
    warnings += tuple(corpus_notes)
    warnings += tuple(f"note: seeds {sorted(set(p.by_seed) - set(seeds))} of {name} have no partner in the other "
                      "run and are left out" for name, p in (("A", pa), ("B", pb)) if set(p.by_seed) - set(seeds))
    return Comparison(str(a_dir), str(b_dir), tuple(seeds), len(ids), per_class, wa, wb, diff, ci,
                      float(np.mean(boot > 0)), resamples, bootstrap_seed, seed_std, agree,
                      noise_verdict(diff, ci, agree, len(seeds), seed_std), warnings)


def statement(c: Comparison) -> str:
    """The one-line answer, e.g. 'A beats B by 1.20 W-F1 (95% CI 0.40 to 2.00 over test utterances; 3/3 seeds): ...'."""
    lo, hi, n = 100 * c.ci[0], 100 * c.ci[1], len(c.seeds)
    where = f"95% CI {lo:.2f} to {hi:.2f} over test utterances; {c.agree}/{n} seeds"
    if c.diff == 0:
        return f"A and B tie on test W-F1 ({where}): {c.verdict}"
    return f"A {'beats' if c.diff > 0 else 'trails'} B by {abs(100 * c.diff):.2f} W-F1 ({where}): {c.verdict}"


def format_comparison(c: Comparison) -> str:
    """Per-class F1 table, per-seed W-F1 table, bootstrap summary and the statement (scores in %)."""
    lines = [f"A: {c.a}", f"B: {c.b}", *c.warnings,
             f"test set: {c.n_utterances} utterances; shared seeds {','.join(map(str, c.seeds))}", "",
             "per-class test F1 (%, mean over shared seeds)", f"{'class':<14}{'support':>8}{'A':>8}{'B':>8}{'A-B':>8}"]
    lines += [f"{name:<14}{sup:>8}{100 * fa:>8.2f}{100 * fb:>8.2f}{100 * (fa - fb):>+8.2f}"
              for name, sup, fa, fb in c.per_class]
    lines += ["", "test W-F1 per seed (%)", f"{'seed':<14}{'A':>8}{'B':>8}{'A-B':>8}"]
    lines += [f"{s:<14}{100 * c.wf1_a[s]:>8.2f}{100 * c.wf1_b[s]:>8.2f}{100 * (c.wf1_a[s] - c.wf1_b[s]):>+8.2f}"
              for s in c.seeds]
    mean_a, mean_b = (float(np.mean(list(w.values()))) for w in (c.wf1_a, c.wf1_b))
    lines += [f"{'mean':<14}{100 * mean_a:>8.2f}{100 * mean_b:>8.2f}{100 * c.diff:>+8.2f}",
              f"seed noise: larger std over seeds of A or B {100 * c.seed_std:.2f}", "",
              (f"paired bootstrap: {c.resamples} resamples of the {c.n_utterances} test utterances (seed "
               f"{c.bootstrap_seed}): A-B 95% CI {100 * c.ci[0]:+.2f} to {100 * c.ci[1]:+.2f}; "
               f"A > B in {100 * c.share_a_better:.1f}% of resamples"), "", statement(c)]
    return "\n".join(lines)
