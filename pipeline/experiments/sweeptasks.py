"""The tasks of a sweep: one (config, seed) run each, planned by the driver and run in a worker.

Planning (driver): which lock entries each config reads (`feature_keys`, from the lock read once per sweep),
the sweep dir, how many worker processes and torch threads (`plan_workers`), and which tasks are already
finished in the sweep dir (`plan_tasks`). A task is reused when its run dir holds a complete metrics.json, its
sweep_task.json carries the same task key (resolved config without seeds/device + seed + feature keys), the
features it read are still those keys and its files match the checksums metrics.json recorded (train/runcheck.py).
The JSON files are read through a `read` callable: the driver passes sweepreport.RunFiles, so each is read once
per sweep command (again only after its task finished).

Running (worker): `run_task` trains one run into its dir and records every training start in sweep_task.json
(sweepclaims.py); a failure is returned, not raised, so one diverging config does not stop the sweep.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mer_pipe.common.errors import CacheError, ConfigError, DiskFullError, MerPipeError
from mer_pipe.pipeline.train.runcheck import file_problems
from mer_pipe.pipeline.train.runconfig import RunConfig

from .cvselect import write_cv
from .sweepclaims import now, read_attempts
from .sweepreport import read_json
from .sweepspec import Point, task_key

TASK_FILE = "sweep_task.json"
Read = Callable[[Path], Any]


@dataclass(frozen=True)
class Task:
    """One (config, seed) run: plain data only, so it pickles cheaply to a dask worker."""

    config_id: str
    label: str
    seed: int
    key: str
    config_key: str
    config: dict[str, Any]  # RunConfig.to_dict() with seeds [seed]
    out: str
    cache_dir: str
    threads: int
    gpus: int = 0  # > 1: local cluster with one worker per GPU; the worker's index picks its GPU
    device: str = "auto"
    cv_folds: int = 0  # --select-on cvK: after the standard run, K fits on folds of the training dialogues


# ---- the task (runs in a worker) ---------------------------------------------------------------------------

def task_device(task: Task) -> str:
    """cpu, or the CUDA device this worker should use (see the module docstring)."""
    if task.device == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if task.device == "auto":
            return "cpu"
        raise ConfigError(f"--device {task.device}: this worker sees no CUDA device; use --device auto or cpu")
    if task.device.startswith("cuda:"):
        return task.device
    if task.gpus > 1:
        from mer_pipe.pipeline.executors import worker_device

        return worker_device("cuda", task.gpus)
    return "cuda"


def run_task(task: Task) -> dict[str, Any]:
    """Train one (config, seed) into task.out; returns the task's state (failures are returned, not raised,
    so one diverging config does not stop the sweep)."""
    import socket

    import torch

    from mer_pipe.common.files import write_json_atomic

    from mer_pipe.pipeline.train.runner import read_lock, run_training

    before = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    t0 = time.perf_counter()
    info = {"key": task.key, "host": socket.gethostname(), "pid": os.getpid(), "threads": task.threads}
    out = Path(task.out)
    # every training start is recorded (sweepclaims.py): a run trained once has one attempt
    attempts = [*read_attempts(out, task.key, read_json, TASK_FILE), {"pid": info["pid"], "host": info["host"],
                                                                       "started": now()}]
    ident = {"key": task.key, "config_key": task.config_key, "config": task.config_id, "label": task.label,
             "seed": task.seed, "attempts": attempts}
    try:
        device = task_device(task)
        cfg = RunConfig.from_dict({**task.config, "device": device})
        write_json_atomic(out / TASK_FILE, ident)
        lock = read_lock(cfg.dataset, Path(task.cache_dir))  # once per task: the run and its CV fits share it
        if not (task.cv_folds and standard_done(out, task.key)):  # a dev sweep's finished run gains its CV only
            run_training(cfg, out=out, cache_dir=Path(task.cache_dir), overwrite=True, log=lambda s: None,
                         progress=False, leak_lines=(), lock=lock)  # the driver printed the leak warning once
        if task.cv_folds:  # then K fits on folds of the training dialogues: out/cv.json (cvselect.py)
            write_cv(out, task.key, cfg, task.cv_folds, Path(task.cache_dir), device, lock)
    except DiskFullError:
        raise
    except (MerPipeError, RuntimeError, ValueError) as exc:  # RuntimeError: CUDA out of memory, NaN checks
        error = f"{type(exc).__name__}: {exc}"[:500]
        attempts[-1].update(state="failed", error=error, ended=now())
        with contextlib.suppress(OSError):
            write_json_atomic(out / TASK_FILE, ident)
        return {**info, "state": "failed", "error": error, "seconds": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(before)
    attempts[-1].update(state="done", ended=now())
    write_json_atomic(out / TASK_FILE, ident)
    return {**info, "state": "done", "device": device, "seconds": time.perf_counter() - t0}


# ---- planning (driver) -------------------------------------------------------------------------------------

def feature_keys(cfg: RunConfig, cache_dir: Path, lock: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """modality -> {slot, extractor, key} from the dataset's lock (read once per sweep), for every modality the
    config reads."""
    from mer_pipe.pipeline.corpus.hints import features_command

    out = {}
    for m in cfg.modalities:
        slot = cfg.slots.get(m, m)
        if slot not in lock:
            raise CacheError(f"dataset {cfg.dataset!r} has no features in lock slot {slot!r} (modality {m}); run "
                             f"`{features_command(cfg.dataset, slot, cache_dir)}` first or drop {m} from --modalities")
        out[m] = {"slot": slot, "extractor": lock[slot].get("extractor"), "key": lock[slot].get("key")}
    return out


def sweep_key(points: Sequence[Point], seeds: Sequence[int]) -> str:
    import hashlib

    from .sweepspec import config_key

    ident = ",".join(config_key(p.config, {}) for p in points) + "|" + ",".join(map(str, seeds))
    return hashlib.sha256(ident.encode()).hexdigest()[:8]


def default_sweep_dir(points: Sequence[Point], seeds: Sequence[int], base: str | Path = "runs") -> Path:
    """runs/sweeps/DATASET-MODEL-<key8>: the same sweep gets the same dir, so rerunning the command resumes it."""
    models = sorted({p.config.model for p in points})
    model = models[0] if len(models) == 1 else f"{len(models)}models"
    return Path(base) / "sweeps" / f"{points[0].config.dataset}-{model}-{sweep_key(points, seeds)}"


def plan_workers(kind: str, n_tasks: int, *, cores: int, gpus: int, workers: int | None, threads: int | None,
                 scheduler: bool) -> tuple[int, int]:
    """(worker processes, torch threads per run). Processes x threads never exceed the cores on a local
    machine: oversubscribed runs slow each other down. Serial runs also default to one thread, as a local worker:
    the thread count changes floating-point sums, so by default a serial and a dask sweep agree bit for bit.
    bench/bench_meld_text.py measures both (`executor_timing` in bench/results/meld_text_quality.json)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers} must be >= 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads} must be >= 1")
    if kind == "serial":
        return 1, threads or 1
    if scheduler:
        return workers or 1, threads or 1  # the remote workers' own --nthreads decide concurrency
    if gpus:
        n = workers or gpus
        return n, threads or max(1, cores // n)
    t = threads or 1
    n = workers or max(1, min(n_tasks, cores // t))
    if n * t > cores:
        raise ConfigError(f"--workers {n} x --threads {t} = {n * t} torch threads on {cores} cores oversubscribes "
                          f"the machine (every run slows down several times); use --workers {max(1, cores // t)} "
                          f"or --threads {max(1, cores // n)}")
    return n, t


def _seed_dir(sweep_dir: Path, point: Point, ckey: str, seed: int) -> Path:
    return sweep_dir / "configs" / f"{point.id}-{ckey[:8]}" / f"seed-{seed}"


def standard_done(run_dir: Path, key: str, read: Read = read_json) -> bool:
    """The standard run of this task (same key: same config and feature keys) is complete and unmodified."""
    ident, met = read(run_dir / TASK_FILE), read(run_dir / "metrics.json")
    return (isinstance(ident, dict) and isinstance(met, dict) and ident.get("key") == key
            and met.get("complete") is True and not file_problems(run_dir, met))


def finished(run_dir: Path, key: str, features: Mapping[str, Any], cv_folds: int = 0, read: Read = read_json) -> bool:
    """A complete run of exactly this task (same key, same feature keys) is in run_dir, with its K-fold CV record
    (cv.json) when the sweep selects on cvK. A corrupted or edited run is trained again, never reused."""
    cv = read(run_dir / "cv.json") if cv_folds else {"task_key": key, "folds": 0}
    if not isinstance(cv, dict) or cv.get("task_key") != key or cv.get("folds") != cv_folds:
        return False
    met = read(run_dir / "metrics.json")
    got = (met.get("features") if isinstance(met, dict) else None) or {}
    if not all(isinstance(got.get(m), dict) and got[m].get("key") == f["key"] for m, f in features.items()):
        return False
    return standard_done(run_dir, key, read)


def _find_finished(sweep_dir: Path, point: Point, ckey: str, seed: int, key: str, features, read: Read) -> Path | None:
    """The run dir of this task if some earlier sweep in this dir finished it (grid order may have changed)."""
    here = _seed_dir(sweep_dir, point, ckey, seed)
    for d in [here, *sorted((sweep_dir / "configs").glob(f"*-{ckey[:8]}/seed-{seed}"))]:
        if finished(d, key, features, point.cv_folds, read):
            return d
    return None


def plan_tasks(points: Sequence[Point], features: Mapping[str, Mapping[str, Any]], sweep_dir: Path, cache_dir: Path,
               *, threads: int, gpus: int, device: str, read: Read = read_json) -> tuple[list[dict[str, Any]], list[Task]]:
    """Config records (with their seeds' tasks and run dirs) and the tasks still to run."""
    configs, pending = [], []
    for p in points:
        ckey = p.key(features[p.id])
        entry = {"id": p.id, "label": p.label, "values": p.values, "model": p.config.model,
                 "modalities": list(p.config.modalities), "key": ckey, "features": features[p.id],
                 "dir": str(_seed_dir(sweep_dir, p, ckey, 0).parent.relative_to(sweep_dir)), "tasks": []}
        for seed in p.config.seeds:
            key = task_key(ckey, seed)
            done = _find_finished(sweep_dir, p, ckey, seed, key, features[p.id], read)
            run_dir = done or _seed_dir(sweep_dir, p, ckey, seed)
            entry["tasks"].append({"seed": seed, "key": key, "dir": str(run_dir.relative_to(sweep_dir)),
                                   "state": "reused" if done else "pending"})
            if not done:
                cfg = RunConfig.from_dict({**p.config.to_dict(), "seeds": [seed]}).to_dict()
                pending.append(Task(p.id, p.label, seed, key, ckey, cfg, str(run_dir), str(cache_dir), threads,
                                    gpus, device, p.cv_folds))
        configs.append(entry)
    return configs, pending


