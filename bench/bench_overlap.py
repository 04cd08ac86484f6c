"""Decode overlapped with the forward pass, against today's serial worker, on CPU (issue 21).

One worker as the dask executor runs it (one torch thread), the tiny Swin (15 frames per clip) and tiny
wav2vec2 checkpoints of the `offline` preset, over a synthetic MELD corpus of real H.264 clips (`synth`).
Each slot is one shard task (`run_shard`), run with the overlap off (the serial worker: decode a batch,
then the encoder, in turn) and on (a producer thread decodes the next batches while the encoder runs;
with 1 or 2 decode threads), and, for comparison, the serial worker given the second core as a second
torch thread; the arms alternate (order reversed every repeat), after one untimed warm-up each; medians
of `--repeats`. Every arm writes the shard; the overlap arms' are checked to be bit-identical to the
serial worker's (two torch threads may differ in the last bits). Per arm: wall seconds, the process's CPU
seconds (how much of the cores it used), decode and forward seconds, and the seconds the encoder waited
for a batch. `ideal` = (decode + forward) / max(decode, forward) of the serial arm: what perfect overlap
on a free second core would give. Writes bench/results/overlap.json and prints a table.

Run: `python bench/bench_overlap.py [--dialogues 12] [--repeats 3]` (about a minute on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MELD_CSVS = HERE.parent.parent / "shared" / "data" / "meld"
DATASET = "bench-overlap"
SLOTS = ("v", "a_w2v")


def one_task(cache: Path, slot: str, batch_size: int, device: str, sets: tuple[str, ...] = ()):
    """The slot's whole corpus as one shard task, with a worker's run settings (one torch thread)."""
    from mer_pipe.pipeline.extract.plan import make_plan, with_run_settings
    from mer_pipe.pipeline.extract.presets import resolve_slots

    specs = resolve_slots("offline", only=slot, overrides=list(sets), cache_root=cache)
    plan = make_plan(DATASET, specs, cache_dir=cache, shard_size=100_000)
    (task,) = plan.tasks
    return with_run_settings(task, device=device, torch_threads=1, batch_size=batch_size)


def timed(task, overlap, torch_threads: int) -> dict:
    import torch

    from mer_pipe.pipeline.extract.shardrun import run_shard

    torch.set_num_threads(torch_threads)  # run_shard sets the task's (1) once per process, not again
    c0, t0 = time.process_time(), time.perf_counter()
    r = run_shard(task, overlap=overlap)
    wall = time.perf_counter() - t0
    torch.set_num_threads(1)
    return {"wall_s": wall, "cpu_s": time.process_time() - c0, "decode_s": r.decode_s, "forward_s": r.forward_s,
            "wait_s": r.wait_s, "n": r.n, "n_ok": r.n_ok}


def same_shard(a: str, b: str) -> bool:
    import numpy as np

    from mer_pipe.cache.shard import read_shard

    x, y = read_shard(a), read_shard(b)
    vx = x.values if hasattr(x.values, "shape") else np.concatenate(x.values)
    vy = y.values if hasattr(y.values, "shape") else np.concatenate(y.values)
    return x.ids == y.ids and x.reasons == y.reasons and vx.tobytes() == vy.tobytes()


def bench_slot(cache: Path, slot: str, repeats: int, batch_size: int, arms: dict) -> dict:
    import dataclasses

    task = one_task(cache, slot, batch_size, "cpu")
    paths = {name: f"{task.path}.{name}.h5" for name in arms}
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for rep in range(repeats + 1):  # repeat 0 is the warm-up (model load, first decodes)
        for name, (cfg, threads) in (arms.items() if rep % 2 == 0 else reversed(arms.items())):  # alternate order
            r = timed(dataclasses.replace(task, path=paths[name]), cfg, threads)
            if rep:
                runs[name].append(r)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "decode_s", "forward_s", "wait_s")}
           for name, rs in runs.items()}
    serial = med["serial"]
    out = {"slot": slot, "extractor": task.extractor, "clips": runs["serial"][0]["n"],
           "decoded_ok": runs["serial"][0]["n_ok"], "batch_size": batch_size, "median": med, "runs": runs,
           "ideal": (serial["decode_s"] + serial["forward_s"]) / max(serial["decode_s"], serial["forward_s"]),
           # the overlap arms against the serial worker (same torch threads); 2 torch threads may differ in the
           # last bits (intra-op reductions split differently), which is why workers pin one thread
           "bit_identical": all(same_shard(paths["serial"], paths[a]) for a, (_, t) in arms.items() if t == 1),
           "serial_2torch_bit_identical": same_shard(paths["serial"], paths["serial_2torch"])}
    for name in arms:
        if name != "serial":
            out[f"ratio_{name}"] = serial["wall_s"] / med[name]["wall_s"]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=12, help="synthetic MELD dialogues (about 8 clips each)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "overlap.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from mer_pipe.pipeline.corpus.prepare import prepare
    from mer_pipe.pipeline.corpus.synth import synthesize
    from mer_pipe.pipeline.extract.overlap import SERIAL, OverlapConfig

    torch.set_num_threads(1)  # one dask worker: one torch thread (run_shard would set it too)
    # arm -> (overlap, torch threads); serial_2torch: the other use of the second core (intra-op threads)
    arms = {"serial": (SERIAL, 1), "overlap": (OverlapConfig(enabled=True), 1),
            "overlap_2threads": (OverlapConfig(enabled=True, decode_threads=2), 1), "serial_2torch": (SERIAL, 2)}
    t_all = time.perf_counter()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        work = Path(tmp)
        syn = synthesize("meld", work / "corpus", dialogues=args.dialogues,
                         text_from=MELD_CSVS if MELD_CSVS.is_dir() else None)
        prepare("meld", syn.root, name=DATASET, cache_dir=work / "cache")
        results = []
        for slot in SLOTS:
            results.append(bench_slot(work / "cache", slot, args.repeats, args.batch_size, arms))
            print(f"  done {slot}", file=sys.stderr, flush=True)
    report = {"device": "cpu", "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": 1,
              "dialogues": args.dialogues, "repeats": args.repeats, "arms": {k: {**vars(v), "torch_threads": t} for k, (v, t) in arms.items()},
              "load_avg_before": load0, "load_avg_after": os.getloadavg(), "slots": results,
              "total_s": time.perf_counter() - t_all,
              "note": "one worker (1 torch thread) on a machine shared with other jobs; ratio = serial wall / overlap "
                      "wall, medians; cpu_s/wall_s = cores the worker kept busy; ideal = perfect overlap of the "
                      "serial arm's decode and forward seconds"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return report


def format_report(r: dict) -> str:
    head = ("slot", "clips", "arm", "wall s", "cpu s", "decode s", "fwd s", "wait s", "ratio", "ideal", "identical")
    rows = [head]
    for s in r["slots"]:
        for arm, m in s["median"].items():
            ratio = "1.00x" if arm == "serial" else f"{s[f'ratio_{arm}']:.2f}x"
            rows.append((s["slot"], str(s["clips"]), arm, f"{m['wall_s']:.2f}", f"{m['cpu_s']:.2f}", f"{m['decode_s']:.2f}",
                         f"{m['forward_s']:.2f}", f"{m['wait_s']:.2f}", ratio, f"{s['ideal']:.2f}x",
                         str(s["bit_identical"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append(f"load average {r['load_avg_before'][0]:.1f} -> {r['load_avg_after'][0]:.1f} on {r['cpus']} cores; "
                 f"total {r['total_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
