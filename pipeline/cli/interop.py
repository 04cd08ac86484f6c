"""`mer-pipe prepare pickle|parquet` and `mer-pipe cache export` (typer command functions; pipeline/cli/__init__.py
and pipeline/cli/data.py register them). Each parses, calls pipeline/api.py and prints."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mer_pipe.common.commands import command
from mer_pipe.common.errors import ConfigError
from mer_pipe.pipeline import api

from .cache import CACHE_HELP


def prepare_pickle(root: Path | None, name: str | None = None, cache_dir: Path | None = None,
                   layout: str | None = None) -> None:
    """`mer-pipe prepare pickle --root FILE [--layout L] [--name N]`: import a published ERC feature pickle."""
    if root is None:
        raise ConfigError(f"{command('prepare', 'pickle')} needs --root FILE: a feature pickle in one of the layouts "
                          f"{', '.join(api.names('layout'))} (e.g. IEMOCAP_features.pkl)")
    res = api.import_pickle(root, name=name, cache_dir=cache_dir, layout=layout)
    src = res.info["source"]
    typer.echo(res.report.summary(res.info["label_names"]))
    typer.echo(f"  layout {src['layout']} (sha256 {src['sha256'][:12]})")
    for slot, e in res.slots.items():
        typer.echo(f"  slot {slot:5s} <- {e['element']:16s} dim {e['dim']:5d}  key {e['key']}")
    out, _ = api.dataset_info(res.report.name, cache_dir)
    modalities = ",".join(sorted({s[0] for s in res.slots}, key="tav".index)) or "t"
    typer.echo(f"wrote {out}/manifest.jsonl (+ dataset.json, prepare_report.json) and locked "
               f"{', '.join(res.slots) or 'no'} feature sets; next: "
               f"{command('train', dataset=res.report.name, modalities=modalities)}")


def cache_export(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Prepared dataset name.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="mmgcn (IEMOCAP_features.pkl / MELD_features_raw1.pkl tuple, read by MMGCN, DialogueRNN,"
        " DialogueGCN, M3Net loaders), cosmic (COSMIC's *_features_roberta.pkl), or parquet (one file: manifest columns, one column per"
        " slot, keys/configs/provenance in its metadata; pandas, pyarrow and HF datasets read it; docs/interop.md).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Pickle (or .parquet) file to write.")] = None,
    variant: Annotated[str | None, typer.Option(help="iemocap or meld tuple variant (default: from the dataset's labels).")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out when it exists (never a path inside the cache).")] = False,
) -> None:
    """Write a dataset's locked features (and manifest fields) as an ERC feature pickle that the public repos load."""
    if dataset is None or fmt is None or out is None:
        raise ConfigError(f"{command('cache', 'export')} needs --dataset NAME, --format "
                          f"{'|'.join(api.names('export'))} and --out FILE")
    if fmt == "parquet":
        _export_parquet(dataset, out, cache_dir, overwrite)
        return
    res = api.export(dataset, fmt, out, cache_dir=cache_dir, variant=variant, overwrite=overwrite)
    d = res.dialogues
    typer.echo(f"wrote {res.path} ({res.fmt}, {res.variant} variant): {d['train']} train, {d['dev']} dev, "
               f"{d['test']} test dialogues; slots " + ", ".join(f"{s} ({dim})" for s, dim in res.slots.items()))
    typer.echo(f"  loads unchanged with {res.loader}")
    for w in dict.fromkeys(res.warnings):
        typer.echo(f"  warning: {w}", err=True)


def _export_parquet(dataset: str, out: Path, cache_dir: Path | None, overwrite: bool) -> None:
    res = api.export(dataset, "parquet", out, cache_dir=cache_dir, overwrite=overwrite)
    typer.echo(f"wrote {res.path} (parquet): {res.rows} utterances of {dataset}; slots " + ", ".join(
        f"{s} ({e['extractor']} {e['key']}, dim {e['dim']}, {e['layout']}" + (f", {e['n_failed']} failed)" if e["n_failed"] else ")")
        for s, e in res.slots.items()))
    typer.echo(f"  read it with pandas.read_parquet, pyarrow.parquet.read_table or datasets.load_dataset(\"parquet\", "
               f"data_files=\"{res.path}\"); import it with `{command('prepare', 'parquet', root=res.path, name='NAME')}`")


def prepare_parquet(root: Path | None, name: str | None = None, cache_dir: Path | None = None) -> None:
    """`mer-pipe prepare parquet --root FILE_OR_DIR [--name N]`: import a `cache export --format parquet` file."""
    if root is None:
        raise ConfigError(f"{command('prepare', 'parquet')} needs --root FILE_OR_DIR: a file written by "
                          f"`{command('cache', 'export', format='parquet')}` (or a folder holding it, e.g. a Hub snapshot)")
    res = api.import_parquet(root, name=name, cache_dir=cache_dir)
    typer.echo(res.report.summary(res.info["label_names"]))
    typer.echo(f"  source {res.info['source']['file']} (sha256 {res.info['source']['sha256'][:12]}), exported from "
               f"dataset {res.info['source']['exported_dataset']!r}")
    for slot, e in res.slots.items():
        typer.echo(f"  slot {slot:5s} <- {e['extractor']:12s} dim {e['dim']:5d}  key {e['key']} (as exported)")
    out, _ = api.dataset_info(res.report.name, cache_dir)
    typer.echo(f"wrote {out}/manifest.jsonl (+ dataset.json, prepare_report.json) and locked "
               f"{', '.join(res.slots)} feature sets; next: {command('train', dataset=res.report.name)}")
