"""`mer-pipe synth` / `mer-pipe prepare` through the installed entry point: bad input is one line, exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MER_PIPE = Path(sys.executable).parent / "mer-pipe"


def run(*args, cache=None):
    env = dict(os.environ)
    if cache is not None:
        env["MER_PIPE_CACHE"] = str(cache)
    return subprocess.run([str(MER_PIPE), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def _one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mer-pipe: error: "), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_bad_input_is_one_line(tmp_path):
    # through the real entry point: the CLI turns each MerPipeError into one line and exit 2
    _one_line_error(run("prepare", "ravdess", "--root", tmp_path), "unknown recipe 'ravdess'", "iemocap, manifest, meld")
    _one_line_error(run("prepare", "meld", "--root", tmp_path), f"no MELD CSVs under {tmp_path}", "train_splits/")
    _one_line_error(run("synth", "meld"), "needs --out")
    (tmp_path / "bad.jsonl").write_text('{"id": "a"}\n')
    _one_line_error(run("prepare", "manifest", "--manifest", tmp_path / "bad.jsonl"), "bad.jsonl:1", "missing field(s)")


@pytest.mark.parametrize(
    "cmd, kwargs, needles",
    [
        ("prepare", dict(recipe="meld", root="{tmp}/nope"), ("does not exist", "train_sent_emo.csv")),
        ("prepare", dict(recipe="iemocap", root="{tmp}"), ("Session1..Session5", "EmoEvaluation")),
        ("prepare", dict(recipe="meld"), ("needs --root",)),
        ("prepare", dict(), ("needs a RECIPE", "iemocap, manifest, meld")),
        ("prepare", dict(recipe="manifest", root="{tmp}"), ("needs --manifest",)),
        ("prepare", dict(recipe="manifest", manifest="{tmp}/x.jsonl"), ("--manifest", "not a file")),
        ("synth", dict(recipe="ravdess", out="{tmp}/s"), ("meld, iemocap",)),
        ("synth", dict(), ("needs a RECIPE",)),
        ("synth", dict(recipe="meld", out="{tmp}/s", dialogues=1), ("at least 3",)),
    ],
)
def test_command_errors_name_the_fix(tmp_path, cmd, kwargs, needles):
    from mer_pipe.common.errors import MerPipeError
    from mer_pipe.pipeline.cli import data as commands_data

    kw = {k: Path(v.format(tmp=tmp_path)) if isinstance(v, str) and "{tmp}" in v else v for k, v in kwargs.items()}
    with pytest.raises(MerPipeError) as err:
        getattr(commands_data, cmd)(**kw)
    for n in needles:
        assert n in str(err.value)


def test_help_documents_every_option():
    import typer

    from mer_pipe.pipeline import cli

    cli._compose()
    group = typer.main.get_command(cli.app)
    for cmd in ("synth", "prepare"):
        params = group.commands[cmd].params
        assert {p.name for p in params} >= ({"recipe", "out", "dialogues", "seed", "text_from", "faults"} if cmd == "synth"
                                            else {"recipe", "root", "name", "cache_dir", "manifest", "probe"})
        for p in params:
            assert len(p.help or "") > 15, (cmd, p.name)
    assert run("prepare", "--help").returncode == 0


def test_synth_then_prepare(tmp_path):
    res = run("synth", "iemocap", "--out", tmp_path / "corpus", "--dialogues", "3", "--faults")
    assert res.returncode == 0, res.stderr
    assert "planted missing_wav" in res.stdout and "next: mer-pipe prepare iemocap" in res.stdout
    res = run("prepare", "iemocap", "--root", tmp_path / "corpus", "--name", "synth-iemocap",
              "--cache-dir", tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert "missing media: 1" in res.stdout and "bad media: 1" in res.stdout and "train" in res.stdout
    info = json.loads((tmp_path / "cache" / "synth-iemocap" / "dataset.json").read_text())
    assert info["name"] == "synth-iemocap" and info["recipe"] == "iemocap"
    assert info["root"] == str((tmp_path / "corpus").resolve())
    report = json.loads((tmp_path / "cache" / "synth-iemocap" / "prepare_report.json").read_text())
    assert report["missing_media"][0]["id"].startswith("iemocap/Ses")


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b"])
def test_bad_dataset_name(tmp_path, meld_csv, name):
    _one_line_error(run("prepare", "meld", "--root", meld_csv, "--name", name, cache=tmp_path), "--name")


def test_help_shows_switches_without_a_type():
    """`--probe` is a switch: help must not print `<bool>` after it (users then type `--probe true`)."""
    for cmd in (["prepare"], ["features"], ["train"], ["synth"], ["cache", "gc"], ["runs"]):
        res = run(*cmd, "--help")
        assert res.returncode == 0, res.stderr
        assert "<bool>" not in res.stdout, (cmd, res.stdout)
        assert "--help" in res.stdout


def test_command_strings_come_from_one_place():
    """common/commands.py builds every quoted command; corpus/hints.py adds the recipe, read from the registry."""
    from mer_pipe.common.commands import command, features_command
    from mer_pipe.pipeline.corpus.hints import corpus_recipes, prepare_command
    from mer_pipe.pipeline.corpus.recipes import RECIPES

    assert command("cache", "gc", yes=True, grace=None, dry=False) == "mer-pipe cache gc --yes"
    assert command("features", dataset="d", retry_failed=True, cache_dir="/c") == \
        "mer-pipe features --dataset d --retry-failed --cache-dir /c"
    assert features_command("d", "t", "/c") == "mer-pipe features --dataset d --only t --cache-dir /c"
    assert features_command("d") == "mer-pipe features --dataset d"
    assert corpus_recipes() == [n for n in RECIPES.names() if RECIPES.get(n).labels] and "meld" in corpus_recipes()
    assert prepare_command("meld") == "mer-pipe prepare meld --root CORPUS_DIR --name meld"
    assert prepare_command("manifest", cache_dir="/c") == "mer-pipe prepare RECIPE --root CORPUS_DIR --name manifest --cache-dir /c"
    assert prepare_command("x", recipe="iemocap", root="/r") == "mer-pipe prepare iemocap --root /r --name x"
