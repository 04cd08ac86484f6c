"""`mer-pipe runs [DIR...]` (a table of run dirs) and `mer-pipe runs compare A B` (typer functions; registered in
pipeline/cli/__init__.py as the `runs` sub-app, whose default callback lists runs).

Options default to None; the defaults live in pipeline/experiments/runs.py and compare.py. Each command parses,
calls pipeline/api.py and prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from mer_pipe.pipeline import api


class _ListOrCompare(TyperGroup):
    """A group whose own DIR... arguments would otherwise swallow the subcommand name (click parses a group's
    arguments first): `runs compare A B` goes to `compare`; anything else lists runs. Options may follow DIRs."""

    allow_interspersed_args = True

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            super(TyperGroup, self).parse_args(ctx, [])  # the listing options take their defaults
            ctx._protected_args, ctx.args = args[:1], args[1:]
            return ctx.args
        return super().parse_args(ctx, args)


runs_app = typer.Typer(cls=_ListOrCompare, invoke_without_command=True, add_completion=False,
                       pretty_exceptions_enable=False,
                       help="Compare finished runs: a table of run dirs (default), or `compare A B`.")


@runs_app.callback()
def runs(
    ctx: typer.Context,
    dirs: Annotated[list[Path] | None, typer.Argument(metavar="DIR", help="Run dirs, or folders searched for them (default runs/).", show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only these models (comma list).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Only these datasets (comma list).")] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="Column to sort by (default dev_wf1, best first); scores sort best first, other columns"
        " ascending. Sorting by test_wf1 is allowed only when asked.")] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Flip the sort order.")] = False,
    format_: Annotated[str | None, typer.Option("--format", "-f", help="table (default), csv, md or json; csv/json hold fractions, table/md percent.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also write dev/test W-F1 per run with std error bars to FILE.png, and its data to FILE.csv.")] = None,
) -> None:
    """Table of run dirs (dev/test W-F1 and accuracy, mean ± std over seeds), best dev W-F1 first; TEST! flags test selection."""
    if ctx.invoked_subcommand is not None:
        return
    text, rows = api.runs_table(dirs or (), model=model, dataset=dataset, sort=sort, reverse=reverse, fmt=format_)
    typer.echo(text)
    if plot is not None:
        csv_path = api.plot_runs(rows, plot)
        typer.echo(f"wrote {plot} and {csv_path}", err=True)  # stderr: stdout stays parseable


@runs_app.command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="Run dir A.")],
    b: Annotated[Path, typer.Argument(help="Run dir B (same dataset and test set).")],
    resamples: Annotated[int | None, typer.Option(help="Bootstrap resamples of the test utterances (default 2000, at least 1000).")] = None,
    seed: Annotated[int | None, typer.Option(help="Bootstrap random seed (default 0).")] = None,
) -> None:
    """Per-class test F1 of A and B, paired per-seed W-F1 difference, and whether it exceeds seed and utterance noise."""
    typer.echo(api.format_comparison(api.compare_runs(a, b, resamples=resamples, seed=seed)))
