"""A whole training run: validate everything cheap, load the features once, fit every (seed, fold), and
write the run directory after each finished seed, so an interrupted run keeps what it finished."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from mer_pipe.common.commands import command
from mer_pipe.common.errors import CacheError, ConfigError
from mer_pipe.common.modalities import MODALITIES

from .protocols import RunRecord, make_folds, protocol_notes
from .runconfig import RunConfig

Log = Callable[[str], None]


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite mid-run: the run failed with this reason (its settings are to blame)."""


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    config: RunConfig


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C while the block runs and raise it right after, so finished work is always written whole.
    (A Python-level handler, not a signal mask: torch's threads would take a masked signal for the process.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, or an existing run dir without --overwrite, before any work is done."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the run (default runs/DATASET-MODEL-TIME)")
    if out.is_dir() and (out / "metrics.json").exists() and not overwrite:
        raise ConfigError(f"--out {out} already holds a run (metrics.json); pass --overwrite to replace it, "
                          "or leave --out unset for a fresh timestamped run dir")


def read_lock(dataset: str, cache_dir: Path) -> dict[str, dict[str, Any]]:
    """The dataset's lock.json (slot -> entry), read once per training run (or sweep) and handed along."""
    from mer_pipe.cache.store import FeatureStore

    return FeatureStore(cache_dir).read_lock(dataset)


def usable_modalities(dataset: str, cache_dir: Path, slots: dict[str, str],
                      lock: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Modalities whose lock slot is set (load_corpus then refuses a slot where every utterance failed)."""
    lock = read_lock(dataset, cache_dir) if lock is None else lock
    return tuple(m for m in MODALITIES if slots.get(m, m) in lock)


def check_dataset(dataset: str, cache_dir: Path) -> None:
    """A dataset name (not a path) that is prepared in `cache_dir`, else a ConfigError / CacheError saying how."""
    from mer_pipe.pipeline.corpus.hints import check_dataset_name, prepare_command
    from mer_pipe.pipeline.corpus.manifest import dataset_dir

    check_dataset_name(dataset, "--dataset", ": give the name the dataset was prepared under, not a path "
                       f"(`{command('cache', 'ls', cache_dir=cache_dir)}` lists them)")
    if not (dataset_dir(dataset, cache_dir) / "dataset.json").is_file():
        raise CacheError(f"dataset {dataset!r} is not prepared in {cache_dir}; run "
                         f"`{prepare_command(dataset, cache_dir=cache_dir)}` first")


def resolve_modalities(cfg: RunConfig, cache_dir: Path, log: Log, lock: Mapping[str, Any] | None = None) -> RunConfig:
    """cfg with its modalities: as given, or every modality whose lock slot is set (`lock`: lock.json when the
    caller has read it already)."""
    check_dataset(cfg.dataset, cache_dir)
    if cfg.modalities:
        return cfg
    mods = usable_modalities(cfg.dataset, cache_dir, cfg.slots, lock)
    if not mods:
        from mer_pipe.pipeline.corpus.hints import features_command

        raise CacheError(f"dataset {cfg.dataset!r} has no usable features in {cache_dir}; run "
                         f"`{features_command(cfg.dataset, cache_dir=cache_dir)}` first")
    log(f"modalities: {','.join(mods)} (every slot with usable features; choose with --modalities)")
    return RunConfig.from_dict({**cfg.to_dict(), "modalities": list(mods)})


def run_training(cfg: RunConfig, *, out: Path, cache_dir: Path, overwrite: bool = False, log: Log = print,
                 progress: bool = True, leak_lines: Sequence[str] | None = None,
                 lock: Mapping[str, Any] | None = None) -> TrainResult:
    """Fit cfg.model on every seed (and fold) and write the run dir; see the module docstring. lock.json is read
    once (`lock`: when the caller has read it). `leak_lines`: the leak warnings when the caller made them already
    (a sweep, once for all its runs)."""
    from mer_pipe.common.devices import resolve_device

    from .data import load_corpus
    from .loop import fit
    from .progress import RunBoard, TrainProgress
    from .report import format_summary, write_run

    check_out_dir(out, overwrite)
    check_dataset(cfg.dataset, cache_dir)
    lock = read_lock(cfg.dataset, cache_dir) if lock is None else dict(lock)
    cfg = resolve_modalities(cfg, cache_dir, log, lock)
    if leak_lines is None:
        from mer_pipe.pipeline.corpus.leak import leak_warnings  # memorised fine-tuned features (issue 19)

        leak_lines = leak_warnings(cfg.dataset, [cfg.slots.get(m, m) for m in cfg.modalities], cache_dir, lock=lock)
    for line in leak_lines:
        log(line)
    device = resolve_device(cfg.device)
    corpus = load_corpus(cfg.dataset, cfg.modalities, cache_dir, cfg.slots, lock=lock)
    folds = make_folds(corpus, cfg.protocol, cfg.select_on, cfg.trainer.unit)  # refuses empty splits up front
    notes = protocol_notes(cfg.protocol, cfg.select_on)
    if overwrite:  # the run being replaced no longer speaks for this dir; metrics.json comes back last, when complete
        (out / "metrics.json").unlink(missing_ok=True)
    for note in notes:
        log(note)
    log(f"training {cfg.model} on {cfg.dataset} [{','.join(cfg.modalities)}] on {device}: protocol {cfg.protocol}, "
        f"select on {cfg.select_on}, seeds {','.join(map(str, cfg.seeds))}, up to {cfg.trainer.epochs} epochs")
    records: list[RunRecord] = []
    t0, metrics = time.perf_counter(), {}

    def finished() -> list[int]:  # seeds whose every fold is in `records`
        return [s for s in cfg.seeds if sum(r.seed == s for r in records) == len(folds)]

    def save() -> dict[str, Any]:
        done = finished()
        with interrupts_deferred():  # a second Ctrl-C lands after the files are written whole
            return write_run(out, cfg, [r for r in records if r.seed in done], corpus, notes=notes,
                             cache_root=cache_dir, complete=done == list(cfg.seeds), wall_seconds=time.perf_counter() - t0)

    board = RunBoard(out, cfg.to_dict(), log=log)  # TensorBoard event files in out/tensorboard
    bar = TrainProgress(len(cfg.seeds) * len(folds), cfg.trainer.epochs, cfg.select_on, enabled=progress, log=log,
                        board=board)
    try:
        for seed in cfg.seeds:
            for fold in folds:
                bar.start(f"seed {seed}" + ("" if fold.name == "split" else f" {fold.name}"))
                res = fit(cfg.model, cfg.model_config, corpus, cfg.modalities, fold, cfg.trainer, seed, device,
                          on_epoch=bar.epoch)
                records.append(RunRecord(seed, fold.name, res, [corpus.ids[i] for i in np.flatnonzero(fold.test.keep)]))
                bar.finish(res)
            metrics = save()
    except KeyboardInterrupt:
        bar.close()
        done = finished()
        if done and metrics.get("seeds") != sorted(done):
            metrics = save()  # the signal came between a seed's end and its write
        rest = ",".join(str(x) for x in cfg.seeds if x not in done)
        kept = (f"kept seeds {','.join(map(str, done))} in {out} (marked incomplete); for the rest rerun with "
                f"--seeds {rest} and another --out") if done else "no seed had finished; rerun the same command"
        raise KeyboardInterrupt(f"training interrupted; {kept}") from None
    except FloatingPointError as exc:  # loop.fit: a non-finite loss; a failed run with its reason, not a traceback
        bar.close()
        done = finished()
        kept = (f"seeds {','.join(map(str, done))} finished and are kept in {out} (marked incomplete)" if done
                else "no seed had finished")
        raise TrainingDiverged(f"training diverged: {exc} (now {cfg.trainer.lr:g}; trainer.grad_clip is "
                               f"{cfg.trainer.grad_clip:g}) or check the model's loss settings (--set model.*); "
                               f"{kept}") from None
    bar.close(metrics)
    log(format_summary(metrics))
    log(f"run directory: {out}")
    return TrainResult(out, metrics, cfg)
