"""MELD.Raw recipe: the official `*_sent_emo.csv` files plus `diaX_uttY.mp4` clips.

Accepted layouts: CSVs at the root or one level below; clip folders `train_splits/`,
`dev_splits_complete/`, `output_repeated_splits_test/` anywhere up to three levels below the root
(e.g. `train/train_splits/` as the tarballs unpack). Without a clip folder a split is prepared text-only
(media null, noted in the report).
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from mer_pipe.common.errors import ManifestError

from ..manifest import SENTIMENTS, Utterance
from .base import NEGATIVE, NEUTRAL, POSITIVE, Recipe

LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
CSV_NAMES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
CLIP_RE = re.compile(r"^dia(\d+)_utt(\d+)\.mp4$")
_TIME_RE = re.compile(r"^(\d+):(\d+):(\d+)[,.](\d+)$")
LAYOUT = ("train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv at the root or one folder below, and clip "
          "folders train_splits/, dev_splits_complete/, output_repeated_splits_test/ (MELD.Raw)")


@dataclass(frozen=True)
class MeldRow:
    """One valid CSV row; `line` is the 1-based line in the CSV file where the row starts."""

    dialogue_id: int
    utterance_id: int
    text: str
    speaker: str
    emotion: str
    sentiment: str
    start: float | None
    end: float | None
    line: int


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as cp1252/latin-1 ('youâ€™re' -> 'you’re'); leave clean text alone."""
    if not any(c in text for c in "âÃÂ"):
        return text
    for enc in ("cp1252", "latin-1"):
        try:
            return text.encode(enc).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return text


def decode_csv(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 (with or without BOM), else cp1252 as older MELD copies are."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), "cp1252"


def _seconds(stamp: str) -> float | None:
    m = _TIME_RE.match(stamp.strip())
    if not m:
        return None
    h, mi, s, frac = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(frac) / 10 ** len(frac)


def read_meld_csv(path: Path, malformed: list[tuple[int, str]] | None = None) -> list[MeldRow]:
    """Parse one MELD CSV. Bad rows are skipped and appended to `malformed` as (line, reason)."""
    text, _ = decode_csv(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path} is empty; expected the MELD header {', '.join(REQUIRED_COLUMNS)}") from None
    miss = [c for c in REQUIRED_COLUMNS if c not in header]
    if miss:
        raise ManifestError(f"{path}: header lacks column(s) {', '.join(miss)}; is this a MELD *_sent_emo.csv?")
    col = {h: i for i, h in enumerate(header)}
    rows: list[MeldRow] = []
    bad = malformed if malformed is not None else []
    prev_end = reader.line_num
    for rec in reader:
        line, prev_end = prev_end + 1, reader.line_num
        if not rec or all(not f.strip() for f in rec):
            continue
        if len(rec) != len(header):
            bad.append((line, f"{len(rec)} fields, the header has {len(header)}"))
            continue
        get = lambda c: rec[col[c]].strip() if c in col else ""  # noqa: E731
        try:
            dia, utt = int(get("Dialogue_ID")), int(get("Utterance_ID"))
        except ValueError:
            bad.append((line, f"Dialogue_ID {get('Dialogue_ID')!r} / Utterance_ID {get('Utterance_ID')!r} not integers"))
            continue
        emo, sent = get("Emotion").lower(), get("Sentiment").lower()
        if emo not in LABELS:
            bad.append((line, f"Emotion {emo!r} not one of {', '.join(LABELS)}"))
            continue
        if sent not in SENTIMENTS:
            bad.append((line, f"Sentiment {sent!r} not one of {', '.join(SENTIMENTS)}"))
            continue
        rows.append(MeldRow(dia, utt, fix_mojibake(rec[col["Utterance"]]).strip(), fix_mojibake(get("Speaker")),
                            emo, sent, _seconds(get("StartTime")), _seconds(get("EndTime")), line))
    return rows


def find_csvs(root: Path) -> dict[str, Path]:
    """The three CSVs at the root or one folder below; ManifestError naming what was expected otherwise."""
    found: dict[str, Path] = {}
    dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for split, fname in CSV_NAMES.items():
        for d in dirs:
            if (d / fname).is_file():
                found[split] = d / fname
                break
    if not found:
        raise ManifestError(f"no MELD CSVs under {root}; expected {LAYOUT}")
    return found


def find_clip_dirs(root: Path, max_depth: int = 3) -> dict[str, Path]:
    """Breadth-first search (not into clip folders themselves, which hold thousands of files)."""
    wanted = {v: k for k, v in CLIP_DIRS.items()}
    found: dict[str, Path] = {}
    queue = deque([(root, 0)])
    while queue and len(found) < len(wanted):
        d, depth = queue.popleft()
        try:
            entries = sorted((e for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name in wanted and wanted[e.name] not in found:
                found[wanted[e.name]] = Path(e.path)
            elif depth + 1 < max_depth:
                queue.append((Path(e.path), depth + 1))
    return found


def collect(root: Path, report, probe: bool = False, manifest_file=None) -> list[Utterance]:
    if manifest_file is not None:
        report.notes.append("--manifest is only used by the 'manifest' recipe; ignored")
    csvs = find_csvs(root)
    clip_dirs = find_clip_dirs(root)
    utts: list[Utterance] = []
    for split in ("train", "dev", "test"):
        if split not in csvs:
            report.notes.append(f"no {CSV_NAMES[split]} found; split {split} skipped")
            continue
        utts.extend(_collect_split(root, split, csvs[split], clip_dirs.get(split), report, probe))
    return utts


def _collect_split(root: Path, split: str, csv_path: Path, clip_dir: Path | None, report, probe: bool) -> list[Utterance]:
    from ..probe import probe_media

    bad: list[tuple[int, str]] = []
    rows = read_meld_csv(csv_path, bad)
    rel_csv = csv_path.relative_to(root).as_posix()
    for line, reason in bad:
        report.malformed(rel_csv, line, reason)
    clips: set[str] = set()
    if clip_dir is None:
        report.notes.append(f"no {CLIP_DIRS[split]}/ folder under {root}; split {split} prepared text-only (media null)")
    else:
        names = [e.name for e in os.scandir(clip_dir) if e.is_file()]
        clips = {n for n in names if CLIP_RE.match(n)}
        other = [n for n in names if not CLIP_RE.match(n) and not n.startswith("._")]
        if other:
            report.notes.append(f"{len(other)} file(s) in {clip_dir.name}/ not named diaX_uttY.mp4 ignored (e.g. {other[0]})")
    rel_dir = clip_dir.relative_to(root).as_posix() if clip_dir is not None else None

    by_dia: dict[int, list[MeldRow]] = {}
    seen: set[tuple[int, int]] = set()
    for r in rows:
        if (r.dialogue_id, r.utterance_id) in seen:
            report.duplicate_ids.append(f"meld/{split}/dia{r.dialogue_id}_utt{r.utterance_id}")
            continue
        seen.add((r.dialogue_id, r.utterance_id))
        by_dia.setdefault(r.dialogue_id, []).append(r)

    utts: list[Utterance] = []
    for dia in sorted(by_dia):
        speakers: dict[str, int] = {}
        for index, r in enumerate(sorted(by_dia[dia], key=lambda r: r.utterance_id)):
            uid = f"meld/{split}/dia{dia}_utt{r.utterance_id}"
            clip = f"dia{dia}_utt{r.utterance_id}.mp4"
            path: str | None = None
            if rel_dir is not None:
                if clip in clips:
                    path = f"{rel_dir}/{clip}"
                    if probe:
                        why = probe_media(root / path, need_video=True, need_audio=True)
                        if why:
                            report.bad(uid, path, why)
                else:
                    report.missing(uid, "video+audio", f"{rel_dir}/{clip}")
            if not r.text:
                report.empty_texts.append(uid)
            spk_idx = speakers.setdefault(r.speaker, len(speakers))
            utts.append(Utterance(
                id=uid, dataset="meld", dialogue_id=f"{split}/dia{dia}", index=index, speaker=r.speaker,
                speaker_idx=spk_idx, text=r.text, video=path, audio=path, video_segment=None, audio_segment=None,
                start=r.start, end=r.end, split=split, label=r.emotion, label_id=LABELS.index(r.emotion),
                sentiment=r.sentiment,
            ))
    if rel_dir is not None:
        for n in sorted(clips - {f"dia{d}_utt{u}.mp4" for d, u in seen}, key=_clip_key):
            report.orphan_media.append(f"{rel_dir}/{n}")
    return utts


def _clip_key(name: str) -> tuple[int, int]:
    m = CLIP_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else (1 << 30, 0)


POLARITY = {"neutral": (NEUTRAL,), "surprise": (NEGATIVE, POSITIVE), "fear": (NEGATIVE,), "sadness": (NEGATIVE,),
            "joy": (POSITIVE,), "disgust": (NEGATIVE,), "anger": (NEGATIVE,)}
RECIPE = Recipe(name="meld", labels=LABELS, layout=LAYOUT, collect=collect, polarity=POLARITY)
