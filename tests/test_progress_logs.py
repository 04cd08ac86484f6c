"""Progress without a terminal: plain lines at a bounded rate, no carriage returns (CI, nohup, SLURM, | tee)."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train import DATASET, build_synth_features  # shared, built once per session

ENTRY = Path(sys.executable).with_name("mer-pipe")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    torch.set_num_threads(1)
    return build_synth_features(tmp_path_factory.getbasetemp() / "synth-features")


def test_piped_train_writes_plain_progress_lines(cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MER_PIPE_PROGRESS", None)
    seeds, epochs = 2, 10
    proc = subprocess.run([str(ENTRY), "train", "--model", "bigru", "--dataset", DATASET, "--cache-dir", str(cache),
                           "--seeds", "0,1", "--epochs", str(epochs), "--set", "trainer.patience=0", "--set", "model.hidden=16",
                           "--out", str(tmp_path / "run"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "\r" not in err and "\x1b[" not in err
    lines = [ln for ln in err.splitlines() if " ep (" in ln]
    # one line per 10 % of the 20 epochs (every 2 epochs), plus one per finished seed
    assert 5 <= len(lines) <= 11, err
    last = lines[-1]
    assert f"{seeds * epochs}/{seeds * epochs} ep (100%)" in last and "ep/s" in last and "best" in last and "W-F1" in last
    assert any("ETA" in ln for ln in lines)
    assert sum("ran all 10 epochs" in ln for ln in err.splitlines()) == seeds


def test_line_bar_rate_and_facts(monkeypatch):
    from mer_pipe.common import progress

    monkeypatch.delenv(progress.ENV, raising=False)
    buf = io.StringIO()  # not a terminal
    bar = progress.progress_bar(1000, desc="features", unit="utt", file=buf, dynamic_ncols=True)
    assert isinstance(bar, progress.LineBar)
    for i in range(1000):
        bar.set_postfix(failed=3)
        bar.update(1)
    bar.close()
    out = buf.getvalue().splitlines()
    assert len(out) == 10 and "\r" not in buf.getvalue()
    assert out[0].startswith("features: 100/1000 utt (10%)") and "utt/s" in out[0] and "ETA" in out[0] and "failed=3" in out[0]
    assert out[-1].startswith("features: 1000/1000 utt (100%)")


def test_line_bar_time_rule_and_override(monkeypatch):
    from mer_pipe.common import progress

    clock = iter(range(0, 10_000, 31))  # every update comes 31 s after the last
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.LineBar(10_000, desc="finetune t ep 1/2", unit="step", file=io.StringIO())
    for _ in range(3):
        bar.update(1)
    assert len(bar.file.getvalue().splitlines()) == 3  # 30 s passed each time, though far below 10 %
    monkeypatch.setenv(progress.ENV, "lines")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not progress.interactive(Tty())
    monkeypatch.setenv(progress.ENV, "bar")
    assert progress.interactive(io.StringIO())
    monkeypatch.delenv(progress.ENV)
    assert progress.interactive(Tty()) and not progress.interactive(io.StringIO())


def test_sweep_lines_carry_rate_eta_and_best(monkeypatch):
    from mer_pipe.pipeline.experiments.sweep import RunTally

    tally = RunTally(3, "dev")
    ticks = iter([10.0, 20.0, 30.0])
    tally._t0, tally._clock = 0.0, lambda: next(ticks)
    assert tally.add(0.61) == "; 10.0 s/run, ETA 00:20, best dev W-F1 0.6100"
    assert tally.add(None) == "; 10.0 s/run, ETA 00:10, best dev W-F1 0.6100"
    assert tally.add(0.65) == "; 10.0 s/run, best dev W-F1 0.6500"
