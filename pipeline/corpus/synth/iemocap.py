"""A miniature IEMOCAP_full_release: EmoEvaluation + transcriptions + per-utterance wavs + one avi per dialog.

Dialog names come from the packaged IEMOCAP-6 split lists, so the recipe's splits apply. Each dialog
also holds turns labelled outside the six classes (xxx, sur, fea, oth, dis) that the recipe must drop.
Synthetic dialogs are shorter than the real ones, so `prepare` reports a count mismatch per dialog.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..recipes.iemocap import LABELS, load_splits
from .cues import CueConfig, cue_audio, cue_frames, cue_text, grey_frames, pick_cue
from .media import truncate_file, write_avi, write_wav
from .meld import split_sizes

CODES = ("hap", "sad", "neu", "ang", "exc", "fru")  # same order as LABELS
DROPPED = ("xxx", "sur", "fea", "oth", "dis")
# Real IEMOCAP-6 train counts, square-root flattened.
_REAL_COUNTS = np.array([451, 771, 1221, 831, 593, 1296], dtype=float)
CLASS_P = np.sqrt(_REAL_COUNTS) / np.sqrt(_REAL_COUNTS).sum()
_CATEGORY = {"hap": "Happiness", "sad": "Sadness", "neu": "Neutral state", "ang": "Anger", "exc": "Excited",
             "fru": "Frustration", "xxx": "Other", "sur": "Surprise", "fea": "Fear", "oth": "Other", "dis": "Disgust"}


def pick_dialogues(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
    splits = load_splits()
    out = {}
    for split, k in split_sizes(n).items():
        pool = splits[split]
        out[split] = sorted(str(d) for d in rng.choice(pool, size=min(k, len(pool)), replace=False))
    return out


def _turns(rng: np.random.Generator, dialog: str) -> list[dict]:
    """Turns in time order: {uid, start, end, code}. Ids count per gender, as in the real corpus."""
    n_keep = int(rng.integers(5, 11))
    n_drop = int(rng.integers(1, 3))
    codes = [CODES[int(rng.choice(6, p=CLASS_P))] for _ in range(n_keep)] + [DROPPED[int(rng.integers(5))] for _ in range(n_drop)]
    rng.shuffle(codes)
    t, counters, turns = float(rng.uniform(0.5, 2.0)), {"F": 0, "M": 0}, []
    gender = "F" if rng.random() < 0.5 else "M"
    for code in codes:
        dur = float(rng.uniform(1.0, 2.0))
        uid = f"{dialog}_{gender}{counters[gender]:03d}"
        counters[gender] += 1
        turns.append({"uid": uid, "start": round(t, 4), "end": round(t + dur, 4), "code": code})
        t += dur + float(rng.uniform(0.2, 0.8))
        if rng.random() < 0.8:  # mostly alternating speakers
            gender = "M" if gender == "F" else "F"
    return turns


def _emo_block(tr: dict, rng: np.random.Generator) -> str:
    vad = ", ".join(f"{x:.4f}" for x in rng.uniform(1.5, 4.5, size=3))
    cat = _CATEGORY[tr["code"]]
    return (f"[{tr['start']:.4f} - {tr['end']:.4f}]\t{tr['uid']}\t{tr['code']}\t[{vad}]\n"
            f"C-E1:\t{cat};\t()\nC-E2:\t{cat};\t()\nA-E1:\tval 3; act 2; dom  3;\t()\n\n")


def synth_iemocap(out: Path, dialogues: int, seed: int, faults: bool, cfg: CueConfig) -> tuple[int, list[dict]]:
    """Write the corpus under `out/IEMOCAP_full_release`-style sessions; returns (turns written, faults)."""
    rng = np.random.default_rng(seed)
    picked = pick_dialogues(rng, dialogues)
    n_cls, n_turns, planted = len(LABELS), 0, []
    fault_dialogs = {picked["train"][0]: "missing_wav", picked["test"][0]: "truncated_wav"} if faults else {}
    for split in ("train", "dev", "test"):
        for dialog in picked[split]:
            sess = out / f"Session{int(dialog[3:5])}"
            turns = _turns(rng, dialog)
            n_turns += len(turns)
            # EmoEvaluation lists one speaker's turns, then the other's: the recipe must sort by time
            listed = sorted(turns, key=lambda tr: (tr["uid"].rsplit("_", 1)[1][0], tr["start"]))
            emo = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n" + "".join(_emo_block(tr, rng) for tr in listed)
            _write(sess / "dialog" / "EmoEvaluation" / f"{dialog}.txt", emo)

            lines, wav_dir = [], sess / "sentences" / "wav" / dialog
            total = turns[-1]["end"] + float(rng.uniform(0.5, 1.5))
            frames = grey_frames(rng, int(np.ceil(total * cfg.fps)), cfg)
            for tr in turns:
                y = CODES.index(tr["code"]) if tr["code"] in CODES else int(rng.integers(n_cls))
                text = cue_text(rng, LABELS[pick_cue(rng, y, n_cls, cfg.p_true)])
                lines.append(f"{tr['uid']} [{tr['start']:08.4f}-{tr['end']:08.4f}]: {text}\n")
                write_wav(wav_dir / f"{tr['uid']}.wav",
                          cue_audio(rng, pick_cue(rng, y, n_cls, cfg.p_true), n_cls, tr["end"] - tr["start"], cfg),
                          cfg.sample_rate)
                a, b = int(np.ceil(tr["start"] * cfg.fps)), int(np.floor(tr["end"] * cfg.fps))
                if b > a:
                    frames[a:b] = cue_frames(rng, pick_cue(rng, y, n_cls, cfg.p_true), n_cls, b - a, cfg)
            _write(sess / "dialog" / "transcriptions" / f"{dialog}.txt", "".join(lines))
            write_avi(sess / "dialog" / "avi" / "DivX" / f"{dialog}.avi", frames, cfg.fps)

            kind = fault_dialogs.get(dialog)
            if kind:
                tr = next(t for t in turns if t["code"] in CODES)
                wav = wav_dir / f"{tr['uid']}.wav"
                if kind == "missing_wav":
                    wav.unlink()
                else:
                    truncate_file(wav, keep=0.5)
                planted.append({"kind": kind, "id": f"iemocap/{tr['uid']}", "path": wav.relative_to(out).as_posix(),
                                "detect": "prepare"})
    return n_turns, planted


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
