"""Synthetic corpora in the exact on-disk layout of MELD.Raw and IEMOCAP_full_release, with planted signal.

`synthesize("meld", out)` then `prepare("meld", out)` gives a small dataset on which every modality is
informative but none is perfect (see cues.py). `faults=True` plants the real-corpus problems the recipes
must survive and lists them in `<out>/faults.json`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mer_pipe.common.errors import ConfigError

SYNTH_RECIPES = ("meld", "iemocap")
DEFAULT_DIALOGUES = 20
DEFAULT_SEED = 0


# Bigger than MELD (1,433 dialogues) and still a few GB of clips: anything above is a typo, not a corpus.
MAX_DIALOGUES = 2000


@dataclass(frozen=True)
class SynthResult:
    """Where the corpus is and what it holds; `faults` = the rows of faults.json."""

    root: Path
    recipe: str
    dialogues: int
    utterances: int  # annotated utterances written (MELD CSV rows, IEMOCAP EmoEvaluation turns)
    faults: list[dict] = field(default_factory=list)


def synthesize(
    recipe: str,
    out: str | Path,
    dialogues: int | None = None,
    seed: int | None = None,
    text_from: str | Path | None = None,
    faults: bool = False,
) -> SynthResult:
    """Write a miniature `recipe` corpus ("meld" | "iemocap") of `dialogues` dialogues under `out`.

    `text_from` (MELD only): a folder with the real MELD CSVs; dialogues, speakers, texts, labels and
    sentiments are then taken from it and only audio/video carry planted cues. Re-running with the same
    arguments on an existing synthetic corpus returns it unchanged; any other non-empty `out` is refused.
    """
    from .cues import CueConfig

    if recipe not in SYNTH_RECIPES:
        raise ConfigError(f"cannot synthesise recipe {recipe!r}; choose one of: {', '.join(SYNTH_RECIPES)}")
    dialogues = DEFAULT_DIALOGUES if dialogues is None else int(dialogues)
    seed = DEFAULT_SEED if seed is None else int(seed)
    if dialogues < 3:
        raise ConfigError(f"--dialogues {dialogues} is too few; need at least 3 (one per split: train, dev, test)")
    if dialogues > MAX_DIALOGUES:
        raise ConfigError(f"--dialogues {dialogues} is more than {MAX_DIALOGUES} (the real MELD has 1,433 dialogues; a synthetic "
                          "dialogue writes about 10 clips); use at most that many")
    if text_from is not None:
        if recipe != "meld":
            raise ConfigError("--text-from only works with recipe 'meld' (it reads the real MELD CSVs)")
        text_from = Path(text_from).expanduser().resolve()
        if not text_from.is_dir():
            raise ConfigError(f"--text-from {text_from} is not a folder; give the folder holding train_sent_emo.csv")
    out = Path(out).expanduser().resolve()
    params = {"recipe": recipe, "dialogues": dialogues, "seed": seed,
              "text_from": str(text_from) if text_from else None, "faults": bool(faults)}
    marker = out / "synth.json"
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a new or empty folder")
        if marker.is_file():
            old = json.loads(marker.read_text(encoding="utf-8"))
            if old.get("params") == params:
                fl = json.loads((out / "faults.json").read_text(encoding="utf-8"))["faults"]
                return SynthResult(out, recipe, dialogues, int(old["utterances"]), fl)
            raise ConfigError(f"--out {out} holds a synthetic corpus made with {old.get('params')}; "
                              "give a new folder or delete that one")
        if any(out.iterdir()):
            raise ConfigError(f"--out {out} is not empty; give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)

    cfg = CueConfig()
    if recipe == "meld":
        from .meld import synth_meld

        n_utts, planted = synth_meld(out, dialogues, seed, text_from, faults, cfg)
    else:
        from .iemocap import synth_iemocap

        n_utts, planted = synth_iemocap(out, dialogues, seed, faults, cfg)
    (out / "faults.json").write_text(json.dumps({"recipe": recipe, "faults": planted}, indent=1) + "\n", encoding="utf-8")
    # written last: its presence means the corpus is complete
    marker.write_text(json.dumps({"params": params, "utterances": n_utts, "cues": vars(cfg)}, indent=1) + "\n",
                      encoding="utf-8")
    return SynthResult(out, recipe, dialogues, n_utts, planted)
