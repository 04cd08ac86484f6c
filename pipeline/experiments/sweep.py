"""Sweeps: many (config, seed) runs on one executor, selection on dev, one sweep.json that says it all.

Layout of a sweep directory (one run dir per (config, seed), so every task is independent, resumable and
parallel; a finished config also gets a seed-aggregate dir that `mer-pipe runs` lists as one row):

    SWEEP/sweep.json                         grid, every task's state, the per-config table and the selection
    SWEEP/sweep.md                           the same tables for people
    SWEEP/configs/c01-<key8>/seed-0/         a normal run dir (mer-pipe train's files + sweep_task.json)
    SWEEP/configs/c01-<key8>/metrics.json    mean ± std over the config's seeds (+ config.yaml, predictions.csv)

`sweep` (what `api.sweep` calls) validates every option and grid point, plans the tasks (sweeptasks.py: which
are finished and reused, workers and threads) and runs the rest with `run_sweep`. Two sweeps into one dir share
work through run locks on the task dirs (sweepclaims.py).
Selection: per model, the config with the highest mean selection-set (dev) weighted F1 over its seeds; ties go
to the earlier grid point; `--select-on cvK` chooses on K folds of the training dialogues instead (cvselect.py, cv.json
per run dir). Test is reported for the chosen config; the test scores of all configs are written apart, marked not
for selection.

Tasks go through an executor (pipeline/executors.py): serial, a local dask cluster, or a scheduler. Each task
pins torch to `threads` threads; on a local GPU cluster each worker takes the GPU of its index (one run per GPU),
on a scheduler whose workers advertise a `GPU` resource every task asks for one.
The dataset's lock.json is read once per sweep, the leak warning (corpus/leak.py) computed once per sweep, and
each run dir's JSON files read once per command (sweepreport.RunFiles).
"""
from __future__ import annotations

from mer_pipe.common.commands import command

import dataclasses
import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from mer_pipe.pipeline.corpus.leak import leaks, slot_reports, warning
from mer_pipe.pipeline.train.protocols import protocol_notes

from .sweepclaims import TaskClaims, adopted_failure, now, read_attempts, who
from .sweepreport import RunFiles, config_row, format_tables, read_json, select, write_config_aggregate
from .sweepspec import Point
from .sweeptasks import TASK_FILE, Task, feature_keys, finished, plan_tasks, run_task

Log = Callable[[str], None]
SWEEP_FILE = "sweep.json"
FORMAT = 1


@dataclass
class SweepResult:
    sweep_dir: Path
    state: dict[str, Any]
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def selection(self) -> dict[str, Any]:
        return self.state["selection"]


class RunTally:
    """The facts of a sweep's per-run lines (plain lines, terminal or not): rate, ETA and the best score so far."""

    def __init__(self, total: int, select_on: str) -> None:
        self.total, self.select_on, self.done, self.best = total, select_on, 0, None
        self._t0, self._clock = time.perf_counter(), time.perf_counter

    def add(self, score: float | None) -> str:
        """Count one finished run (score None = failed); returns '; 40.1 s/run, ETA 02:40, best dev W-F1 0.7012'."""
        from mer_pipe.common.progress import hms

        self.done += 1
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        per = (self._clock() - self._t0) / self.done
        eta = f", ETA {hms(per * (self.total - self.done))}" if self.done < self.total else ""
        best = f", best {self.select_on} W-F1 {self.best:.4f}" if self.best is not None else ""
        return f"; {per:.1f} s/run{eta}{best}"


# ---- the command (api.sweep) -------------------------------------------------------------------------------

def sweep(model: str | None = None, dataset: str | None = None, *, grid: Sequence[str] = (),
          config_file: str | Path | None = None, sets: Sequence[str] = (), modalities: str | Sequence[str] | None = None,
          seeds: str | Sequence[int] | None = None, epochs: int | None = None, protocol: str | None = None,
          select_on: str | None = None, device: str | None = None, profile: str | None = None,
          slots: dict[str, str] | None = None, out: str | Path | None = None, cache_dir: str | Path | None = None,
          executor: str | None = None, workers: int | None = None, threads: int | None = None,
          scheduler: str | None = None, dry_run: bool = False, log: Log = print) -> SweepResult | None:
    """Train every (grid point, seed) on an executor, select per model on dev (see the module docstring).
    Every option and every grid point is validated before the first run starts. Returns a SweepResult
    (None with dry_run, which prints the plan)."""
    import os

    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.common.errors import ConfigError
    from mer_pipe.pipeline.corpus.manifest import cache_root
    from mer_pipe.pipeline.executors import ExecutorConfig, SerialExecutor, make_executor
    from mer_pipe.pipeline.train.runconfig import parse_list
    from mer_pipe.pipeline.train.runner import check_dataset, resolve_modalities

    from .sweepspec import SweepSpec, expand, load_sweep_file, parse_grid
    from .sweeptasks import default_sweep_dir, plan_workers

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
    check_dataset(points[0].config.dataset, root)  # one dataset per sweep (the grid cannot vary it)
    lock = FeatureStore(root).read_lock(points[0].config.dataset)  # read once per sweep
    points = [dataclasses.replace(p, config=resolve_modalities(p.config, root, quiet, lock)) for p in points]
    features = {p.id: feature_keys(p.config, root, lock) for p in points}
    run_seeds = list(points[0].config.seeds)
    sweep_dir = Path(out) if out is not None else default_sweep_dir(points, run_seeds)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"--out {sweep_dir} is a file; give a directory for the sweep")
    device_req = points[0].config.device
    gpus = 0
    if not ex_cfg.scheduler:
        from mer_pipe.common.devices import resolve_device

        if resolve_device(device_req).startswith("cuda"):  # no GPU for an explicit cuda -> ConfigError now
            import torch

            gpus = 1 if device_req.startswith("cuda:") else torch.cuda.device_count()
    files = RunFiles()  # every run dir's JSON files read once per command
    configs, pending = plan_tasks(points, features, sweep_dir, root, threads=1, gpus=gpus, device=device_req,
                                  read=files)
    n_workers, n_threads = plan_workers(ex_cfg.kind, len(pending), cores=os.cpu_count() or 1, gpus=gpus,
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
    plan = (configs, [dataclasses.replace(t, threads=n_threads) for t in pending])  # planned once
    ex = SerialExecutor() if not pending else make_executor(dataclasses.replace(ex_cfg, workers=n_workers))
    with ex:
        return run_sweep(points, features, sweep_dir=sweep_dir, cache_dir=root, executor=ex, threads=n_threads,
                         gpus=gpus, device=device_req, definition=definition, log=log, lock=lock, plan=plan,
                         files=files)


# ---- the driver --------------------------------------------------------------------------------------------

def _iter_results(executor: Any, tasks: Sequence[Task], device: str) -> Iterator[tuple[Task, dict[str, Any]]]:
    from mer_pipe.pipeline.executors import gpu_annotation

    with gpu_annotation(executor, device):
        yield from executor.run(run_task, tasks)


def run_sweep(points: Sequence[Point], features: Mapping[str, Mapping[str, Any]], *, sweep_dir: Path, cache_dir: Path,
              executor: Any, threads: int, gpus: int, device: str, definition: Mapping[str, Any],
              log: Log = print, lock: Mapping[str, Any] | None = None,
              plan: tuple[list[dict[str, Any]], list[Task]] | None = None, files: RunFiles | None = None) -> SweepResult:
    """Run the missing tasks of a sweep on `executor` and write sweep.json after every finished task.
    `lock` (the dataset's lock.json), `plan` (plan_tasks' result) and `files` come from `sweep`, which read and
    made them once; without them they are read and made here."""
    from mer_pipe.common.files import write_json_atomic, write_text_atomic

    cv_folds, dataset = points[0].cv_folds, points[0].config.dataset
    select_on = f"cv{cv_folds}" if cv_folds else points[0].config.select_on
    slots = [p.config.slots.get(m, m) for p in points for m in p.config.modalities]
    notes = protocol_notes(points[0].config.protocol, points[0].config.select_on)
    reports = slot_reports(dataset, slots, cache_dir, lock=lock)  # fine-tuned slots: once per sweep, not per task
    if cv_folds:  # too few training dialogues: refused before anything is written; notes on CV-optimistic slots
        from .cvselect import cv_notes

        notes = [*notes, *cv_notes(dataset, cv_folds, reports, cache_dir)]
    for sf in reports:  # memorised fine-tuned features (issue 19)
        if leaks(sf):
            log(warning(sf))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    files = files if files is not None else RunFiles()
    configs, pending = plan or plan_tasks(points, features, sweep_dir, cache_dir, threads=threads, gpus=gpus,
                                          device=device, read=files)
    n_all = sum(len(c["tasks"]) for c in configs)
    by_key = {t["key"]: t for c in configs for t in c["tasks"]}
    cfg_of = {p.id: p.config for p in points}
    state: dict[str, Any] = {
        "format": FORMAT, "definition": {**definition, "select_on": select_on}, "notes": notes, "executor": executor.describe(),
        "threads_per_run": threads, "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "status": "running", "counts": {}, "configs": configs, "configs_table": [], "selection": {},
    }

    def save(status: str) -> None:
        rows = [config_row(sweep_dir, c, files) for c in configs]
        if cv_folds:  # what dev would choose, for comparison (sweep.md; the benchmark's agreement column)
            state["dev_selection"] = select(rows, "dev")
        state.update(status=status, configs_table=rows, selection=select(rows, select_on),
                     counts={s: sum(t["state"] == s for t in by_key.values())
                             for s in ("reused", "done", "failed", "pending")},
                     updated=datetime.datetime.now().isoformat(timespec="seconds"))
        for c in configs:  # a config's seed-aggregate dir, once all its seeds are finished (again if they changed)
            agg = files(sweep_dir / c["dir"] / "metrics.json")
            if not isinstance(agg, dict) or (agg.get("sweep") or {}).get("seed_dirs") != [t["dir"] for t in c["tasks"]]:
                if write_config_aggregate(sweep_dir, c, cfg_of[c["id"]], notes, files):
                    files.forget(sweep_dir / c["dir"])
        write_json_atomic(sweep_dir / SWEEP_FILE, state, sort_keys=False)

    for note in notes:
        log(note)
    log(f"sweep: {len(configs)} config(s) x {len(points[0].config.seeds)} seed(s) = {n_all} runs; "
        f"{n_all - len(pending)} reused, {len(pending)} to run on {executor.describe()}, {threads} torch "
        f"thread(s) per run; sweep dir {sweep_dir}")
    save("running")
    t0, n_done, since, claims = time.perf_counter(), 0, now(), TaskClaims()
    tally = RunTally(len(pending), select_on)  # rate, ETA, best so far for the per-run lines

    def record(task: Task, res: dict[str, Any], how: str = "") -> None:
        nonlocal n_done
        rec = by_key[task.key]
        files.forget(sweep_dir / rec["dir"])  # its run dir was (re)written: read its files again, once
        rec.update({k: res[k] for k in ("state", "seconds", "host", "pid", "threads") if k in res})
        if res.get("error"):
            rec["error"] = res["error"]
        if rec["state"] in ("done", "reused") and not finished(sweep_dir / rec["dir"], task.key,
                                                              features[task.config_id], task.cv_folds, files):
            rec.update(state="failed", error="the run finished but its features are no longer the locked keys "
                       "(features were re-extracted during the sweep); rerun the sweep")
        n_done += 1
        met = files(sweep_dir / rec["dir"] / "metrics.json") if rec["state"] in ("done", "reused") else None
        cv = files(sweep_dir / rec["dir"] / "cv.json") if met and cv_folds else None
        value = (cv["weighted_f1"]["mean"] if cv else met["aggregate"]["dev"]["weighted_f1"]["mean"]) if met else None
        score = f"{select_on} W-F1 {value:.4f}" if met else f"FAILED: {rec.get('error')}"
        log(f"[{n_done}/{len(pending)}] {task.config_id} seed {task.seed} ({task.label}): {score} "
            f"({res.get('seconds', 0):.1f}s){how}{tally.add(value)}")
        save("running")

    def train_claimed(tasks: Sequence[Task]) -> None:
        for task, res in _iter_results(executor, tasks, device):
            record(task, res)
            claims.release(task)

    def done_elsewhere(task: Task) -> bool:  # finished since our plan, by another sweep: read its files afresh
        files.forget(Path(task.out))
        return finished(Path(task.out), task.key, features[task.config_id], task.cv_folds, files)

    try:
        mine, theirs = claims.claim(pending)  # run locks (sweepclaims.py): another sweep's runs are waited for
        for task in [t for t in mine if done_elsewhere(t)]:
            mine.remove(task)  # another sweep finished it between our plan and our claim
            record(task, {"state": "reused"}, " reused: trained by another sweep")
            claims.release(task)
        train_claimed(mine)
        for task in theirs:
            claims.wait(task, lambda owner, t=task: log(
                f"{t.config_id} seed {t.seed}: {who(owner)} is training it (another sweep); waiting to reuse it"))
            run_dir = Path(task.out)
            failure = adopted_failure(read_attempts(run_dir, task.key, read_json, TASK_FILE), since)
            if done_elsewhere(task):
                record(task, {"state": "reused"}, " reused: trained by another sweep")
            elif failure:
                record(task, {"state": "failed", "error": failure.get("error")}, " failed in another sweep")
            else:  # its trainer was killed (or wrote nothing): ours to train
                train_claimed([task])
            claims.release(task)
    except KeyboardInterrupt:
        for task in pending:  # a run that finished its files while the interrupt landed counts as done
            rec = by_key[task.key]
            if rec["state"] == "pending" and done_elsewhere(task):
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
    log(f"sweep dir: {sweep_dir} ({SWEEP_FILE}; `{command('runs', sweep_dir)}` lists its configs)")
    return SweepResult(sweep_dir, state, failed)
