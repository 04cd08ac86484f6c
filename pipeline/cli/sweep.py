"""`mer-pipe sweep` (a typer command function; pipeline/cli registers it).

Options default to None: the defaults live in the configs and in pipeline/experiments/sweep.py. The command parses,
calls pipeline/api.py `sweep` and prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mer_pipe.common.devices import check_device
from mer_pipe.pipeline import api

from .cache import CACHE_HELP
from .train import parse_slot_overrides

MODEL_HELP = f"Model: {', '.join(api.names('model'))} (or a grid over 'model')."
GRID_HELP = ("KEY=V1,V2 (repeatable; the product of all): model.KEY, trainer.KEY, model or modalities, e.g. --grid "
             "model.d=128,256 --grid trainer.lr=1e-4,5e-4. List values keep their brackets: model.hidden=[256],[512,256].")
CONFIG_HELP = ("Sweep YAML: run-config keys (as train --print-config), set: [KEY=VALUE], grid: {KEY: [values]} or a "
               "list of such blocks.")


def sweep(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Prepared dataset name (mer-pipe prepare).")] = None,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help=GRID_HELP)] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma list of seeds per config (default 0,1,2); selection uses the mean over them.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help=CONFIG_HELP)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Fixed override for every run, model.KEY=VALUE or trainer.KEY=VALUE (repeatable; a grid point wins).")] = None,
    modalities: Annotated[Optional[str], typer.Option(help="Comma list of t,a,v (default: every modality with usable features).")] = None,
    select_on: Annotated[Optional[str], typer.Option("--select-on", help="Choose configs and epochs on dev (default) or test (flagged in every output); cvK (e.g. cv5):"
        " configs chosen by K-fold cross-validation over the training dialogues (dev and test labels unread; each run"
        " still picks its epoch on dev).")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="standard (default) or kfold10-utterance.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs per run (default: the model's trainer default).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Trainer defaults: dev (default) or paper.")] = None,
    slot: Annotated[Optional[list[str]], typer.Option("--slot", help="Read a modality from another lock slot, e.g. a=a_w2v (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Sweep directory (default runs/sweeps/DATASET-MODEL-KEY: rerunning the same sweep resumes it).")] = None,
    executor: Annotated[Optional[str], typer.Option(help="dask (default: a local cluster) or serial.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local worker processes (default: cores / --threads, or one per GPU).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads per run (default 1, serial too, so executors agree bit for bit); workers x threads <= cores.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a running dask scheduler, e.g. tcp://host:8786 (workers must see the cache and sweep dirs).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (default), cpu, cuda or cuda:N.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help=CACHE_HELP)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything and print the configs and the task count; train nothing.")] = False,
) -> None:
    """Train a grid of configs x seeds on an executor (serial, local dask cluster, or --scheduler); choose per model on
    dev; resume by rerunning the same command. Writes sweep.json, sweep.md and one run dir per (config, seed)."""
    check_device(device, remote=scheduler is not None)  # a --config file's device: api.sweep checks it
    res = api.sweep(model, dataset, grid=grid or (), config_file=config, sets=set_ or (), modalities=modalities,
                    seeds=seeds, epochs=epochs, protocol=protocol, select_on=select_on, device=device, profile=profile,
                    slots=parse_slot_overrides(slot), out=out, cache_dir=cache_dir, executor=executor, workers=workers,
                    threads=threads, scheduler=scheduler, dry_run=dry_run, log=typer.echo)
    if res is not None and res.failed:
        typer.echo(f"mer-pipe: {len(res.failed)} run(s) failed (see {res.sweep_dir / 'sweep.json'}), e.g. "
                   f"{res.failed[0]['config']} seed {res.failed[0]['seed']}: {res.failed[0].get('error')}; rerun the "
                   "same command to retry them (finished runs are reused)", err=True)
        raise typer.Exit(1)
