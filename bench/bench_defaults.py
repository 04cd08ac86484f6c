"""Evidence for each model's default training settings on an IEMOCAP-shaped corpus (the MELD-text evidence is
bench/bench_meld_text.py).

The defaults (`train_defaults` on each model class, `--profile dev`) were chosen on MELD dev. Here the same
question is asked of a synthetic IEMOCAP-shaped corpus (`mer-pipe synth iemocap`: five sessions of long
two-speaker dialogs, six classes, the standard split shape, planted text and audio cues): for each of the four
models, a `mer-pipe sweep` over the learning rate (the paper's, the default, and one above) x 2 seeds, chosen on
the dev mean, with the default's other settings fixed. Test is shown only for the chosen lr. Writes
bench/results/defaults_iemocap.json.

    python bench/bench_defaults.py [--dialogues 30] [--seeds 0,1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench_meld_text import is_default  # one definition of "the model's own defaults" for both benchmarks
from mer_pipe.pipeline import api

OUT = Path(__file__).resolve().parent / "results" / "defaults_iemocap.json"
MODELS = ("ts-gcl", "ar-iigcn", "jv-icl", "deepmsi-mer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=30)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    from mer_pipe.models import _all  # noqa: F401  (registers the models)
    from mer_pipe.models.registry import MODELS as REGISTRY
    from mer_pipe.pipeline.corpus.synth import synthesize

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        res = synthesize("iemocap", Path(tmp) / "corpus", dialogues=args.dialogues, seed=0)
        api.prepare("iemocap", res.root, name="synth-iemocap", cache_dir=cache)
        api.extract("synth-iemocap", only="t,a", cache_dir=cache, executor="serial", device="cpu", progress=False)
        rows = {}
        for name in MODELS:
            cls = REGISTRY.get(name)
            dev_lr, paper_lr = cls.train_defaults["lr"], cls.paper_train_defaults["lr"]
            lrs = sorted({paper_lr, dev_lr, dev_lr * 2})
            sweep = api.sweep(name, "synth-iemocap", grid=[f"trainer.lr={','.join(f'{x:g}' for x in lrs)}"],
                              seeds=args.seeds, modalities="t,a", cache_dir=cache, executor="serial", device="cpu",
                              out=Path(tmp) / "sweeps" / name, log=lambda s: None)
            chosen = sweep.state["selection"]["by_model"][name]
            table = [{k: r[k] for k in ("label", "sel_weighted_f1", "test_weighted_f1")} for r in sweep.state["configs_table"]]
            rows[name] = {"default_lr": dev_lr, "paper_lr": paper_lr, "grid_lr": lrs, "chosen": chosen["label"],
                          "chosen_dev_weighted_f1": chosen["selection_weighted_f1"],
                          "chosen_test_weighted_f1": chosen["test"]["weighted_f1"],
                          "default_is_chosen": is_default(name, next(c["values"] for c in sweep.state["configs"]
                                                                       if c["id"] == chosen["config"])),
                          "configs_dev_then_test_not_for_selection": table}
            print(f"{name}: default lr {dev_lr:g}, paper lr {paper_lr:g}; chosen on dev: {chosen['label']} "
                  f"(dev W-F1 {chosen['selection_weighted_f1']['mean']:.4f})")
    result = {
        "benchmark": "default training settings on a synthetic IEMOCAP-shaped corpus: lr sweep per model, dev selection",
        "corpus": f"mer-pipe synth iemocap --dialogues {args.dialogues} --seed 0; features t (MiniLM) + a (openSMILE)",
        "seeds": args.seeds, "machine": platform.platform(), "cpu_count": os.cpu_count(),
        "wall_seconds": round(time.perf_counter() - t0, 1), "models": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
