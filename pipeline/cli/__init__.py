"""The front door: `mer-pipe COMMAND`. Each module here parses one group of commands, calls pipeline/api.py and
prints; this file only composes them and turns every `MerPipeError` into one line on stderr and exit code 2."""
from __future__ import annotations

import functools
import sys

import typer

from mer_pipe.common.errors import MerPipeError

def _switches_as_switches() -> None:
    """typer 0.29 prints a type after plain switches (`--probe <bool>`), which reads as if a value were
    expected (`--probe true` is then rejected). Show switches bare, as click does."""
    from typer.core import TyperOption

    typed = TyperOption.display_type_rich
    if getattr(typed, "_mer_pipe", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else typed(self, ctx)

    display_type_rich._mer_pipe = True
    TyperOption.display_type_rich = display_type_rich


_switches_as_switches()

app = typer.Typer(
    name="mer-pipe",
    help="Content-addressed multimodal features and cached-tensor trainers for emotion recognition in conversation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _compose() -> None:
    # Each module defines plain typer command functions over pipeline/api.py, which imports the heavy modules
    # inside its functions, so `mer-pipe --help` stays fast (tests/test_architecture.py checks it imports no torch).
    if app.registered_commands:
        return
    from . import data as commands_data, features as commands_features, train as commands_train

    app.command("synth")(commands_data.synth)
    app.command("prepare")(commands_data.prepare)
    app.command("features")(commands_features.features)
    from . import cache as commands_cache, interop as commands_interop

    commands_cache.cache_app.command("export")(commands_interop.cache_export)
    app.add_typer(commands_cache.cache_app, name="cache")
    app.command("train")(commands_train.train)
    app.command("evaluate")(commands_train.evaluate)
    app.command("demo")(commands_train.demo)
    from . import runs as commands_runs

    app.add_typer(commands_runs.runs_app, name="runs")
    from . import sweep as commands_sweep

    app.command("sweep")(commands_sweep.sweep)
    _wrap_commands(app)


def _interruptible(fn):
    """typer turns a KeyboardInterrupt inside a command into a bare exit code 130, losing what the command said
    was kept; catch it first and say it."""
    @functools.wraps(fn)
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _interrupted(exc)
    return command


def _wrap_commands(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        info.callback = _interruptible(info.callback)
    for group in typer_app.registered_groups:
        _wrap_commands(group.typer_instance)


def _interrupted(exc: BaseException) -> None:
    # click turns Ctrl-C into Abort; the KeyboardInterrupt underneath may say what was kept (train does).
    ki = exc if isinstance(exc, KeyboardInterrupt) else (exc.__cause__ or exc.__context__)
    said = str(ki) if isinstance(ki, KeyboardInterrupt) and str(ki) else ""
    said = said or "every completed shard and run file is kept; rerun the same command to resume (finished work is reused)"
    print(f"mer-pipe: interrupted; {said}", file=sys.stderr)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    import errno
    import warnings

    # torch_geometric scripts a helper at import; the deprecation is theirs, not actionable for users.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
    _compose()
    try:
        rc = app(args=argv, standalone_mode=False)
    except MerPipeError as exc:
        print(f"mer-pipe: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except SystemExit:
        raise
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"mer-pipe: error: no space left on the device ({exc.filename or 'while writing'}); free space or "
              "point --cache-dir/--out elsewhere and rerun: finished work is kept", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # Usage errors from typer's bundled click (or plain click): one line, like every other refusal, plus the
        # command whose --help lists the options (click's own form is a usage block over three lines).
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
            msg = " ".join(exc.format_message().split()).rstrip(".")
            print(f"mer-pipe: error: {msg}{where}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            _interrupted(exc)
        raise
    if isinstance(rc, int) and rc:  # typer.Exit(code) is returned, not raised, with standalone_mode=False
        sys.exit(rc)


if __name__ == "__main__":
    main()
