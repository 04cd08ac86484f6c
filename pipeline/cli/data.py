"""`mer-pipe synth` and `mer-pipe prepare`: typer command functions (registered in pipeline/cli/__init__.py).

Options default to None so the defaults stay in one place (synth/__init__.py, prepare.py). Each command parses,
calls pipeline/api.py and prints; recipe names come from the registries.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mer_pipe.common.commands import command
from mer_pipe.common.errors import ConfigError
from mer_pipe.pipeline import api

from .cache import CACHE_HELP

IMPORTERS = ("pickle", "parquet")  # prepare RECIPEs that import features too (pipeline/cli/interop.py)
RECIPE_HELP = (f"Corpus recipe: {', '.join(api.names('recipe'))} (manifest: your own JSONL), pickle (a published ERC"
               " feature pickle: DialogueRNN/MMGCN/COSMIC) or parquet (a `cache export --format parquet` file);"
               " docs/interop.md.")


def synth(
    recipe: Annotated[Optional[str], typer.Argument(help=f"Corpus to synthesise, in its recipe's folder layout: {' or '.join(api.names('synth'))}.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="New or empty folder to write the corpus into (required).")] = None,
    dialogues: Annotated[Optional[int], typer.Option(help="Number of dialogues over train/dev/test (default 20, at least 3).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives the same corpus (default 0).")] = None,
    text_from: Annotated[Optional[Path], typer.Option("--text-from", help="Folder with the real MELD CSVs: take dialogues, speakers, texts and"
        " labels from them (meld only).")] = None,
    faults: Annotated[bool, typer.Option("--faults", help="Plant real-corpus faults (missing/truncated/audio-less/orphan clips, a malformed row) listed in faults.json.")] = False,
) -> None:
    """Write a miniature corpus with planted, label-dependent text/audio/video cues (for tests and the demo)."""
    # required values are checked here, not by click, so a miss is one MerPipeError line like every other error
    if recipe is None:
        raise ConfigError(f"{command('synth')} needs a RECIPE; choose one of: {', '.join(api.names('synth'))}")
    if out is None:
        raise ConfigError(f"{command('synth', recipe)} needs --out DIR (a new or empty folder for the corpus)")
    res = api.synth(recipe, out, dialogues=dialogues, seed=seed, text_from=text_from, faults=faults)
    typer.echo(f"{res.recipe}: {res.dialogues} dialogues, {res.utterances} annotated utterances in {res.root}")
    for f in res.faults:
        typer.echo(f"  planted {f['kind']}: {f['id']} ({f['path']}, found by {f['detect']})")
    typer.echo(f"next: {command('prepare', res.recipe, root=res.root, name=f'synth-{res.recipe}')}")


def prepare(
    recipe: Annotated[Optional[str], typer.Argument(help=RECIPE_HELP)] = None,
    root: Annotated[Optional[Path], typer.Option(help="Corpus folder (MELD.Raw, IEMOCAP_full_release, or the base of the paths in --manifest); for pickle, the .pkl file;"
        " for parquet, the .parquet file or a folder of them.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Dataset name in the cache (default: the recipe name).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help=CACHE_HELP)] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="JSONL manifest for the 'manifest' recipe (schema in docs/contracts.md).")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="Decode every media file to report undecodable, truncated or audio-less clips (slow on the full corpus).")] = False,
    allow_outside_root: Annotated[bool, typer.Option("--allow-outside-root", help="Accept manifest media paths that leave --root (.. or absolute paths elsewhere).")] = False,
    layout: Annotated[Optional[str], typer.Option(help=f"pickle only: {', '.join(api.names('layout'))} (default: detected).")] = None,
    train_utterances: Annotated[Optional[int], typer.Option("--train-utterances", help="Keep about N training utterances,"
        " in whole dialogues chosen with --subset-seed (dev and test untouched; recorded in dataset.json), e.g. --name"
        " meld-5k --train-utterances 5000.")] = None,
    subset_seed: Annotated[Optional[int], typer.Option("--subset-seed", help="Seed of the training subset (default 0).")] = None,
) -> None:
    """Read a corpus into a validated manifest in the cache and print what was found and what is wrong."""
    if name is not None:  # every recipe: refused before any work
        api.check_dataset_name(name)
    if (train_utterances is not None or subset_seed is not None) and recipe in IMPORTERS:
        raise ConfigError(f"--train-utterances / --subset-seed work with the corpus recipes ({', '.join(api.names('recipe'))}), "
                          f"not {recipe}; drop them")
    if recipe == "pickle":  # a feature pickle: manifest plus locked feature sets (pipeline/interop)
        from .interop import prepare_pickle

        prepare_pickle(root, name=name, cache_dir=cache_dir, layout=layout)
        return
    if recipe == "parquet":  # a `cache export --format parquet` file: manifest plus locked feature sets
        from .interop import prepare_parquet

        prepare_parquet(root, name=name, cache_dir=cache_dir)
        return
    if recipe is None:
        raise ConfigError(f"{command('prepare')} needs a RECIPE; choose one of: {', '.join(api.names('recipe'))}")
    report = api.prepare(recipe, root, name=name, cache_dir=cache_dir, manifest=manifest, probe=probe,
                         allow_outside_root=allow_outside_root, train_utterances=train_utterances, subset_seed=subset_seed)
    folder, info = api.dataset_info(report.name, cache_dir)
    typer.echo(report.summary(info["label_names"]))
    typer.echo(f"wrote {folder}/manifest.jsonl (+ dataset.json, prepare_report.json)")
