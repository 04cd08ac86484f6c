"""The Python API that the CLI, the benchmarks and notebooks share: one function per step, each returning
a result object. Every option is validated before the first expensive step.

    from mer_pipe.pipeline import api
    api.prepare("meld", "/data/MELD.Raw")
    api.extract("meld", only="t")
    res = api.train("ar-iigcn", "meld", seeds=(0, 1, 2))
    api.evaluate(res.run_dir)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from mer_pipe.common.commands import command
from mer_pipe.common.errors import ConfigError
from mer_pipe.pipeline.corpus.hints import check_dataset_name  # noqa: F401  (for the CLI: refused before any work)
from mer_pipe.pipeline.corpus.manifest import cache_root
from mer_pipe.pipeline.corpus.prepare import PrepareReport
from mer_pipe.pipeline.extract.progress import RunSummary
from mer_pipe.pipeline.train.runconfig import (  # noqa: F401  (config_yaml: for the CLI's --print-config)
    RunConfig, config_yaml, load_config_file, parse_list, resolve_run_config)
from mer_pipe.pipeline.train.runner import TrainResult

Log = Callable[[str], None]


def prepare(recipe: str, root: str | Path | None, *, name: str | None = None, cache_dir: str | Path | None = None,
            manifest: str | Path | None = None, probe: bool = False, allow_outside_root: bool = False,
            train_utterances: int | None = None, subset_seed: int | None = None) -> PrepareReport:
    """Read a corpus into a validated manifest in the cache; the report lists what was found and what is wrong.
    `train_utterances` keeps about that many training utterances in whole dialogues (seeded by `subset_seed`)."""
    from mer_pipe.pipeline.corpus.prepare import prepare as run_prepare
    from mer_pipe.pipeline.corpus.recipes import get_recipe

    rec = get_recipe(recipe)  # unknown recipe -> ConfigError listing the choices
    if root is not None and not Path(root).exists():
        raise ConfigError(f"--root {root} does not exist; point it at the corpus ({rec.layout})")
    if manifest is not None and not Path(manifest).is_file():
        raise ConfigError(f"--manifest {manifest} is not a file; give the JSONL manifest (docs/contracts.md)")
    return run_prepare(rec.name, root, name=name, cache_dir=cache_dir, manifest_file=manifest, probe=probe,
                       allow_outside_root=allow_outside_root, train_utterances=train_utterances, subset_seed=subset_seed)


def extract(dataset: str, *, preset: str | None = None, only: str | None = None, sets: Sequence[str] = (),
            executor: str | None = None, workers: int | None = None, scheduler: str | None = None,
            device: str | None = None, strict: bool = False, cache_dir: str | Path | None = None,
            batch_size: int | None = None, shard_size: int | None = None, progress: bool = True,
            retry_failed: bool = False, hash_media: bool = False, log: Log = print,
            verify: bool = False, overlap: str | None = None, decode_threads: int | None = None,
            batch_budget: float | None = None) -> RunSummary:
    """Extract the preset's slots (only missing shards) and lock them; see `mer-pipe features --help`.

    Checks the options and the prepared dataset before anything is built; slots whose modality the manifest
    has no files for are skipped (one line each to `log`); a fine-tune DAG is shown before it runs.
    `overlap` (auto | on | off), `decode_threads` and `batch_budget` say how a worker feeds its encoder
    (pipeline/extract/overlap.py); they never change a key or a feature."""
    from mer_pipe.pipeline.executors import ExecutorConfig
    from mer_pipe.pipeline.extract.overlap import OverlapConfig
    from mer_pipe.pipeline.extract.presets import DEFAULT_PRESET, resolve_slots
    from mer_pipe.pipeline.extract.stages import load_prepared
    from mer_pipe.pipeline.extract.run import extract_features
    from mer_pipe.pipeline.extract.weights import check_weights

    ex_cfg = ExecutorConfig(kind=executor or ("dask" if scheduler else ExecutorConfig().kind),
                            workers=workers, scheduler=scheduler)
    feed = OverlapConfig.from_options(overlap, decode_threads, batch_budget)
    root = cache_root(cache_dir)
    prepared = load_prepared(dataset, root)  # not prepared: say so before any checkpoint is built; read once per run
    media = {"text"} | {"audio" for u in prepared.utts if u.audio} | {"video" for u in prepared.utts if u.video}
    slots = resolve_slots(preset or DEFAULT_PRESET, only, sets, cache_root=root, media=media, on_skip=log)
    check_weights(slots)  # every slot's weights found on this machine, before any cluster or worker starts
    return extract_features(dataset, slots, cache_dir=root, executor=ex_cfg, device=device or "auto",
                            strict=strict, batch_size=batch_size, shard_size=shard_size, progress=progress,
                            retry_failed=retry_failed, hash_media=hash_media, verify=verify, overlap=feed,
                            show_plan=log, prepared=prepared)  # a fine-tune DAG is shown before it runs


def train_config(model: str | None = None, dataset: str | None = None, *, config_file: str | Path | None = None,
                 sets: Sequence[str] = (), modalities: str | Sequence[str] | None = None,
                 seeds: str | Sequence[int] | None = None, epochs: int | None = None, protocol: str | None = None,
                 select_on: str | None = None, device: str | None = None, profile: str | None = None,
                 slots: dict[str, str] | None = None) -> RunConfig:
    """The fully resolved run config (what --print-config shows), without touching any data."""
    return resolve_run_config(
        load_config_file(config_file), sets, model=model, dataset=dataset,
        modalities=parse_list(modalities, "modalities", "t,a,v"), seeds=parse_list(seeds, "seeds", "0,1,2"),
        epochs=epochs, protocol=protocol, select_on=select_on, device=device, profile=profile, slots=slots or None)


def train(model: str | None = None, dataset: str | None = None, *, out: str | Path | None = None,
          cache_dir: str | Path | None = None, overwrite: bool = False, log: Log = print, progress: bool = True,
          config: RunConfig | None = None, **options: Any) -> TrainResult:
    """Train on cached features and write a run dir. `options` are those of `train_config`."""
    from mer_pipe.pipeline.train.report import default_run_dir
    from mer_pipe.pipeline.train.runner import run_training

    cfg = config or train_config(model, dataset, **options)
    run_dir = Path(out) if out is not None else default_run_dir(cfg.model, cfg.dataset)
    return run_training(cfg, out=run_dir, cache_dir=cache_root(cache_dir), overwrite=overwrite, log=log,
                        progress=progress)


def evaluate(run_dir: str | Path, *, cache_dir: str | Path | None = None, device: str | None = None,
             log: Log | None = print) -> dict[str, Any]:
    """Re-score a run's test set from its checkpoint; `reproduced` says whether the stored metrics came back."""
    from mer_pipe.common.devices import resolve_device
    from mer_pipe.pipeline.train.evaluate import evaluate_run

    return evaluate_run(run_dir, cache_dir, resolve_device(device), log=log)


# ---- names that help texts and errors list, read from the registries (none of these imports torch)

def names(kind: str) -> list[str]:
    """The registered names of `kind`: model, extractor, recipe (the corpus recipes of `prepare`; the CLI adds the
    importers pickle and parquet), synth (the layouts `synth` writes), layout (the feature-pickle layouts of
    `prepare pickle`) or export (the formats of `cache export`)."""
    if kind == "model":  # read from the model modules' source: importing them would import torch
        from mer_pipe.common.registry import declared_names

        return declared_names("mer_pipe.models", "MODELS")
    if kind == "extractor":
        from mer_pipe.extractors import EXTRACTORS

        return EXTRACTORS.names()
    if kind == "recipe":
        from mer_pipe.pipeline.corpus.recipes import RECIPES

        return RECIPES.names()
    if kind == "synth":
        from mer_pipe.pipeline.corpus.synth import SYNTH_RECIPES

        return list(SYNTH_RECIPES)
    if kind == "layout":
        from mer_pipe.pipeline.interop.layouts import LAYOUTS

        return list(LAYOUTS)
    if kind == "export":
        from mer_pipe.pipeline.interop.exporter import FORMATS

        return [*FORMATS, "parquet"]
    raise ValueError(f"names({kind!r}): no such kind")


def presets() -> dict[str, tuple[str, ...]]:
    """Extractor preset -> its slots, the default preset first."""
    from mer_pipe.pipeline.extract.presets import DEFAULT_PRESET, PRESETS

    return {p: tuple(s.slot for s in PRESETS[p]) for p in sorted(PRESETS, key=lambda p: p != DEFAULT_PRESET)}


# ---- corpora and prepared datasets

def synth(recipe: str, out: str | Path, *, dialogues: int | None = None, seed: int | None = None,
          text_from: str | Path | None = None, faults: bool = False) -> Any:
    """Write a miniature corpus with planted cues in a recipe's layout (pipeline/corpus/synth); a SynthResult."""
    from mer_pipe.pipeline.corpus.synth import synthesize

    return synthesize(recipe, out, dialogues=dialogues, seed=seed, text_from=text_from, faults=faults)


def dataset_info(name: str, cache_dir: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """(folder, dataset.json) of a prepared dataset in the cache."""
    import json

    from mer_pipe.pipeline.corpus.manifest import dataset_dir

    folder = dataset_dir(name, cache_dir)
    return folder, json.loads((folder / "dataset.json").read_text(encoding="utf-8"))


def finetune_gaps(dataset: str, slots: Sequence[str], cache_dir: str | Path | None = None) -> list[tuple[str, str | None]]:
    """Per fine-tuned slot: a line with its encoder's W-F1 on the training rows next to dev (the memorisation gap),
    and the leak warning when the gap is large, else None (pipeline/corpus/leak.py)."""
    from mer_pipe.pipeline.corpus.leak import describe, leaks, slot_reports, warning

    return [(describe(sf), warning(sf) if leaks(sf) else None) for sf in slot_reports(dataset, slots, cache_dir)]


# ---- finished runs

def runs_table(dirs: Sequence[str | Path] = (), *, model: str | None = None, dataset: str | None = None,
               sort: str | None = None, reverse: bool = False, fmt: str | None = None) -> tuple[str, list[Any]]:
    """The run dirs under `dirs` (default runs/), filtered by the comma lists `model` / `dataset`, sorted by `sort`
    (default dev W-F1, best first): the table as text in `fmt` (table, csv, md, json) and its rows."""
    from mer_pipe.pipeline.experiments.runs import DEFAULT_SORT, HIGHER_IS_BETTER, format_rows, load_runs, sort_rows

    column = sort or DEFAULT_SORT
    rows = sort_rows(load_runs([Path(d) for d in dirs] or [Path("runs")], model, dataset), column, reverse)
    order = "best first" if (column in HIGHER_IS_BETTER) != reverse else ("ascending" if not reverse else "descending")
    return format_rows(rows, fmt or "table", f"{column}, {order}"), rows


def plot_runs(rows: Sequence[Any], path: str | Path) -> Path:
    """Dev/test W-F1 per run with std error bars to `path` (PNG); returns the CSV written next to it."""
    from mer_pipe.pipeline.experiments.runs_plot import plot_runs as plot

    return plot(rows, Path(path))


def compare_runs(a: str | Path, b: str | Path, *, resamples: int | None = None, seed: int | None = None) -> Any:
    """Paired comparison of two run dirs on the same test set (pipeline/experiments/compare.py): a Comparison."""
    from mer_pipe.pipeline.experiments.compare import DEFAULT_BOOTSTRAP_SEED, DEFAULT_RESAMPLES, compare_runs as cmp

    return cmp(Path(a), Path(b), resamples if resamples is not None else DEFAULT_RESAMPLES,
               seed if seed is not None else DEFAULT_BOOTSTRAP_SEED)


def format_comparison(comparison: Any) -> str:
    from mer_pipe.pipeline.experiments.compare import format_comparison as fmt

    return fmt(comparison)


# ---- the feature cache (`mer-pipe cache ...`): feature sets and fine-tuned checkpoints together

def cache_store(cache_dir: str | Path | None = None, dataset: str | None = None) -> Any:
    """The FeatureStore at the cache root; with `dataset`, a ConfigError for a dataset it does not hold."""
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(cache_root(cache_dir))
    if dataset is not None and dataset not in store.datasets():
        have = ", ".join(store.datasets()) or "none"
        raise ConfigError(f"--dataset {dataset!r}: no such dataset in {store.root} (datasets: {have}); "
                          f"prepare it with `{command('prepare')}` or pick one of those")
    return store


def cache_ls(cache_dir: str | Path | None = None, dataset: str | None = None) -> tuple[Any, list, list, list[str]]:
    """(store, feature sets, fine-tuned checkpoints, a warning per dataset whose lock.json cannot be read)."""
    from mer_pipe.cache import checkpoints, maintenance
    from mer_pipe.common.errors import CacheError

    store = cache_store(cache_dir, dataset)
    sets, broken = maintenance.ls(store, dataset), []
    for ds in [dataset] if dataset is not None else store.datasets():
        try:
            store.read_lock(ds)
        except CacheError as exc:  # one broken dataset must not hide the others
            broken.append(f"dataset {ds}: {exc} (its slots show as ?)")
    return store, sets, checkpoints.ls(store, dataset), broken


def cache_verify(cache_dir: str | Path | None = None, dataset: str | None = None) -> tuple[Any, list, int, int]:
    """(store, problems of feature sets and checkpoints, and when there are none: how many sets and checkpoints
    were verified)."""
    from mer_pipe.cache import checkpoints, maintenance

    store = cache_store(cache_dir, dataset)
    problems = [*maintenance.verify(store, dataset), *checkpoints.verify(store, dataset)]
    if problems:
        return store, problems, 0, 0
    return store, problems, len(maintenance.ls(store, dataset)), len(checkpoints.ls(store, dataset))


def cache_gc(cache_dir: str | Path | None = None, *, yes: bool = False, grace: float | None = None) -> list[Path]:
    """What gc removes (`yes`) or would remove: unlocked feature sets, stale temp files, then the fine-tuned
    checkpoints no locked feature set depends on (cache/collect.py, cache/checkpoints.py)."""
    import math

    from mer_pipe.cache import checkpoints
    from mer_pipe.cache.collect import UnmarkedCache, gc

    if grace is not None and not (math.isfinite(grace) and grace >= 0):
        raise ConfigError(f"--grace {grace}: give a number of seconds >= 0 (default 600)")
    store = cache_store(cache_dir)
    kwargs = {} if grace is None else {"grace_s": grace}
    try:
        victims = gc(store, dry_run=not yes, **kwargs)
    except UnmarkedCache as exc:
        raise ConfigError(f"{exc}; if it really is a mer-pipe cache made by an earlier version, mark it with "
                          f"`{command('cache', 'mark', cache_dir=exc.root)}` (any feature run writing to it marks it "
                          "too)") from None
    # after the feature sets: their specs decide which checkpoints are still needed
    ckpt_victims = checkpoints.gc_victims(store, **kwargs)
    if yes:
        ckpt_victims = checkpoints.remove(ckpt_victims, store.root)
    return [*victims, *ckpt_victims]


def cache_du(cache_dir: str | Path | None = None, dataset: str | None = None) -> tuple[Any, list]:
    """(store, disk use per feature set and per dataset)."""
    from mer_pipe.cache.maintenance import du

    store = cache_store(cache_dir, dataset)
    return store, [u for u in du(store) if dataset is None or u.dataset == dataset]


def cache_mark(cache_dir: str | Path | None = None) -> tuple[Any, Path | None]:
    """(store, the marker written), None when it was marked already; refuses a folder without a prepared dataset."""

    store = cache_store(cache_dir)
    if store.marked():
        return store, None
    looks = any((store.dataset_dir(ds) / f).is_file() for ds in store.datasets() for f in ("dataset.json", "lock.json"))
    if not looks:
        raise ConfigError(f"{store.root} holds no prepared dataset (<name>/dataset.json or lock.json): it is not a "
                          f"mer-pipe cache; pass the folder `{command('prepare')}`/`features` wrote (--cache-dir)")
    return store, store.mark()


# ---- feature files of other ERC code (pipeline/interop; docs/interop.md)

def import_pickle(path: str | Path, *, name: str | None = None, cache_dir: str | Path | None = None,
                  layout: str | None = None) -> Any:
    """A published ERC feature pickle -> a prepared dataset with locked feature sets (an ImportResult)."""
    from mer_pipe.pipeline.interop.importer import import_pickle as run_import

    return run_import(path, name=name, cache_dir=cache_dir, layout=layout)


def import_parquet(path: str | Path, *, name: str | None = None, cache_dir: str | Path | None = None) -> Any:
    """A `cache export --format parquet` file (or a folder of them) -> a prepared dataset (an ImportResult)."""
    from mer_pipe.pipeline.interop.parquet_import import import_parquet as run_import

    return run_import(path, name=name, cache_dir=cache_dir)


def export(dataset: str, fmt: str, out: str | Path, *, cache_dir: str | Path | None = None, variant: str | None = None,
           overwrite: bool = False) -> Any:
    """A dataset's locked features as an ERC feature pickle of format `fmt` (an ExportResult), or with
    fmt="parquet" its manifest and locked features as one Parquet file (a ParquetExport; `variant` unused)."""
    if fmt == "parquet":
        from mer_pipe.pipeline.interop.parquet import export_parquet

        return export_parquet(dataset, out, cache_dir=cache_dir, overwrite=overwrite)
    from mer_pipe.pipeline.interop.exporter import export_dataset

    return export_dataset(dataset, fmt, out, cache_dir=cache_dir, variant=variant, overwrite=overwrite)


DEMO = {"dialogues": 60, "model": "ar-iigcn", "seeds": "0,1,2", "epochs": 15,
        "sets": ("trainer.lr=1e-3", "trainer.patience=0")}
# "How to read these numbers" is computed after the run (pipeline/experiments/references.py): linear probes per
# modality, their vote and the majority class, measured on the demo's own features, against the run's own W-F1.


def demo(out: str | Path, *, log: Log = print, device: str | None = "cpu") -> TrainResult:
    """synth -> prepare -> offline features on a local dask cluster -> train (see DEMO)."""
    import time

    from mer_pipe.pipeline.corpus.synth import synthesize

    out = Path(out).expanduser().resolve()
    cache = out / "cache"
    cfg = train_config(DEMO["model"], "synth-meld", seeds=DEMO["seeds"], epochs=DEMO["epochs"], sets=DEMO["sets"],
                       device=device)  # validated before any work
    t0 = time.perf_counter()
    log(f"[1/4] synthesising a MELD-like corpus ({DEMO['dialogues']} dialogues, planted cues) in {out / 'corpus'}")
    res = synthesize("meld", out / "corpus", dialogues=DEMO["dialogues"], seed=0)
    log(f"[2/4] preparing it as dataset 'synth-meld' in {cache}")
    report = prepare("meld", res.root, name="synth-meld", cache_dir=cache)
    log(f"      {report.summary().splitlines()[0] if report.summary() else ''}")
    log("[3/4] extracting offline features (MiniLM text, openSMILE audio, tiny Swin video) on a local dask cluster")
    summary = extract("synth-meld", only="t,a,v", cache_dir=cache, device="cpu", executor="dask", workers=2)
    log("\n".join("      " + line for line in summary.format().splitlines()))
    log(f"[4/4] training {DEMO['model']} ({DEMO['seeds']} seeds, {DEMO['epochs']} epochs, selection on dev)")
    result = train(config=cfg, out=out / "run", cache_dir=cache, overwrite=True, log=log)
    log(f"demo finished in {time.perf_counter() - t0:.0f}s; inspect {result.run_dir} (metrics.json, confusion.png, "
        f"curves.png); re-score with `{command('evaluate', result.run_dir)}`")
    from mer_pipe.pipeline.experiments.references import measure, reading

    log(reading(result.metrics, measure("synth-meld", cache, result.config.modalities, result.config.slots)))
    return result


def sweep(model: str | None = None, dataset: str | None = None, *, grid: Sequence[str] = (),
          config_file: str | Path | None = None, sets: Sequence[str] = (), modalities: str | Sequence[str] | None = None,
          seeds: str | Sequence[int] | None = None, epochs: int | None = None, protocol: str | None = None,
          select_on: str | None = None, device: str | None = None, profile: str | None = None,
          slots: dict[str, str] | None = None, out: str | Path | None = None, cache_dir: str | Path | None = None,
          executor: str | None = None, workers: int | None = None, threads: int | None = None,
          scheduler: str | None = None, dry_run: bool = False, log: Log = print) -> Any:
    """Train every (grid point, seed) on an executor, select per model on dev; see pipeline/experiments/sweep.py.
    Every option and every grid point is validated before the first run starts. Returns a SweepResult
    (None with dry_run, which prints the plan)."""
    from mer_pipe.pipeline.experiments.sweep import sweep as run_sweep

    return run_sweep(model, dataset, grid=grid, config_file=config_file, sets=sets, modalities=modalities, seeds=seeds,
                     epochs=epochs, protocol=protocol, select_on=select_on, device=device, profile=profile, slots=slots,
                     out=out, cache_dir=cache_dir, executor=executor, workers=workers, threads=threads,
                     scheduler=scheduler, dry_run=dry_run, log=log)
