"""Sweeps: many (config, seed) runs on one executor, selection on dev, one sweep.json that says it all.

Layout of a sweep directory (one run dir per (config, seed), so every task is independent, resumable and
parallel; a finished config also gets a seed-aggregate dir that `mer-pipe runs` lists as one row):

    SWEEP/sweep.json                         grid, every task's state, the per-config table and the selection
    SWEEP/sweep.md                           the same tables for people
    SWEEP/configs/c01-<key8>/seed-0/         a normal run dir (mer-pipe train's files + sweep_task.json)
    SWEEP/configs/c01-<key8>/metrics.json    mean ± std over the config's seeds (+ config.yaml, predictions.csv)

A task is reused when its run dir holds a complete metrics.json, its sweep_task.json carries the same task key
(resolved config without seeds/device + seed + feature keys), the features it read are still those keys and its
files match the checksums metrics.json recorded (runcheck.py). Two sweeps into one dir share work through run
locks on the task dirs (sweepclaims.py).
Selection: per model, the config with the highest mean selection-set (dev) weighted F1 over its seeds; ties go
to the earlier grid point; `--select-on cvK` chooses on K folds of the training dialogues instead (cvselect.py, cv.json
per run dir). Test is reported for the chosen config; the test scores of all configs are written apart, marked not
for selection.

Tasks go through an executor (pipeline/executors.py, handed in by pipeline/api.py): serial, a local
dask cluster, or a scheduler. Each task pins torch to `threads` threads; on a local GPU cluster each worker
takes the GPU of its index (one run per GPU), on a scheduler whose workers advertise a `GPU` resource every
task asks for one.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from mer_pipe.common.errors import CacheError, ConfigError, DiskFullError, MerPipeError

from mer_pipe.pipeline.corpus.leak import leak_warnings

from .cvselect import write_cv
from .progress import RunTally
from .protocols import protocol_notes
from .runconfig import RunConfig
from .sweepreport import config_row, format_tables, read_json, select, write_config_aggregate
from .runcheck import file_problems
from .sweepclaims import TaskClaims, adopted_failure, now, read_attempts, who
from .sweepspec import Point, task_key

Log = Callable[[str], None]
SWEEP_FILE = "sweep.json"
TASK_FILE = "sweep_task.json"
FORMAT = 1


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


@dataclass
class SweepResult:
    sweep_dir: Path
    state: dict[str, Any]
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def selection(self) -> dict[str, Any]:
        return self.state["selection"]


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

    from .runner import run_training

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
        if not (task.cv_folds and standard_done(out, task.key)):  # a dev sweep's finished run gains its CV only
            run_training(cfg, out=out, cache_dir=Path(task.cache_dir), overwrite=True, log=lambda s: None,
                         progress=False)
        if task.cv_folds:  # then K fits on folds of the training dialogues: out/cv.json (cvselect.py)
            write_cv(out, task.key, cfg, task.cv_folds, Path(task.cache_dir), device)
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

def feature_keys(cfg: RunConfig, cache_dir: Path) -> dict[str, dict[str, Any]]:
    """modality -> {slot, extractor, key} from the lock, for every modality the config reads."""
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.pipeline.corpus.hints import features_command

    lock = FeatureStore(cache_dir).read_lock(cfg.dataset)
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
    machine: two 2-thread runs on 2 cores are several times slower than one after the other. Serial runs also
    default to one thread, as a local worker: the thread count changes floating-point sums (a 3-epoch MLP on MELD
    moved by 0.04 points of dev W-F1 between 1 and 2 threads), so by default a serial and a dask sweep agree bit for bit."""
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


def standard_done(run_dir: Path, key: str) -> bool:
    """The standard run of this task (same key: same config and feature keys) is complete and unmodified."""
    ident, met = read_json(run_dir / TASK_FILE), read_json(run_dir / "metrics.json")
    return (isinstance(ident, dict) and isinstance(met, dict) and ident.get("key") == key
            and met.get("complete") is True and not file_problems(run_dir, met))


def finished(run_dir: Path, key: str, features: Mapping[str, Any], cv_folds: int = 0) -> bool:
    """A complete run of exactly this task (same key, same feature keys) is in run_dir, with its K-fold CV record
    (cv.json) when the sweep selects on cvK. A corrupted or edited run is trained again, never reused."""
    cv = read_json(run_dir / "cv.json") if cv_folds else {"task_key": key, "folds": 0}
    if not isinstance(cv, dict) or cv.get("task_key") != key or cv.get("folds") != cv_folds:
        return False
    met = read_json(run_dir / "metrics.json")
    got = (met.get("features") if isinstance(met, dict) else None) or {}
    if not all(isinstance(got.get(m), dict) and got[m].get("key") == f["key"] for m, f in features.items()):
        return False
    return standard_done(run_dir, key)


def _find_finished(sweep_dir: Path, point: Point, ckey: str, seed: int, key: str, features) -> Path | None:
    """The run dir of this task if some earlier sweep in this dir finished it (grid order may have changed)."""
    here = _seed_dir(sweep_dir, point, ckey, seed)
    for d in [here, *sorted((sweep_dir / "configs").glob(f"*-{ckey[:8]}/seed-{seed}"))]:
        if finished(d, key, features, point.cv_folds):
            return d
    return None


def plan_tasks(points: Sequence[Point], features: Mapping[str, Mapping[str, Any]], sweep_dir: Path, cache_dir: Path,
               *, threads: int, gpus: int, device: str) -> tuple[list[dict[str, Any]], list[Task]]:
    """Config records (with their seeds' tasks and run dirs) and the tasks still to run."""
    configs, pending = [], []
    for p in points:
        ckey = p.key(features[p.id])
        entry = {"id": p.id, "label": p.label, "values": p.values, "model": p.config.model,
                 "modalities": list(p.config.modalities), "key": ckey, "features": features[p.id],
                 "dir": str(_seed_dir(sweep_dir, p, ckey, 0).parent.relative_to(sweep_dir)), "tasks": []}
        for seed in p.config.seeds:
            key = task_key(ckey, seed)
            done = _find_finished(sweep_dir, p, ckey, seed, key, features[p.id])
            run_dir = done or _seed_dir(sweep_dir, p, ckey, seed)
            entry["tasks"].append({"seed": seed, "key": key, "dir": str(run_dir.relative_to(sweep_dir)),
                                   "state": "reused" if done else "pending"})
            if not done:
                cfg = RunConfig.from_dict({**p.config.to_dict(), "seeds": [seed]}).to_dict()
                pending.append(Task(p.id, p.label, seed, key, ckey, cfg, str(run_dir), str(cache_dir), threads,
                                    gpus, device, p.cv_folds))
        configs.append(entry)
    return configs, pending


# ---- the driver --------------------------------------------------------------------------------------------

def _iter_results(executor: Any, tasks: Sequence[Task], device: str) -> Iterator[tuple[Task, dict[str, Any]]]:
    from mer_pipe.pipeline.executors import gpu_annotation

    with gpu_annotation(executor, device):
        yield from executor.run(run_task, tasks)


def run_sweep(points: Sequence[Point], features: Mapping[str, Mapping[str, Any]], *, sweep_dir: Path, cache_dir: Path,
              executor: Any, threads: int, gpus: int, device: str, definition: Mapping[str, Any],
              log: Log = print) -> SweepResult:
    """Run the missing tasks of a sweep on `executor` and write sweep.json after every finished task."""
    from mer_pipe.common.files import write_json_atomic, write_text_atomic

    cv_folds, dataset = points[0].cv_folds, points[0].config.dataset
    select_on = f"cv{cv_folds}" if cv_folds else points[0].config.select_on
    slots = [p.config.slots.get(m, m) for p in points for m in p.config.modalities]
    notes = protocol_notes(points[0].config.protocol, points[0].config.select_on)
    if cv_folds:  # too few training dialogues: refused before anything is written; notes on CV-optimistic slots
        from .cvselect import cv_notes

        notes = [*notes, *cv_notes(dataset, cv_folds, slots, cache_dir)]
    for line in leak_warnings(dataset, slots, cache_dir):  # memorised fine-tuned features (issue 19)
        log(line)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    configs, pending = plan_tasks(points, features, sweep_dir, cache_dir, threads=threads, gpus=gpus, device=device)
    n_all = sum(len(c["tasks"]) for c in configs)
    by_key = {t["key"]: t for c in configs for t in c["tasks"]}
    cfg_of = {p.id: p.config for p in points}
    state: dict[str, Any] = {
        "format": FORMAT, "definition": {**definition, "select_on": select_on}, "notes": notes, "executor": executor.describe(),
        "threads_per_run": threads, "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "status": "running", "counts": {}, "configs": configs, "configs_table": [], "selection": {},
    }

    def save(status: str) -> None:
        rows = [config_row(sweep_dir, c) for c in configs]
        if cv_folds:  # what dev would choose, for comparison (sweep.md; the benchmark's agreement column)
            state["dev_selection"] = select(rows, "dev")
        state.update(status=status, configs_table=rows, selection=select(rows, select_on),
                     counts={s: sum(t["state"] == s for t in by_key.values())
                             for s in ("reused", "done", "failed", "pending")},
                     updated=datetime.datetime.now().isoformat(timespec="seconds"))
        for c in configs:  # a config's seed-aggregate dir, once all its seeds are finished (again if they changed)
            agg = read_json(sweep_dir / c["dir"] / "metrics.json")
            if not isinstance(agg, dict) or (agg.get("sweep") or {}).get("seed_dirs") != [t["dir"] for t in c["tasks"]]:
                write_config_aggregate(sweep_dir, c, cfg_of[c["id"]], notes)
        write_json_atomic(sweep_dir / SWEEP_FILE, state, sort_keys=False)

    for note in notes:
        log(note)
    log(f"sweep: {len(configs)} config(s) x {len(points[0].config.seeds)} seed(s) = {n_all} runs; "
        f"{n_all - len(pending)} reused, {len(pending)} to run on {executor.describe()}, {threads} torch "
        f"thread(s) per run; sweep dir {sweep_dir}")
    save("running")
    t0, n_done, since, claims = time.perf_counter(), 0, now(), TaskClaims()
    tally = RunTally(len(pending), select_on)  # rate, ETA, best so far for the per-run lines (progress.py)

    def record(task: Task, res: dict[str, Any], how: str = "") -> None:
        nonlocal n_done
        rec = by_key[task.key]
        rec.update({k: res[k] for k in ("state", "seconds", "host", "pid", "threads") if k in res})
        if res.get("error"):
            rec["error"] = res["error"]
        if rec["state"] in ("done", "reused") and not finished(sweep_dir / rec["dir"], task.key,
                                                              features[task.config_id], task.cv_folds):
            rec.update(state="failed", error="the run finished but its features are no longer the locked keys "
                       "(features were re-extracted during the sweep); rerun the sweep")
        n_done += 1
        met = read_json(sweep_dir / rec["dir"] / "metrics.json") if rec["state"] in ("done", "reused") else None
        cv = read_json(sweep_dir / rec["dir"] / "cv.json") if met and cv_folds else None
        value = (cv["weighted_f1"]["mean"] if cv else met["aggregate"]["dev"]["weighted_f1"]["mean"]) if met else None
        score = f"{select_on} W-F1 {value:.4f}" if met else f"FAILED: {rec.get('error')}"
        log(f"[{n_done}/{len(pending)}] {task.config_id} seed {task.seed} ({task.label}): {score} "
            f"({res.get('seconds', 0):.1f}s){how}{tally.add(value)}")
        save("running")

    def train_claimed(tasks: Sequence[Task]) -> None:
        for task, res in _iter_results(executor, tasks, device):
            record(task, res)
            claims.release(task)

    try:
        mine, theirs = claims.claim(pending)  # run locks (sweepclaims.py): another sweep's runs are waited for
        for task in [t for t in mine if finished(Path(t.out), t.key, features[t.config_id], t.cv_folds)]:
            mine.remove(task)  # another sweep finished it between our plan and our claim
            record(task, {"state": "reused"}, " reused: trained by another sweep")
            claims.release(task)
        train_claimed(mine)
        for task in theirs:
            claims.wait(task, lambda owner, t=task: log(
                f"{t.config_id} seed {t.seed}: {who(owner)} is training it (another sweep); waiting to reuse it"))
            run_dir = Path(task.out)
            failure = adopted_failure(read_attempts(run_dir, task.key, read_json, TASK_FILE), since)
            if finished(run_dir, task.key, features[task.config_id], task.cv_folds):
                record(task, {"state": "reused"}, " reused: trained by another sweep")
            elif failure:
                record(task, {"state": "failed", "error": failure.get("error")}, " failed in another sweep")
            else:  # its trainer was killed (or wrote nothing): ours to train
                train_claimed([task])
            claims.release(task)
    except KeyboardInterrupt:
        for task in pending:  # a run that finished its files while the interrupt landed counts as done
            rec = by_key[task.key]
            if rec["state"] == "pending" and finished(sweep_dir / rec["dir"], task.key, features[task.config_id],
                                                      task.cv_folds):
                rec["state"] = "done"
        save("interrupted")
        kept = sum(t["state"] in ("done", "reused") for t in by_key.values())
        raise KeyboardInterrupt(f"sweep interrupted; {kept} of {n_all} runs finished and are kept in {sweep_dir}; "
                                "rerun the same command to resume (finished runs are reused)") from None
    finally:
        claims.release_all()
    failed = [{"config": c["id"], **t} for c in configs for t in c["tasks"] if t["state"] == "failed"]
    state["wall_seconds"] = time.perf_counter() - t0
    save("failed" if failed else "complete")
    text = format_tables(state)
    write_text_atomic(sweep_dir / "sweep.md", text + "\n")
    log(text)
    log(f"sweep dir: {sweep_dir} ({SWEEP_FILE}; `mer-pipe runs {sweep_dir}` lists its configs)")
    return SweepResult(sweep_dir, state, failed)
