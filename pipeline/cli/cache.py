"""`mer-pipe cache ls|verify|gc|du|mark|export` (a typer sub-app; pipeline/cli/__init__.py registers it, and
`export` from pipeline/cli/interop.py). Each command parses, calls pipeline/api.py and prints."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from mer_pipe.common.commands import command
from mer_pipe.pipeline import api

CACHE_HELP = "Cache root (default: $MER_PIPE_CACHE, else ~/.cache/mer-pipe)."
# options shared by `features` and every `cache` command (typer reads the Annotated metadata)
CacheDirOption = Annotated[Optional[Path], typer.Option("--cache-dir", help=CACHE_HELP)]
DatasetFilterOption = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Only this dataset.")]

cache_app = typer.Typer(help="Inspect and maintain the feature cache.", no_args_is_help=True,
                        add_completion=False, pretty_exceptions_enable=False)


def format_table(rows: Sequence[dict[str, Any]], empty: str = "(nothing)") -> str:
    """Left-aligned columns from a list of ordered dicts with the same keys."""
    if not rows:
        return empty
    cols = list(rows[0])
    cells = [cols] + [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


@cache_app.command("ls")
def cache_ls(
    cache_dir: CacheDirOption = None,
    dataset: DatasetFilterOption = None,
) -> None:
    """List feature sets: slots locked to them, dim, utterances, failures, shards, size."""
    store, sets, ckpts, broken = api.cache_ls(cache_dir, dataset)
    typer.echo(format_table([i.row() for i in sets], f"no feature sets in {store.root}"))
    for why in broken:
        typer.echo(f"mer-pipe: warning: {why}", err=True)
    if ckpts:
        typer.echo("\nfine-tuned checkpoints:")
        typer.echo(format_table([c.row() for c in ckpts]))


@cache_app.command("verify")
def cache_verify(
    cache_dir: CacheDirOption = None,
    dataset: DatasetFilterOption = None,
) -> None:
    """Re-read every shard (checksums, keys, completeness, locks). Exit code 1 when a problem is found."""
    store, problems, n, k = api.cache_verify(cache_dir, dataset)
    if not problems:
        typer.echo(f"ok: {_plural(n, 'feature set')} verified in {store.root}"
                   + (f" (and {_plural(k, 'fine-tuned checkpoint')})" if k else ""))
        return
    typer.echo(format_table([p.row() for p in problems]))
    typer.echo(f"{_plural(len(problems), 'problem')} found", err=True)
    for ds in sorted({p.dataset for p in problems if p.kind == "media-changed"}):
        retry = command("features", dataset=ds, retry_failed=True, cache_dir=cache_dir)
        typer.echo(f"media changed since utterances of {ds} failed: rerun `{retry}` (with your --only/--set)", err=True)
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
    victims = api.cache_gc(cache_dir, yes=yes, grace=grace)
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
    store, usage = api.cache_du(cache_dir, dataset)
    typer.echo(format_table([u.row() for u in usage], f"nothing stored in {store.root}"))


@cache_app.command("mark")
def cache_mark(cache_dir: CacheDirOption = None) -> None:
    """Mark a cache made by an earlier mer-pipe version as one (so `cache gc` may clean it). Refuses a
    folder that holds no prepared dataset."""
    store, marker = api.cache_mark(cache_dir)
    if marker is None:
        typer.echo(f"{store.root} is already marked as a mer-pipe cache")
        return
    typer.echo(f"marked {marker}")
