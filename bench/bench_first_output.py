"""Time to first output of the commands a new user types first (issue: "long silences").

For each command: the wall time from process start to its first byte on stdout or stderr, and to its exit;
median of --repeats runs, each a fresh `mer-pipe` process. `features` and `train` run on a small synthetic
MELD corpus prepared in a temporary cache (text slot only), so the numbers are about start-up and the first
line, not about the work. Writes bench/results/first_output.json.

    python bench/bench_first_output.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MER_PIPE = str(Path(sys.executable).parent / "mer-pipe")
OUT = Path(__file__).resolve().parent / "results" / "first_output.json"


def first_output(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds to the first byte on stdout/stderr, seconds to exit, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([MER_PIPE, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    first = None
    open_streams = 2
    while open_streams:
        for key, _ in sel.select():
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
            elif first is None:
                first = time.perf_counter() - t0
    rc = proc.wait()
    total = time.perf_counter() - t0
    return (total if first is None else first), total, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        env = {**os.environ, "MER_PIPE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        for step in (["synth", "meld", "--out", f"{tmp}/corpus", "--dialogues", "6"],
                     ["prepare", "meld", "--root", f"{tmp}/corpus", "--name", "s"],
                     ["features", "--dataset", "s", "--only", "t", "--executor", "serial", "--no-progress"]):
            subprocess.run([MER_PIPE, *step], env=env, check=True, capture_output=True)
        commands = {
            "mer-pipe --help": ["--help"],
            "mer-pipe train --help": ["train", "--help"],
            "mer-pipe train (missing --model)": ["train", "--dataset", "s"],
            "mer-pipe features (all cached, serial)": ["features", "--dataset", "s", "--only", "t", "--executor", "serial"],
            "mer-pipe features (all cached, dask)": ["features", "--dataset", "s", "--only", "t"],
            "mer-pipe train (mlp, 2 epochs)": ["train", "--model", "mlp", "--dataset", "s", "--modalities", "t", "--seeds", "0",
                                              "--epochs", "2", "--overwrite", "--out", f"{tmp}/run"],
        }
        rows = {}
        load_before = os.getloadavg()
        for name, argv in commands.items():
            runs = [first_output(argv, env) for _ in range(args.repeats)]
            rows[name] = {"first_output_s_median": round(statistics.median(r[0] for r in runs), 3),
                          "exit_s_median": round(statistics.median(r[1] for r in runs), 3),
                          "exit_codes": sorted({r[2] for r in runs}), "repeats": args.repeats}
            print(f"{name:45s} first output {rows[name]['first_output_s_median']:6.2f} s   "
                  f"exit {rows[name]['exit_s_median']:6.2f} s   rc {rows[name]['exit_codes']}")
    result = {
        "benchmark": "time to first output (fresh process each; median)",
        "machine": platform.platform(), "cpu_count": os.cpu_count(),
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "commands": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
