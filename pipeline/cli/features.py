"""`mer-pipe features` and `mer-pipe cache ls|verify|gc|du` (typer functions registered in pipeline/cli.py).

Options default to None so defaults stay in one place (presets.py, plan.py, executors.py).
Heavy imports happen inside the functions to keep `mer-pipe --help` fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

_CACHE_HELP = "Cache root (default: $MER_PIPE_CACHE, else ~/.cache/mer-pipe)."
# options shared by `features` and every `cache` command (typer reads the Annotated metadata)
CacheDirOption = Annotated[Optional[Path], typer.Option("--cache-dir", help=_CACHE_HELP)]
DatasetFilterOption = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Only this dataset.")]


def features(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Prepared dataset name (see `mer-pipe prepare`).")],
    preset: Annotated[Optional[str], typer.Option(help="Extractor preset: offline (no downloads; tiny Swin/wav2vec2 are plumbing) or paper"
        " (RoBERTa-large, wav2vec2-base, eGeMAPS, Swin-base; needs weights), or deepmsi (DeepMSI-MER's inputs: BERT and"
        " wav2vec2-base fine-tuned on the train labels, eGeMAPS, frozen Swin).")] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="Comma-separated slots to extract, e.g. t,a (offline:"
        " t, a, v, a_w2v).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Per-slot override SLOT.KEY=VALUE, e.g. t.model=/path/to/roberta-large or"
        " a.extractor=wav2vec2 (repeatable). t.finetune=true fine-tunes the slot's encoder on the train labels first"
        " (options t.finetune.lr=5e-5, .epochs, .context, .crossfit, ...; docs/contracts.md).")] = None,
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
    from mer_pipe.common.devices import check_device
    from mer_pipe.pipeline import api

    check_device(device, remote=scheduler is not None)  # --device cuda without a GPU: one line, before any work

    summary = api.extract(dataset, preset=preset, only=only, sets=set_ or (), executor=executor, workers=workers,
                          scheduler=scheduler, device=device, strict=strict, cache_dir=cache_dir, batch_size=batch_size,
                          shard_size=shard_size, progress=not no_progress, retry_failed=retry_failed,
                          hash_media=hash_media, log=typer.echo, verify=verify, overlap=overlap,
                          decode_threads=decode_threads, batch_budget=batch_budget)
    typer.echo(summary.format())
    for warning in summary.warnings():
        typer.echo(f"mer-pipe: warning: {warning}", err=True)
    _finetune_gaps(dataset, [sl for st in summary.stages.values() for sl in st.slots], cache_dir)
    summary.check()  # every utterance of a slot failed: exit 2 (shards kept)


def _finetune_gaps(dataset: str, slots: Sequence[str], cache_dir: Path | None) -> None:
    """Per fine-tuned slot: its encoder's W-F1 on the training rows next to dev (the memorisation gap; issue 19),
    and the leak warning when the gap is large (pipeline/corpus/leak.py)."""
    from mer_pipe.pipeline.corpus.leak import describe, leaks, slot_reports, warning

    for sf in slot_reports(dataset, slots, cache_dir):
        typer.echo(describe(sf))
        if leaks(sf):
            typer.echo(warning(sf), err=True)


cache_app = typer.Typer(help="Inspect and maintain the feature cache.", no_args_is_help=True,
                        add_completion=False, pretty_exceptions_enable=False)


def _store(cache_dir: Path | None, dataset: str | None = None):
    """The store; with `dataset`, refuses a dataset the cache does not hold (listing those it does)."""
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.common.errors import ConfigError

    from mer_pipe.pipeline.corpus.manifest import cache_root

    store = FeatureStore(cache_root(cache_dir))
    if dataset is not None and dataset not in store.datasets():
        have = ", ".join(store.datasets()) or "none"
        raise ConfigError(f"--dataset {dataset!r}: no such dataset in {store.root} (datasets: {have}); "
                          "prepare it with `mer-pipe prepare` or pick one of those")
    return store


def format_table(rows: Sequence[dict[str, Any]], empty: str = "(nothing)") -> str:
    """Left-aligned columns from a list of ordered dicts with the same keys."""
    if not rows:
        return empty
    cols = list(rows[0])
    cells = [cols] + [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


@cache_app.command("ls")
def cache_ls(
    cache_dir: CacheDirOption = None,
    dataset: DatasetFilterOption = None,
) -> None:
    """List feature sets: slots locked to them, dim, utterances, failures, shards, size."""
    from mer_pipe.cache import maintenance

    from mer_pipe.cache import checkpoints

    from mer_pipe.common.errors import CacheError

    store = _store(cache_dir, dataset)
    typer.echo(format_table([i.row() for i in maintenance.ls(store, dataset)], f"no feature sets in {store.root}"))
    for ds in [dataset] if dataset is not None else store.datasets():
        try:
            store.read_lock(ds)
        except CacheError as exc:  # one broken dataset must not hide the others
            typer.echo(f"mer-pipe: warning: dataset {ds}: {exc} (its slots show as ?)", err=True)
    ckpts = checkpoints.ls(store, dataset)
    if ckpts:
        typer.echo("\nfine-tuned checkpoints:")
        typer.echo(format_table([c.row() for c in ckpts]))


@cache_app.command("verify")
def cache_verify(
    cache_dir: CacheDirOption = None,
    dataset: DatasetFilterOption = None,
) -> None:
    """Re-read every shard (checksums, keys, completeness, locks). Exit code 1 when a problem is found."""
    from mer_pipe.cache import maintenance

    from mer_pipe.cache import checkpoints

    store = _store(cache_dir, dataset)
    problems = [*maintenance.verify(store, dataset), *checkpoints.verify(store, dataset)]
    if not problems:
        n = len(maintenance.ls(store, dataset))
        k = len(checkpoints.ls(store, dataset))
        typer.echo(f"ok: {n} feature set{'s' if n != 1 else ''} verified in {store.root}"
                   + (f" (and {k} fine-tuned checkpoint{'s' if k != 1 else ''})" if k else ""))
        return
    typer.echo(format_table([p.row() for p in problems]))
    typer.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", err=True)
    for ds in sorted({p.dataset for p in problems if p.kind == "media-changed"}):
        typer.echo(f"media changed since utterances of {ds} failed: rerun `mer-pipe features --dataset {ds} "
                   f"--retry-failed{'' if cache_dir is None else f' --cache-dir {cache_dir}'}` (with your --only/--set)",
                   err=True)
    # SystemExit, not typer.Exit: the CLI runs click with standalone_mode=False, where Exit(1) would
    # only be returned and the process would still exit 0.
    raise SystemExit(1)


@cache_app.command("gc")
def cache_gc(
    cache_dir: CacheDirOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete (default: only list what would go).")] = False,
    grace: Annotated[Optional[float], typer.Option(help="Keep unlocked sets written in the last GRACE seconds"
        " (default 600); sets a live feature run holds are always kept.")] = None,
) -> None:
    """Remove feature sets no lock refers to, fine-tuned checkpoints no locked feature set depends on, and
    stale temp files. Dry run unless --yes. Only in a marked cache, never through a symlink; prints
    exactly what it removed."""
    import math

    from mer_pipe.cache import checkpoints
    from mer_pipe.cache.collect import UnmarkedCache, gc
    from mer_pipe.common.errors import ConfigError

    if grace is not None and not (math.isfinite(grace) and grace >= 0):
        raise ConfigError(f"--grace {grace}: give a number of seconds >= 0 (default 600)")
    store = _store(cache_dir)
    kwargs = {} if grace is None else {"grace_s": grace}
    try:
        victims = gc(store, dry_run=not yes, **kwargs)
    except UnmarkedCache as exc:
        raise ConfigError(f"{exc}; if it really is a mer-pipe cache made by an earlier version, mark it with "
                          f"`mer-pipe cache mark --cache-dir {exc.root}` (any feature run writing to it marks it too)") from None
    # fine-tuned checkpoints no locked feature set depends on (after the feature sets: their specs decide)
    ckpt_victims = checkpoints.gc_victims(store, **kwargs)
    if yes:
        ckpt_victims = checkpoints.remove(ckpt_victims, store.root)
    victims = [*victims, *ckpt_victims]
    if not victims:
        typer.echo("nothing to collect")
        return
    for p in victims:
        typer.echo(("removed " if yes else "would remove ") + str(p))
    if not yes:
        typer.echo(f"{len(victims)} item(s); rerun with --yes to delete them")


@cache_app.command("du")
def cache_du(
    cache_dir: CacheDirOption = None,
    dataset: DatasetFilterOption = None,
) -> None:
    """Disk use per feature set and per dataset."""
    from mer_pipe.cache import maintenance

    store = _store(cache_dir, dataset)
    rows = [u.row() for u in maintenance.du(store) if dataset is None or u.dataset == dataset]
    typer.echo(format_table(rows, f"nothing stored in {store.root}"))


@cache_app.command("mark")
def cache_mark(cache_dir: CacheDirOption = None) -> None:
    """Mark a cache made by an earlier mer-pipe version as one (so `cache gc` may clean it). Refuses a
    folder that holds no prepared dataset."""
    from mer_pipe.common.errors import ConfigError

    store = _store(cache_dir)
    if store.marked():
        typer.echo(f"{store.root} is already marked as a mer-pipe cache")
        return
    looks = any((store.dataset_dir(ds) / f).is_file() for ds in store.datasets() for f in ("dataset.json", "lock.json"))
    if not looks:
        raise ConfigError(f"{store.root} holds no prepared dataset (<name>/dataset.json or lock.json): it is not a "
                          "mer-pipe cache; pass the folder `mer-pipe prepare`/`features` wrote (--cache-dir)")
    typer.echo(f"marked {store.mark()}")
