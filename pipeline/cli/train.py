"""`mer-pipe train`, `mer-pipe evaluate`, `mer-pipe demo` (typer command functions; pipeline/cli registers them).

Options default to None: the defaults live in the configs (pipeline/train/runconfig.py explains the
precedence). Each command parses, calls one function of pipeline/api.py and prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mer_pipe.common.commands import command
from mer_pipe.common.devices import check_device
from mer_pipe.common.errors import ConfigError
from mer_pipe.common.formatting import format_mean_std
from mer_pipe.pipeline import api

from .cache import CACHE_HELP

MODEL_HELP = f"Model: {', '.join(api.names('model'))}."


def train(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Prepared dataset name (mer-pipe prepare).")] = None,
    modalities: Annotated[Optional[str], typer.Option(help="Comma list of t,a,v (default: every modality with usable features).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma list of seeds (default 0,1,2); metrics are mean ± std over them.")] = None,
    select_on: Annotated[Optional[str], typer.Option("--select-on", help="Model selection on dev (default) or test (the papers' habit; flagged in every output).")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="standard (default) or kfold10-utterance (DeepMSI's pooled 10-fold CV).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (default: the model's trainer default).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="dev (default; chosen on dev, fast) or paper (the specification's model and trainer values; docs/models.md).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Run YAML (from --print-config, or a run's config.yaml).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override model.KEY=VALUE or trainer.KEY=VALUE, e.g. trainer.lr=3e-4, model.vsc.k=8 (repeatable).")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the fully resolved config as YAML and exit without training.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default runs/DATASET-MODEL-TIME).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto (default), cpu, cuda or cuda:N.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help=CACHE_HELP)] = None,
    slot: Annotated[Optional[list[str]], typer.Option("--slot", help="Read a modality from another lock slot, e.g. a=a_w2v (repeatable).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar (one line per finished seed).")] = False,
) -> None:
    """Train a model on cached features; writes config.yaml, metrics.json, predictions.csv, plots and checkpoint.pt."""
    cfg = api.train_config(model, dataset, config_file=config, sets=set_ or (), modalities=modalities, seeds=seeds,
                           epochs=epochs, protocol=protocol, select_on=select_on, device=device, profile=profile,
                           slots=parse_slot_overrides(slot))
    if print_config:
        typer.echo(api.config_yaml(cfg), nl=False)
        return
    check_device(cfg.device)  # --device (or the --config file's) without a GPU: one line, before any work
    api.train(config=cfg, out=out, cache_dir=cache_dir, overwrite=overwrite, log=typer.echo, progress=not no_progress)


def parse_slot_overrides(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        m, sep, s = item.partition("=")
        if not sep or not m.strip() or not s.strip():
            raise ConfigError(f"--slot {item!r}: write MODALITY=SLOT, e.g. --slot a=a_w2v")
        out[m.strip()] = s.strip()
    return out


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by mer-pipe train.")],
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache root (default: the one the run was trained from).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (default), cpu or cuda.")] = None,
) -> None:
    """Reload a run's checkpoint and features, re-score its test set and check the stored metrics are reproduced.
    Exit code 1 when they are not."""
    check_device(device)

    res = api.evaluate(run_dir, cache_dir=cache_dir, device=device, log=typer.echo)
    a = res["aggregate"]["test"]
    typer.echo(f"test: acc {format_mean_std(a['accuracy'])}  W-F1 {format_mean_std(a['weighted_f1'])}")
    if res["problems"]:  # corruption or tampering first: the files are not what training wrote
        more = f" (and {len(res['problems']) - 1} more above)" if len(res["problems"]) > 1 else ""
        typer.echo(f"mer-pipe: error: {run_dir} no longer holds what training wrote: {res['problems'][0]}{more}; "
                   f"restore the run dir from a copy or retrain with `{command('train')}`", err=True)
        raise SystemExit(1)
    if not res["reproduced"]:
        why = ("the run's files match what training wrote, so the cause is a different device or library versions"
               if res.get("recorded") else "different device or library versions? (this run predates file checksums)")
        typer.echo(f"mer-pipe: error: stored test metrics were NOT reproduced exactly; {why}", err=True)
        raise SystemExit(1)
    typer.echo("stored test metrics reproduced exactly")


def demo(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the corpus, cache and run (default ./demo).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu (default) or cuda.")] = None,
) -> None:
    """The whole pipeline offline in a few minutes: synthetic MELD-like corpus -> features -> train -> metrics."""
    check_device(device)  # before the corpus is synthesised

    api.demo(out if out is not None else Path("demo"), log=typer.echo, device=device or "cpu")
