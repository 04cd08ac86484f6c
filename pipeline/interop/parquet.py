"""Features as Parquet: `mer-pipe cache export --format parquet` writes one file per dataset that pandas, pyarrow
and Hugging Face `datasets` read; `mer-pipe prepare parquet` (parquet_import.import_parquet) reads it back.

One row per utterance, in manifest order. Columns: the manifest fields (`id`, `dialogue_id`, `index`, `speaker`,
`split`, `label`, then `label_id`, `speaker_idx`, `sentiment`, `text`, `dataset`, `video`, `audio`,
`video_segment`, `audio_segment`, `start`, `end`); per locked slot `<slot>` (list<float32> for a pooled vector,
list<list<float32>> for frames; null when the utterance failed), `<slot>_valid` and `<slot>_reason`; and
`valid` / `failure_reason` over all slots. The key-value metadata `mer_pipe` (JSON, see `METADATA_KEY`) holds the
dataset's label names and manifest digest and, per slot, its lock entry and the feature set's whole spec.json:
feature key, extractor config (weights identity included) and provenance. Media are not carried.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mer_pipe.common.commands import command, features_command
from mer_pipe.common.errors import CacheError, ConfigError, FeaturesMissing, ManifestError

METADATA_KEY = b"mer_pipe"
FORMAT = "mer-pipe-parquet"
FORMAT_VERSION = 1
BASE_COLUMNS = ("id", "dialogue_id", "index", "speaker", "split", "label", "label_id", "speaker_idx", "sentiment",
                "text", "dataset", "video", "audio", "video_segment", "audio_segment", "start", "end")
SUMMARY_COLUMNS = ("valid", "failure_reason")


def slot_columns(slot: str) -> tuple[str, str, str]:
    return slot, f"{slot}_valid", f"{slot}_reason"


@dataclass
class ParquetExport:
    path: Path
    dataset: str
    rows: int
    slots: dict[str, dict[str, Any]]  # slot -> {dim, layout, key, extractor, n_failed}
    warnings: list[str] = field(default_factory=list)


def _list_array(rows: list[np.ndarray | None], depth: int):
    """A pyarrow list (depth 1: [D]) or list-of-lists (depth 2: [T, D]) column; None rows are nulls."""
    import pyarrow as pa

    lengths = np.array([0 if r is None else len(r) for r in rows], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if lengths.sum() < 2**31 else np.int64))
    mask = pa.array([r is None for r in rows])
    present = [r for r in rows if r is not None and len(r)]
    if depth == 1:
        flat = pa.array(np.concatenate(present).astype(np.float32) if present else np.zeros(0, np.float32))
    else:
        frames = [f for r in present for f in r]
        flat = _list_array(frames, 1) if frames else pa.array([], type=pa.list_(pa.float32()))
    cls = pa.LargeListArray if offsets.type == pa.int64() else pa.ListArray
    return cls.from_arrays(offsets, flat, mask=mask)


def _rows_of(table: Any, n: int) -> list[np.ndarray | None]:
    """A FeatureTable's values as one array per row ([D] or [T, D]); failed rows None."""
    vals = table.values
    return [None if not table.valid[i] else np.asarray(vals[i], dtype=np.float32) for i in range(n)]


def export_parquet(dataset: str, out: str | Path, cache_dir: str | Path | None = None, overwrite: bool = False,
                   slots: list[str] | None = None) -> ParquetExport:
    """Write `dataset`'s manifest and locked features (every locked slot, or `slots`) to the Parquet file `out`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mer_pipe.cache.loading import load_table
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.common.files import atomic_path
    from mer_pipe.pipeline.corpus.manifest import cache_root, load_dataset

    from .exporter import check_out

    if Path(out).expanduser().is_dir():
        raise ConfigError(f"--out {out} is a folder; give the Parquet file to write, e.g. --out {Path(out) / (dataset + '.parquet')}")
    path = check_out(out, cache_root(cache_dir), overwrite)  # inside the cache, or existing without --overwrite
    info, utts = load_dataset(dataset, cache_dir)
    store = FeatureStore(cache_root(cache_dir))
    lock = store.read_lock(dataset)
    chosen = list(lock) if slots is None else slots
    unknown = [s for s in chosen if s not in lock]
    if unknown or not chosen:
        raise CacheError(f"dataset {dataset!r} has no locked features for slot(s) {', '.join(unknown) or 'any'} "
                         f"(locked: {', '.join(sorted(lock)) or 'none'}); run `{features_command(dataset)}` first")
    ids = [u.id for u in utts]
    rows = [u.to_dict() for u in utts]
    cols: dict[str, Any] = {c: pa.array([r[c] for r in rows]) for c in BASE_COLUMNS
                            if c not in ("video_segment", "audio_segment", "start", "end", "label_id")}
    cols["label_id"] = pa.array([r["label_id"] for r in rows], type=pa.int64())
    for c in ("video_segment", "audio_segment"):
        cols[c] = pa.array([r[c] for r in rows], type=pa.list_(pa.float64()))
    for c in ("start", "end"):
        cols[c] = pa.array([r[c] for r in rows], type=pa.float64())
    cols = {c: cols[c] for c in BASE_COLUMNS}
    meta_slots: dict[str, Any] = {}
    summary: dict[str, dict[str, Any]] = {}
    reasons_all: list[list[str]] = [[] for _ in ids]
    for slot in chosen:
        try:
            table = load_table(store, dataset, slot, info["manifest_digest"], lock=lock)
        except FeaturesMissing as exc:
            raise CacheError(f"{exc.detail}; rebuild it with `{features_command(dataset, slot)}`") from None
        if table.ids != ids:
            raise CacheError(f"slot {slot!r} of {dataset!r} is not in manifest order; re-extract it with "
                             f"`{features_command(dataset, slot)}`")
        arrays = _rows_of(table, len(ids))
        depth = 1 if table.layout == "pooled" else 2
        col, vcol, rcol = slot_columns(slot)
        cols[col] = _list_array(arrays, depth)
        cols[vcol] = pa.array(table.valid.astype(bool))
        cols[rcol] = pa.array([None if v else table.reasons.get(u, "") for u, v in zip(ids, table.valid)], type=pa.string())
        for i in np.flatnonzero(~table.valid):
            reasons_all[i].append(f"{slot}: {table.reasons.get(ids[i], '')}")
        entry = dict(lock[slot])
        meta_slots[slot] = {"lock": entry, "layout": table.layout, "spec": table.spec}
        summary[slot] = {"dim": table.dim, "layout": table.layout, "key": table.key, "extractor": table.extractor,
                         "n_failed": table.n_failed}
    cols["valid"] = pa.array([not r for r in reasons_all])
    cols["failure_reason"] = pa.array(["; ".join(r) if r else None for r in reasons_all], type=pa.string())
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": dataset,
            "label_names": list(info.get("label_names") or []), "manifest_digest": info["manifest_digest"],
            "recipe": info.get("recipe"), "source": info.get("source"), "slots": meta_slots}
    tbl = pa.table(cols)
    tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}), METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(tbl, str(tmp), compression="zstd")
    return ParquetExport(path=path, dataset=dataset, rows=len(ids), slots=summary)


# --- reading ---------------------------------------------------------------------------------------------------

def parquet_files(root: str | Path) -> list[Path]:
    """The export's file, or every `*.parquet` under a folder (a Hub snapshot), in path order."""
    p = Path(root).expanduser().resolve()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))  # e.g. hf's .cache/
        if not files:
            raise ConfigError(f"--root {p} holds no *.parquet file; give the file `{command('cache', 'export', format='parquet')}` wrote")
        return files
    if not p.is_file():
        raise ConfigError(f"--root {p} does not exist; give a Parquet file or a folder of them")
    return [p]


def _bad(path: Any, what: str) -> ManifestError:
    return ManifestError(f"{path}: {what}; it is not a mer-pipe Parquet export (write one with "
                         f"`{command('cache', 'export', format='parquet')}`)")


def read_metadata(path: Path) -> dict[str, Any]:
    """The `mer_pipe` key-value metadata of one file, checked."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(str(path))
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a damaged or non-Parquet file
        raise ManifestError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise _bad(path, f"no {METADATA_KEY.decode()!r} key-value metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise _bad(path, f"its {METADATA_KEY.decode()!r} metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(path, f"metadata format {meta.get('format') if isinstance(meta, dict) else meta!r} is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {meta.get('format_version')!r}, this mer-pipe reads {FORMAT_VERSION}; "
                            "upgrade mer-pipe or re-export the file")
    for k, kind in (("label_names", list), ("manifest_digest", str), ("slots", dict)):
        if not isinstance(meta.get(k), kind):
            raise _bad(path, f"metadata field {k!r} is missing or not a {kind.__name__}")
    for slot, s in meta["slots"].items():
        spec, lock = s.get("spec") if isinstance(s, dict) else None, s.get("lock") if isinstance(s, dict) else None
        if not isinstance(spec, dict) or not isinstance(lock, dict) or not {"extractor", "key", "dim"} <= set(lock) \
                or not {"config", "version", "stage"} <= set(spec) or s.get("layout") not in ("pooled", "sequence", "ragged"):
            raise _bad(path, f"metadata of slot {slot!r} lacks its lock entry (extractor, key, dim), layout or spec "
                             "(stage, version, config)")
    names = set(schema.names)
    need = [*BASE_COLUMNS, *SUMMARY_COLUMNS, *(c for slot in meta["slots"] for c in slot_columns(slot))]
    missing = [c for c in need if c not in names]
    if missing:
        raise _bad(path, f"column(s) {', '.join(missing)} missing (the metadata names slots {', '.join(meta['slots'])})")
    return meta


def _unlist(col: Any, depth: int) -> tuple[list[np.ndarray | None], list[int]]:
    """Rows of a list column as float32 arrays (None for null) and each row's inner widths (depth 2: per frame)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
        raise TypeError(f"type {arr.type}")
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(arr)
    if depth == 1:
        if not pa.types.is_floating(flat.type) and flat.null_count == 0 and len(flat):
            raise TypeError(f"type {arr.type}")
        values = flat.to_numpy(zero_copy_only=False).astype(np.float32)
        ends = np.cumsum(lengths)
        return [None if nulls[i] else values[ends[i] - lengths[i]:ends[i]] for i in range(len(arr))], list(lengths)
    frames, widths = _unlist(flat, 1)
    out, pos = [], 0
    for i in range(len(arr)):
        rows = frames[pos:pos + lengths[i]]
        pos += lengths[i]
        out.append(None if nulls[i] else (np.stack(rows) if rows else np.zeros((0, 0), np.float32)))
    return out, widths


def read_rows(files: list[Path], meta: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(manifest rows, slot -> {arrays, valid, reasons}) of the export's files, in row order; checked against `meta`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        if f != files[0] and read_metadata(f) != meta:
            raise ManifestError(f"{f}: its metadata differs from {files[0]}'s; give one export's files (--root FILE)")
        tables.append(pq.read_table(str(f)))
    table = pa.concat_tables(tables, promote_options="none") if len(tables) > 1 else tables[0]
    base = {c: table.column(c).to_pylist() for c in BASE_COLUMNS}
    rows = [{c: base[c][i] for c in BASE_COLUMNS} for i in range(table.num_rows)]
    slots: dict[str, dict[str, Any]] = {}
    for slot, s in meta["slots"].items():
        col, vcol, rcol = slot_columns(slot)
        depth, dim = (1 if s["layout"] == "pooled" else 2), int(s["lock"]["dim"])
        try:
            arrays, widths = _unlist(table.column(col), depth)
        except TypeError as exc:
            raise _bad(files[0], f"column {col!r} is {exc}, not a list of float vectors ({s['layout']} layout)") from None
        valid = table.column(vcol).to_pylist()
        reasons = table.column(rcol).to_pylist()
        for i, (a, ok) in enumerate(zip(arrays, valid)):
            uid = rows[i]["id"]
            if bool(ok) != (a is not None):
                raise _bad(files[0], f"row {uid!r}: {vcol} is {ok} but {col} is {'null' if a is None else 'set'}")
            if a is not None and (a.shape[-1] if a.size else (0 if depth == 1 else dim)) != dim:
                raise _bad(files[0], f"row {uid!r}: {col} has width {a.shape[-1]}, the metadata says dim {dim}")
        if depth == 2 and any(w != dim for w in widths):
            raise _bad(files[0], f"column {col!r} has frames whose width is not the metadata's dim {dim}")
        slots[slot] = {"arrays": arrays, "valid": [bool(v) for v in valid],
                       "reasons": {rows[i]["id"]: (r or "failed") for i, r in enumerate(reasons) if not valid[i]}}
    return rows, slots
