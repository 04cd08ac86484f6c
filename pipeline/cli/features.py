"""`mer-pipe features` (a typer function registered in pipeline/cli/__init__.py; the `cache` commands are in
pipeline/cli/cache.py).

Options default to None so defaults stay in one place (presets.py, plan.py, executors.py). The command parses,
calls pipeline/api.py and prints; api.py imports the heavy modules inside its functions, so `--help` stays fast.
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from mer_pipe.common.devices import check_device
from mer_pipe.pipeline import api

from .cache import CacheDirOption

_PRESETS = api.presets()
_DEFAULT_PRESET = next(iter(_PRESETS))
PRESET_HELP = (f"Extractor preset: {', '.join(_PRESETS)} (default {_DEFAULT_PRESET}). offline needs no downloads"
               " (tiny Swin/wav2vec2 are plumbing); paper: RoBERTa-large, wav2vec2-base, eGeMAPS, Swin-base (needs"
               " weights); deepmsi: DeepMSI-MER's inputs (BERT and wav2vec2-base fine-tuned on the train labels,"
               " eGeMAPS, frozen Swin).")
ONLY_HELP = (f"Comma-separated slots to extract, e.g. t,a ({_DEFAULT_PRESET}: {', '.join(_PRESETS[_DEFAULT_PRESET])}).")
SET_HELP = ("Per-slot override SLOT.KEY=VALUE, e.g. t.model=/path/to/roberta-large or a.extractor=wav2vec2 (extractors: "
            f"{', '.join(api.names('extractor'))}; repeatable). t.finetune=true fine-tunes the slot's encoder on the"
            " train labels first (options t.finetune.lr=5e-5, .epochs, .context, .crossfit, ...; docs/contracts.md).")


def features(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Prepared dataset name (see `mer-pipe prepare`).")],
    preset: Annotated[Optional[str], typer.Option(help=PRESET_HELP)] = None,
    only: Annotated[Optional[str], typer.Option("--only", help=ONLY_HELP)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
    executor: Annotated[Optional[str], typer.Option(help="serial (in this process, the reference) or dask (local process cluster, or --scheduler). Default dask.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes of the local dask cluster (default: CPU cores, at most 4).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a running dask scheduler (tcp://host:8786); its workers must see the same cache directory.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N. Never changes a cache key.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first media failure (naming utterance, file and reason) instead of recording it.")] = False,
    cache_dir: CacheDirOption = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Utterances per forward pass for every slot (default per slot in the preset).")] = None,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", help="Utterances per shard for new feature sets (default 256; existing sets keep theirs).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-extract the utterances that shards recorded as"
        " failed (e.g. media copied since); only those shards are rewritten.")] = False,
    hash_media: Annotated[bool, typer.Option("--hash-media", help="Record a sha256 of each failed utterance's media file (default: size and mtime), for `cache verify`.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Checksum every present shard and fine-tuned checkpoint again, even"
        " unchanged ones (bit rot), and recompute what fails.")] = False,
    overlap: Annotated[Optional[str], typer.Option("--overlap", help="Decode the next batches while the encoder runs: auto"
        " (default: on CUDA, and for video on CPU when a core is idle), on or off. Same features either way.")] = None,
    decode_threads: Annotated[Optional[int], typer.Option("--decode-threads", help="Threads decoding media per worker"
        " (default: 1 on CPU; on CUDA the worker's cores less one, at most 8).")] = None,
    batch_budget: Annotated[Optional[float], typer.Option("--batch-budget", help="Form batches by seconds of audio or"
        " frames of video instead of --batch-size rows (text keeps rows).")] = None,
) -> None:
    """Extract features for a prepared dataset into the cache (only missing shards) and lock the slots."""
    check_device(device, remote=scheduler is not None)  # --device cuda without a GPU: one line, before any work

    summary = api.extract(dataset, preset=preset, only=only, sets=set_ or (), executor=executor, workers=workers,
                          scheduler=scheduler, device=device, strict=strict, cache_dir=cache_dir, batch_size=batch_size,
                          shard_size=shard_size, progress=not no_progress, retry_failed=retry_failed,
                          hash_media=hash_media, log=typer.echo, verify=verify, overlap=overlap,
                          decode_threads=decode_threads, batch_budget=batch_budget)
    typer.echo(summary.format())
    for warning in summary.warnings():
        typer.echo(f"mer-pipe: warning: {warning}", err=True)
    # per fine-tuned slot: its encoder's W-F1 on the training rows next to dev, and the leak warning (issue 19)
    for line, leak in api.finetune_gaps(dataset, [sl for st in summary.stages.values() for sl in st.slots], cache_dir):
        typer.echo(line)
        if leak is not None:
            typer.echo(leak, err=True)
    summary.check()  # every utterance of a slot failed: exit 2 (shards kept)
