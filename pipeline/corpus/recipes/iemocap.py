"""IEMOCAP_full_release recipe (IEMOCAP-6 ERC protocol).

Per session: `dialog/EmoEvaluation/<dialog>.txt` (labels and times), `dialog/transcriptions/<dialog>.txt`
(text), `sentences/wav/<dialog>/<utt>.wav` (per-utterance audio), `dialog/avi/DivX/<dialog>.avi`
(dialog video, cut with `video_segment`). Splits come from the packaged `iemocap_splits.json`.
"""
from __future__ import annotations

import json
import os
import re
import struct
from functools import lru_cache
from importlib import resources
from pathlib import Path

from mer_pipe.common.errors import ManifestError

from ..manifest import Utterance
from .base import NEGATIVE, NEUTRAL, POSITIVE, Recipe

LABELS = ("happy", "sad", "neutral", "angry", "excited", "frustrated")
CODES = {"hap": "happy", "sad": "sad", "neu": "neutral", "ang": "angry", "exc": "excited", "fru": "frustrated"}
EMO_RE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[")
TRN_RE = re.compile(r"^(\S+)\s+\[[\d.]+\s*-\s*[\d.]+\]:\s?(.*)$")
LAYOUT = ("Session1..Session5/ (at the root or one folder below) each with dialog/EmoEvaluation/*.txt, "
          "dialog/transcriptions/*.txt, sentences/wav/<dialog>/<utt>.wav, dialog/avi/DivX/<dialog>.avi "
          "(IEMOCAP_full_release)")


@lru_cache(maxsize=1)
def load_splits() -> dict:
    """The packaged IEMOCAP-6 split lists: {labels, train, dev, test, utterances_per_dialogue}."""
    text = resources.files(__package__).joinpath("iemocap_splits.json").read_text(encoding="utf-8")
    return json.loads(text)


def split_of() -> dict[str, str]:
    s = load_splits()
    return {d: split for split in ("train", "dev", "test") for d in s[split]}


def find_sessions(root: Path) -> list[Path]:
    for base in [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sessions = [base / f"Session{i}" for i in range(1, 6) if (base / f"Session{i}" / "dialog").is_dir()]
        if sessions:
            return sessions
    raise ManifestError(f"no IEMOCAP sessions under {root}; expected {LAYOUT}")


def wav_problem(path: Path) -> str | None:
    """Cheap header check (no decoding): not RIFF/WAVE, or fewer audio bytes than the header declares."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(4096)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return "not a RIFF/WAVE file"
    pos = 12
    while pos + 8 <= len(head):
        cid, clen = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if cid == b"data":
            have = size - (pos + 8)
            return f"truncated: header declares {clen} audio bytes, file holds {have}" if have < clen else None
        pos += 8 + clen + (clen & 1)
    return "no data chunk in the wav header"


def _read_lines(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()


def collect(root: Path, report, probe: bool = False, manifest_file=None) -> list[Utterance]:
    if manifest_file is not None:
        report.notes.append("--manifest is only used by the 'manifest' recipe; ignored")
    splits, expected = split_of(), load_splits()["utterances_per_dialogue"]
    utts: list[Utterance] = []
    seen_dialogues: set[str] = set()
    for sess in find_sessions(root):
        emo_dir = sess / "dialog" / "EmoEvaluation"
        files = sorted(p for p in emo_dir.glob("*.txt") if not p.name.startswith(".")) if emo_dir.is_dir() else []
        if not files:
            report.notes.append(f"{sess.name}: no dialog/EmoEvaluation/*.txt; session skipped")
        for f in files:
            dialog = f.stem
            seen_dialogues.add(dialog)
            if dialog not in splits:
                report.skipped_dialogues.append({"dialogue_id": dialog, "reason": "not in the IEMOCAP-6 split lists"})
                continue
            kept = _collect_dialog(root, sess, dialog, splits[dialog], report, probe)
            if len(kept) != expected.get(dialog, -1):
                report.count_mismatches.append({"dialogue_id": dialog, "expected": expected.get(dialog), "found": len(kept)})
            utts.extend(kept)
    absent = [d for d in splits if d not in seen_dialogues]
    if absent:
        report.notes.append(f"{len(absent)} of {len(splits)} IEMOCAP-6 dialogues are not in this corpus (e.g. {absent[0]})")
    return utts


def _collect_dialog(root: Path, sess: Path, dialog: str, split: str, report, probe: bool) -> list[Utterance]:
    from ..probe import probe_media

    emo_file = sess / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    rows: list[tuple[float, float, str, str]] = []
    ids: set[str] = set()
    for lineno, line in enumerate(_read_lines(emo_file), 1):
        if not line.startswith("["):
            continue  # headers and per-annotator lines
        m = EMO_RE.match(line)
        if not m:
            report.malformed(rel(emo_file), lineno, "not '[start - end]\\tutt_id\\tlabel\\t[V, A, D]'")
            continue
        start, end, uid, code = float(m.group(1)), float(m.group(2)), m.group(3), m.group(4)
        suffix = uid.rsplit("_", 1)[-1]
        if not uid.startswith(dialog + "_") or suffix[:1] not in ("F", "M") or end <= start:
            report.malformed(rel(emo_file), lineno, f"utterance {uid!r} [{start} - {end}] does not belong to {dialog}")
            continue
        if uid in ids:
            report.duplicate_ids.append(f"iemocap/{uid}")
            continue
        ids.add(uid)
        rows.append((start, end, uid, code))

    texts: dict[str, str] = {}
    trn = sess / "dialog" / "transcriptions" / f"{dialog}.txt"
    if trn.is_file():
        for line in _read_lines(trn):
            m = TRN_RE.match(line.strip())
            if m:
                texts[m.group(1)] = m.group(2).strip()
    else:
        report.notes.append(f"{rel(trn)} missing; texts of {dialog} are empty")

    wav_dir = sess / "sentences" / "wav" / dialog
    wavs = {n for n in os.listdir(wav_dir) if n.endswith(".wav") and not n.startswith(".")} if wav_dir.is_dir() else set()
    for n in sorted(wavs - {f"{uid}.wav" for uid in ids}):
        report.orphan_media.append(rel(wav_dir / n))
    avi = sess / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
    video = rel(avi) if avi.is_file() else None
    if video and probe:
        why = probe_media(avi, need_video=True, need_audio=False)
        if why:
            report.bad(f"iemocap/{dialog}", video, why)

    utts: list[Utterance] = []
    speakers: dict[str, int] = {}
    for start, end, uid, code in sorted(r for r in rows if r[3] in CODES):
        label, utt_id = CODES[code], f"iemocap/{uid}"
        speaker = f"{dialog[:5]}{uid.rsplit('_', 1)[-1][0]}"  # Ses01 + F/M: the actor of that session
        wav = wav_dir / f"{uid}.wav"
        audio: str | None = rel(wav)
        if wav.name not in wavs:
            report.missing(utt_id, "audio", audio)
            audio = None
        else:
            why = wav_problem(wav) or (probe_media(wav, need_video=False, need_audio=True) if probe else None)
            if why:
                report.bad(utt_id, audio, why)
        if video is None:
            report.missing(utt_id, "video", rel(avi))
        text = texts.get(uid, "")
        if not text:
            report.empty_texts.append(utt_id)
        utts.append(Utterance(
            id=utt_id, dataset="iemocap", dialogue_id=dialog, index=len(utts), speaker=speaker,
            speaker_idx=speakers.setdefault(speaker, len(speakers)), text=text, video=video, audio=audio,
            video_segment=(start, end) if video else None, audio_segment=None, start=start, end=end,
            split=split, label=label, label_id=LABELS.index(label), sentiment=None,
        ))
    return utts


POLARITY = {"happy": (POSITIVE,), "sad": (NEGATIVE,), "neutral": (NEUTRAL,), "angry": (NEGATIVE,),
            "excited": (POSITIVE,), "frustrated": (NEGATIVE,)}
RECIPE = Recipe(name="iemocap", labels=LABELS, layout=LAYOUT, collect=collect, polarity=POLARITY)
