"""The front door: `mer-pipe COMMAND`. Commands live next to the code they drive; this file only
composes them and turns every `MerPipeError` into one line on stderr and exit code 2."""
from __future__ import annotations

import sys

import typer

from mer_pipe.common.errors import MerPipeError

app = typer.Typer(
    name="mer-pipe",
    help="Content-addressed multimodal features and cached-tensor trainers for emotion recognition in conversation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _compose() -> None:
    # Each module defines plain typer command functions and imports its heavy dependencies inside them,
    # so `mer-pipe --help` stays fast.
    from . import data as commands_data, features as commands_features, train as commands_train

    app.command("synth")(commands_data.synth)
    app.command("prepare")(commands_data.prepare)
    app.command("features")(commands_features.features)
    from . import interop as commands_interop

    commands_features.cache_app.command("export")(commands_interop.cache_export)
    app.add_typer(commands_features.cache_app, name="cache")
    app.command("train")(commands_train.train)
    app.command("evaluate")(commands_train.evaluate)
    app.command("demo")(commands_train.demo)
    from . import runs as commands_runs

    app.add_typer(commands_runs.runs_app, name="runs")


def main(argv: list[str] | None = None) -> None:
    import warnings

    # torch_geometric scripts a helper at import; the deprecation is theirs, not actionable for users.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
    _compose()
    try:
        app(args=argv, standalone_mode=False)
    except MerPipeError as exc:
        print(f"mer-pipe: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("mer-pipe: interrupted; every completed shard and run file is kept, rerun to resume", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # Usage errors from typer's bundled click (or plain click) carry their own one-line message.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        raise

if __name__ == "__main__":
    main()
