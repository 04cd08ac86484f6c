"""A miniature MELD.Raw: the three `*_sent_emo.csv` files plus `diaX_uttY.mp4` clips (H.264 + AAC).

Layout as the MELD.Raw tarballs unpack: CSVs at the root, clips in `train/train_splits/`,
`dev/dev_splits_complete/`, `test/output_repeated_splits_test/`.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..recipes.meld import CLIP_DIRS, CSV_NAMES, LABELS, MeldRow, read_meld_csv
from .cues import CueConfig, cue_audio, cue_frames, cue_text, pick_cue
from .media import truncate_file, write_clip

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
          "Episode", "StartTime", "EndTime"]
SPEAKERS = ("Ross", "Rachel", "Monica", "Chandler", "Joey", "Phoebe", "Gunther", "Janice", "Mike")
# Real MELD train class counts, flattened with a square root so tiny corpora still hold every class.
_REAL_COUNTS = np.array([4710, 1205, 268, 683, 1743, 271, 1109], dtype=float)
CLASS_P = np.sqrt(_REAL_COUNTS) / np.sqrt(_REAL_COUNTS).sum()
SPLIT_FRACTIONS = {"dev": 114 / 1432, "test": 280 / 1432}  # MELD-like split proportions


def split_sizes(n: int) -> dict[str, int]:
    """Dialogues per split in MELD-like proportions, at least one each (n >= 3)."""
    dev = max(1, round(n * SPLIT_FRACTIONS["dev"]))
    test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    return {"train": n - dev - test, "dev": dev, "test": test}


def sentiment_of(rng: np.random.Generator, emotion: str) -> str:
    if emotion == "neutral":
        return "neutral"
    if emotion == "joy":
        return "positive"
    if emotion == "surprise":  # the only emotion whose polarity varies in MELD
        return "positive" if rng.random() < 0.5 else "negative"
    return "negative"


def _planted_rows(rng: np.random.Generator, sizes: dict[str, int]) -> dict[str, list[MeldRow]]:
    """Split -> rows with empty text (the writer plants cue words); times and CSV line are unset (None, 0)."""
    rows: dict[str, list[MeldRow]] = {s: [] for s in CSV_NAMES}
    for split, k in sizes.items():
        for dia in range(k):
            crowd = split == "train" and dia == 0  # one dialogue with MELD's maximum of 9 speakers
            n = 10 if crowd else int(rng.integers(4, 11))
            n_spk = 9 if crowd else int(rng.integers(2, min(4, n) + 1))
            names = [SPEAKERS[i] for i in rng.choice(len(SPEAKERS), size=n_spk, replace=False)]
            utt_ids = list(range(n + 1))
            # MELD quirk: Utterance_ID gaps; one gap in the second train dialogue
            utt_ids.remove(2 if (split == "train" and dia == 1) else n)
            for j, u in enumerate(utt_ids):
                spk = names[j] if j < n_spk else names[int(rng.integers(n_spk))]
                emo = LABELS[int(rng.choice(len(LABELS), p=CLASS_P))]
                rows[split].append(MeldRow(dia, u, "", spk, emo, sentiment_of(rng, emo), None, None, 0))
    return rows


def _real_rows(rng: np.random.Generator, sizes: dict[str, int], text_from: Path) -> dict[str, list[MeldRow]]:
    """Split -> the rows of randomly picked real dialogues of the MELD CSVs under `text_from`."""
    from ..recipes.meld import find_csvs

    csvs = find_csvs(text_from)
    rows: dict[str, list[MeldRow]] = {s: [] for s in CSV_NAMES}
    for split, k in sizes.items():
        if split not in csvs:
            continue
        real = read_meld_csv(csvs[split])
        dias = sorted({r.dialogue_id for r in real})
        pick = set(int(d) for d in rng.choice(dias, size=min(k, len(dias)), replace=False))
        rows[split] = sorted((r for r in real if r.dialogue_id in pick), key=lambda r: (r.dialogue_id, r.utterance_id))
    return rows


def _stamp(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def synth_meld(out: Path, dialogues: int, seed: int, text_from: Path | None, faults: bool, cfg: CueConfig) -> tuple[int, list[dict]]:
    """Write the corpus under `out`; returns (number of CSV utterances, planted faults)."""
    rng = np.random.default_rng(seed)
    sizes = split_sizes(dialogues)
    by_split = _real_rows(rng, sizes, text_from) if text_from is not None else _planted_rows(rng, sizes)
    n_cls = len(LABELS)
    planted: list[dict] = []

    fault_at: dict[str, tuple[str, MeldRow]] = {}
    if faults:
        fault_at["no_audio_clip"] = ("train", by_split["train"][0])
        fault_at["missing_clip"] = ("dev", by_split["dev"][-1])  # as dev dia110_utt7 in the real archive
        fault_at["truncated_clip"] = ("test", by_split["test"][0])
    role = {(s, r.dialogue_id, r.utterance_id): kind for kind, (s, r) in fault_at.items()}

    for split, srows in by_split.items():
        clip_dir = out / split / CLIP_DIRS[split]
        clip_dir.mkdir(parents=True, exist_ok=True)
        table, t = [], float(rng.uniform(60, 600))
        for r in srows:
            y = LABELS.index(r.emotion)
            text = r.text if text_from is not None else cue_text(rng, LABELS[pick_cue(rng, y, n_cls, cfg.p_true)])
            dur = float(rng.uniform(cfg.min_dur, cfg.max_dur))
            table.append([len(table) + 1, text, r.speaker, r.emotion, r.sentiment, r.dialogue_id, r.utterance_id,
                          int(rng.integers(1, 11)), int(rng.integers(1, 25)), _stamp(t), _stamp(t + dur)])
            t += dur + float(rng.uniform(0.1, 1.0))
            frames = cue_frames(rng, pick_cue(rng, y, n_cls, cfg.p_true), n_cls, max(2, round(dur * cfg.fps)), cfg)
            audio = cue_audio(rng, pick_cue(rng, y, n_cls, cfg.p_true), n_cls, dur, cfg)
            kind = role.get((split, r.dialogue_id, r.utterance_id))
            name = f"dia{r.dialogue_id}_utt{r.utterance_id}.mp4"
            uid, rel = f"meld/{split}/dia{r.dialogue_id}_utt{r.utterance_id}", f"{split}/{CLIP_DIRS[split]}/{name}"
            if kind == "missing_clip":
                planted.append({"kind": kind, "id": uid, "path": rel, "detect": "prepare"})
                continue
            write_clip(clip_dir / name, frames, None if kind == "no_audio_clip" else audio, cfg.fps, cfg.sample_rate)
            if kind == "truncated_clip":
                truncate_file(clip_dir / name, keep=0.5)
            if kind:
                planted.append({"kind": kind, "id": uid, "path": rel, "detect": "probe"})

        bad_line = None
        if faults and split == "train":
            # a row cut short after Utterance_ID, inserted as the third data row (CSV line 4)
            r = srows[0]
            bad = [len(table) + 1, "This row lost its last columns", r.speaker, "joy", "positive", r.dialogue_id, 999]
            table.insert(2, bad)
            bad_line = 4
            planted.append({"kind": "malformed_row", "id": f"meld/train/dia{r.dialogue_id}_utt999",
                            "path": CSV_NAMES[split], "line": bad_line, "detect": "prepare"})
        with (out / CSV_NAMES[split]).open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(HEADER)
            w.writerows(table)

        if faults and split == "test":
            orphan = max(r.dialogue_id for r in srows) + 1
            name = f"dia{orphan}_utt0.mp4"
            write_clip(clip_dir / name, cue_frames(rng, 0, n_cls, 10, cfg), cue_audio(rng, 0, n_cls, 1.0, cfg),
                       cfg.fps, cfg.sample_rate)
            planted.append({"kind": "orphan_clip", "id": f"meld/test/dia{orphan}_utt0",
                            "path": f"test/{CLIP_DIRS['test']}/{name}", "detect": "prepare"})
    return sum(len(rows) for rows in by_split.values()), planted
