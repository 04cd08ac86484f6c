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

from mer_pipe.pipeline.corpus.manifest import cache_root
from mer_pipe.pipeline.corpus.prepare import PrepareReport
from mer_pipe.pipeline.extract.progress import RunSummary
from mer_pipe.pipeline.train.runconfig import RunConfig, load_config_file, parse_list, resolve_run_config
from mer_pipe.pipeline.train.runner import TrainResult

Log = Callable[[str], None]


def prepare(recipe: str, root: str | Path | None, *, name: str | None = None, cache_dir: str | Path | None = None,
            manifest: str | Path | None = None, probe: bool = False, allow_outside_root: bool = False,
            train_utterances: int | None = None, subset_seed: int | None = None) -> PrepareReport:
    """Read a corpus into a validated manifest in the cache; the report lists what was found and what is wrong.
    `train_utterances` keeps about that many training utterances in whole dialogues (seeded by `subset_seed`)."""
    from mer_pipe.common.errors import ConfigError
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
    from mer_pipe.common.errors import ConfigError
    from mer_pipe.pipeline.corpus.manifest import load_dataset
    from mer_pipe.pipeline.executors import ExecutorConfig
    from mer_pipe.pipeline.extract.presets import DEFAULT_PRESET, resolve_slots
    from mer_pipe.pipeline.extract.run import extract_features
    from mer_pipe.pipeline.extract.weights import check_weights

    ex_cfg = ExecutorConfig(kind=executor or ("dask" if scheduler else ExecutorConfig().kind),
                            workers=workers, scheduler=scheduler)
    modes = {"auto": None, "on": True, "off": False, None: None}
    if overlap not in modes:
        raise ConfigError(f"--overlap {overlap!r}: choose auto (on CUDA, and for video on CPU when a core is idle), on or off")
    from mer_pipe.pipeline.extract.overlap import OverlapConfig

    if decode_threads is not None and decode_threads < 1:
        raise ConfigError(f"--decode-threads {decode_threads}: give 1 or more threads per worker")
    if batch_budget is not None and not 0 < batch_budget < float("inf"):
        raise ConfigError(f"--batch-budget {batch_budget}: give seconds of audio / frames of video per batch, > 0")
    feed = OverlapConfig(enabled=modes[overlap], decode_threads=decode_threads, budget=batch_budget)
    root = cache_root(cache_dir)
    _, utts = load_dataset(dataset, root)  # not prepared: say so before any checkpoint is built
    media = {"text"} | {"audio" for u in utts if u.audio} | {"video" for u in utts if u.video}
    slots = resolve_slots(preset or DEFAULT_PRESET, only, sets, cache_root=root, media=media, on_skip=log)
    check_weights(slots)  # every slot's weights found on this machine, before any cluster or worker starts
    return extract_features(dataset, slots, cache_dir=root, executor=ex_cfg, device=device or "auto",
                            strict=strict, batch_size=batch_size, shard_size=shard_size, progress=progress,
                            retry_failed=retry_failed, hash_media=hash_media, verify=verify, overlap=feed,
                            show_plan=log)  # a fine-tune DAG is shown before it runs


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


DEMO = {"dialogues": 60, "model": "ar-iigcn", "seeds": "0,1,2", "epochs": 15,
        "sets": ("trainer.lr=1e-3", "trainer.patience=0")}
# "How to read these numbers" is computed after the run (pipeline/train/references.py): linear probes per
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
        f"curves.png); re-score with `mer-pipe evaluate {result.run_dir}`")
    from mer_pipe.pipeline.train.references import measure, reading

    log(reading(result.metrics, measure("synth-meld", cache, result.config.modalities, result.config.slots)))
    return result


def sweep(model: str | None = None, dataset: str | None = None, *, grid: Sequence[str] = (),
          config_file: str | Path | None = None, sets: Sequence[str] = (), modalities: str | Sequence[str] | None = None,
          seeds: str | Sequence[int] | None = None, epochs: int | None = None, protocol: str | None = None,
          select_on: str | None = None, device: str | None = None, profile: str | None = None,
          slots: dict[str, str] | None = None, out: str | Path | None = None, cache_dir: str | Path | None = None,
          executor: str | None = None, workers: int | None = None, threads: int | None = None,
          scheduler: str | None = None, dry_run: bool = False, log: Log = print) -> Any:
    """Train every (grid point, seed) on an executor, select per model on dev; see pipeline/train/sweep.py.
    Every option and every grid point is validated before the first run starts. Returns a SweepResult
    (None with dry_run, which prints the plan)."""
    import dataclasses
    import os

    from mer_pipe.common.errors import ConfigError
    from mer_pipe.pipeline.executors import ExecutorConfig, SerialExecutor, make_executor
    from mer_pipe.pipeline.train import sweep as sw
    from mer_pipe.pipeline.train.runner import resolve_modalities
    from mer_pipe.pipeline.train.sweepspec import SweepSpec, expand, load_sweep_file, parse_grid

    ex_cfg = ExecutorConfig(kind=executor or ("dask" if scheduler else ExecutorConfig().kind), workers=workers,
                            scheduler=scheduler)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads} must be >= 1")
    base, file_sets, blocks = load_sweep_file(config_file)
    cli_grid = parse_grid(grid)
    if cli_grid:  # --grid keys replace the same keys of the file's grid (every block)
        blocks = [{**{k: v for k, v in b.items() if k not in cli_grid}, **cli_grid} for b in blocks] or [cli_grid]
    flags = {"model": model, "dataset": dataset, "modalities": parse_list(modalities, "modalities", "t,a,v"),
             "seeds": parse_list(seeds, "seeds", "0,1,2"), "epochs": epochs, "protocol": protocol,
             "select_on": select_on, "device": device, "profile": profile, "slots": slots or None}
    spec = SweepSpec(base=base, sets=[*file_sets, *sets], flags={k: v for k, v in flags.items() if v is not None},
                     grid=blocks)
    points = expand(spec)  # every point resolved and validated; torch is imported from here on
    root = cache_root(cache_dir)
    quiet: Log = lambda s: None  # noqa: E731
    points = [dataclasses.replace(p, config=resolve_modalities(p.config, root, quiet)) for p in points]
    features = {p.id: sw.feature_keys(p.config, root) for p in points}
    run_seeds = list(points[0].config.seeds)
    sweep_dir = Path(out) if out is not None else sw.default_sweep_dir(points, run_seeds)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"--out {sweep_dir} is a file; give a directory for the sweep")
    device_req = points[0].config.device
    gpus = 0
    if not ex_cfg.scheduler:
        from mer_pipe.common.devices import resolve_device

        if resolve_device(device_req).startswith("cuda"):  # no GPU for an explicit cuda -> ConfigError now
            import torch

            gpus = 1 if device_req.startswith("cuda:") else torch.cuda.device_count()
    _, pending = sw.plan_tasks(points, features, sweep_dir, root, threads=1, gpus=gpus, device=device_req)
    n_workers, n_threads = sw.plan_workers(ex_cfg.kind, len(pending), cores=os.cpu_count() or 1, gpus=gpus,
                                           workers=workers, threads=threads, scheduler=bool(ex_cfg.scheduler))
    definition = {"model": model, "dataset": points[0].config.dataset, "config_file": str(config_file or ""),
                  "sets": list(spec.sets), "grid": spec.describe_grid(), "seeds": run_seeds,
                  "select_on": points[0].config.select_on, "protocol": points[0].config.protocol,
                  "device": device_req, "executor": ex_cfg.kind, "workers": n_workers}
    if dry_run:
        n = sum(len(p.config.seeds) for p in points)
        for p in points:
            log(f"{p.id}  {p.config.model:12} {p.label}")
        log(f"{len(points)} config(s) x {len(run_seeds)} seed(s) = {n} runs, {len(pending)} to run "
            f"({ex_cfg.kind}, {n_workers} worker(s) x {n_threads} torch thread(s)); sweep dir {sweep_dir}")
        return None
    ex = SerialExecutor() if not pending else make_executor(dataclasses.replace(ex_cfg, workers=n_workers))
    with ex:
        return sw.run_sweep(points, features, sweep_dir=sweep_dir, cache_dir=root, executor=ex, threads=n_threads,
                            gpus=gpus, device=device_req, definition=definition, log=log)
