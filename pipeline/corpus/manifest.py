"""The manifest: one JSONL row per utterance (docs/contracts.md), plus the prepared-dataset cache layout.

`<cache>/<name>/manifest.jsonl`, `<cache>/<name>/dataset.json`, `<cache>/<name>/prepare_report.json`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mer_pipe.common.errors import CacheError, ManifestError
from mer_pipe.common.files import atomic_path

from .hints import prepare_command

SPLITS = ("train", "dev", "test")
SENTIMENTS = ("negative", "neutral", "positive")
# Fields that change what an extractor sees; labels and splits are deliberately left out so relabelling
# never invalidates cached features.
DIGEST_FIELDS = ("id", "dialogue_id", "index", "text", "video", "audio", "video_segment", "audio_segment")


@dataclass(frozen=True)
class Utterance:
    """One utterance of a conversation. Paths are relative to the corpus root; segments are seconds."""

    id: str
    dataset: str
    dialogue_id: str
    index: int
    speaker: str
    speaker_idx: int
    text: str
    video: str | None
    audio: str | None
    video_segment: tuple[float, float] | None
    audio_segment: tuple[float, float] | None
    start: float | None
    end: float | None
    split: str
    label: str | None
    label_id: int | None
    sentiment: str | None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("video_segment", "audio_segment"):
            if d[k] is not None:
                d[k] = [float(d[k][0]), float(d[k][1])]
        return d


FIELDS = tuple(f.name for f in dataclasses.fields(Utterance))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(row: Any, where: str) -> Utterance:
    """Validate one decoded JSON row; `where` is 'FILE:LINE' for the message."""
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
    missing = [f for f in FIELDS if f not in row]
    extra = sorted(set(row) - set(FIELDS))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing field(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown field(s) {', '.join(extra)}")
        raise ManifestError(f"{where}: {'; '.join(parts)}; every row needs exactly: {', '.join(FIELDS)}")

    def bad(field: str, want: str) -> ManifestError:
        return ManifestError(f"{where}: field {field!r} = {row[field]!r} is not {want}; fix that row")

    for f in ("id", "dataset", "dialogue_id", "speaker", "text"):
        if not isinstance(row[f], str):
            raise bad(f, "a string")
    if not row["id"]:
        raise bad("id", "a non-empty string")
    for f in ("index", "speaker_idx"):
        if not isinstance(row[f], int) or isinstance(row[f], bool) or row[f] < 0:
            raise bad(f, "an integer >= 0")
    for f in ("video", "audio"):
        if row[f] is not None and (not isinstance(row[f], str) or not row[f]):
            raise bad(f, "null or a non-empty path relative to the corpus root")
    segs = {}
    for f in ("video_segment", "audio_segment"):
        v = row[f]
        if v is None:
            segs[f] = None
            continue
        if not (isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v) and 0 <= v[0] < v[1]):
            raise bad(f, "null or [start, end] seconds with 0 <= start < end")
        segs[f] = (float(v[0]), float(v[1]))
    for f in ("start", "end"):
        if row[f] is not None and not _is_num(row[f]):
            raise bad(f, "null or a number of seconds")
    if row["split"] not in SPLITS:
        raise bad("split", f"one of {', '.join(SPLITS)}")
    if row["label"] is not None and not isinstance(row["label"], str):
        raise bad("label", "null or a string")
    lid = row["label_id"]
    if lid is not None and (not isinstance(lid, int) or isinstance(lid, bool) or lid < 0):
        raise bad("label_id", "null or an integer >= 0")
    if (row["label"] is None) != (lid is None):
        raise ManifestError(f"{where}: 'label' and 'label_id' must both be set or both be null; fix that row")
    if row["sentiment"] is not None and row["sentiment"] not in SENTIMENTS:
        raise bad("sentiment", f"null or one of {', '.join(SENTIMENTS)}")
    return Utterance(**{**row, **segs, "start": _opt_float(row["start"]), "end": _opt_float(row["end"])})


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def validate_utterances(utts: list[Utterance], source: str = "manifest") -> None:
    """Cross-row checks: unique ids, consecutive indices per dialogue, one label-name -> id mapping."""
    seen: set[str] = set()
    by_dialogue: dict[str, list[int]] = {}
    label_ids: dict[str, int] = {}
    for u in utts:
        if u.id in seen:
            raise ManifestError(f"{source}: duplicate utterance id {u.id!r}; ids must be unique")
        seen.add(u.id)
        by_dialogue.setdefault(u.dialogue_id, []).append(u.index)
        if u.label is not None:
            prev = label_ids.setdefault(u.label, u.label_id)  # type: ignore[arg-type]
            if prev != u.label_id:
                raise ManifestError(
                    f"{source}: utterance {u.id!r} maps label {u.label!r} to id {u.label_id}, "
                    f"earlier rows map it to {prev}; use one id per label"
                )
    for d, idx in by_dialogue.items():
        if sorted(idx) != list(range(len(idx))):
            raise ManifestError(
                f"{source}: dialogue {d!r} has indices {sorted(idx)[:12]}; they must be 0..{len(idx) - 1} "
                "(the position of each utterance after ordering)"
            )


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read and validate a manifest JSONL; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; write one JSON object per utterance (docs/contracts.md)")
    utts: list[Utterance] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(f"{path}:{lineno}: not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                                    "re-save the manifest as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            utts.append(_check(row, f"{path}:{lineno}"))
    if not utts:
        raise ManifestError(f"manifest {path} holds no utterances")
    validate_utterances(utts, str(path))
    return utts


def write_manifest(path: str | Path, utts: Iterable[Utterance]) -> None:
    """Write one JSON row per utterance (temp file + rename, so a reader never sees half a manifest)."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for u in utts:
            fh.write(json.dumps(u.to_dict(), ensure_ascii=False) + "\n")


def manifest_digest(utts: Iterable[Utterance]) -> str:
    """sha256 over the extraction-relevant fields (DIGEST_FIELDS) in manifest order."""
    h = hashlib.sha256()
    for u in utts:
        d = u.to_dict()
        h.update(json.dumps([d[f] for f in DIGEST_FIELDS], ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`--cache-dir`, else the feature store's default root ($MER_PIPE_CACHE, else ~/.cache/mer-pipe)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    from mer_pipe.cache.store import default_root

    return Path(default_root()).expanduser().resolve()


def dataset_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / name


def load_dataset(name: str, cache_dir: str | Path | None = None) -> tuple[dict[str, Any], list[Utterance]]:
    """(dataset.json as a dict, utterances) of a prepared dataset; CacheError with the fix if absent."""
    d = dataset_dir(name, cache_dir)
    info_path, man_path = d / "dataset.json", d / "manifest.jsonl"
    if not info_path.is_file() or not man_path.is_file():
        raise CacheError(
            f"dataset {name!r} is not prepared in {d} (no dataset.json/manifest.jsonl); run "
            f"`{prepare_command(name, cache_dir=cache_dir)}` first"
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CacheError(f"{info_path} is not valid JSON ({exc.msg}); rerun `{prepare_command(name, cache_dir=cache_dir)}`") from None
    utts = read_manifest(man_path)
    digest = manifest_digest(utts)
    if info.get("manifest_digest") != digest:
        raise CacheError(
            f"{man_path} was changed after prepare (digest {digest[:12]} != {str(info.get('manifest_digest'))[:12]} "
            f"in {info_path.name}); rerun `{prepare_command(name, cache_dir=cache_dir)}`"
        )
    return info, utts
