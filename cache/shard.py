"""One HDF5 shard: the features of a contiguous slice of a manifest, written atomically.

Datasets inside a shard (N utterances, D feature dim):
  ids      [N]          UTF-8 strings, manifest order
  values   [N, D]       layout "pooled"
           [N, T, D]    layout "sequence" (every utterance has T steps, e.g. 15 Swin frames)
           [sum T, D]   layout "ragged", with offsets [N+1] (utterance i is values[offsets[i]:offsets[i+1]])
  valid    [N]          bool; False rows failed (zeros, or length 0 when ragged)
  reasons  [N]          UTF-8 strings, why a row failed ("" when ok)
  media    [N]          optional; JSON per failed row: the identity of its media file when it failed
                        ({"path", "exists", "size", "mtime_ns"[, "sha256"]}), "" elsewhere
Attributes: the caller's attrs (key, spec, provenance) plus layout, n, dim, dtype, format and a sha256
checksum over ids + values + valid (+ offsets) so `verify` can detect altered data.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mer_pipe.common.commands import command
from mer_pipe.common.errors import CacheError, ConfigError, CorruptShard

from mer_pipe.common.files import atomic_path

FORMAT_VERSION = 1
LAYOUTS = ("pooled", "sequence", "ragged")
DTYPES = ("float32", "float16")
_RESERVED = ("layout", "n", "dim", "dtype", "format", "checksum", "_json_attrs")
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Shard:
    """A shard read back. `values` is an array ([N, D] or [N, T, D]) or, for "ragged", a list of [T_i, D]."""

    path: Path
    ids: list[str]
    values: np.ndarray | list[np.ndarray]
    valid: np.ndarray
    reasons: dict[str, str]
    attrs: dict[str, Any]
    layout: str
    dim: int
    offsets: np.ndarray | None = field(default=None, repr=False)
    media: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # failed id -> media identity

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def key(self) -> str | None:
        return self.attrs.get("key")

    def checksum(self) -> str:
        """Recompute the content checksum from the data as read (compare with attrs["checksum"])."""
        if self.layout != "ragged":
            flat = self.values
        elif self.values:
            flat = np.concatenate(self.values)
        else:
            flat = np.zeros((0, self.dim), np.dtype(self.attrs.get("dtype", "float32")))
        return content_checksum(self.ids, np.asarray(flat), self.valid, self.offsets)


def first_duplicate(items: Sequence[str]) -> str | None:
    """The first id that occurs twice, or None."""
    seen: set[str] = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None


def content_checksum(ids: Sequence[str], values: np.ndarray, valid: np.ndarray, offsets: np.ndarray | None) -> str:
    """sha256 over ids (length-prefixed UTF-8), values and valid bytes (little-endian, C order) and offsets."""
    h = hashlib.sha256()
    for s in ids:
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    h.update(str(values.dtype.name).encode() + str(tuple(values.shape)).encode())
    h.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
    h.update(np.ascontiguousarray(valid, dtype=np.bool_).tobytes())
    if offsets is not None:
        h.update(np.ascontiguousarray(offsets, dtype="<i8").tobytes())
    return h.hexdigest()


def basic_provenance() -> dict[str, Any]:
    """Library versions, host and time: recorded in shards and specs, never hashed."""
    import datetime
    import platform

    import h5py

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "host": socket.gethostname(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _detect_layout(
    ids: Sequence[str], arrays: Sequence[np.ndarray | None], layout: str | None, dim: int | None
) -> tuple[str, int]:
    """(layout, D) from the successful arrays, checked against the caller's hints."""
    ok = [(i, a) for i, a in enumerate(arrays) if a is not None]
    ndims = {a.ndim for _, a in ok}
    if ndims - {1, 2}:
        i, a = next((i, a) for i, a in ok if a.ndim not in (1, 2))
        raise CacheError(f"utterance {ids[i]!r}: feature array must be [D] or [T, D], got shape {a.shape}")
    if len(ndims) > 1:
        raise CacheError(f"shard mixes pooled [D] and sequence [T, D] arrays (first {ids[ok[0][0]]!r} has "
                         f"ndim {ok[0][1].ndim}); an extractor must return one kind")
    dims = {a.shape[-1] for _, a in ok}
    if dim is not None:
        dims.add(dim)
    if len(dims) > 1:
        bad = next(ids[i] for i, a in ok if a.shape[-1] != (dim if dim is not None else ok[0][1].shape[-1]))
        raise CacheError(f"utterance {bad!r}: feature dim differs within the shard ({sorted(dims)}); "
                         "check the extractor's `dim`")
    d = dims.pop() if dims else 0
    if not ok:
        return layout or "pooled", d
    if ndims == {1}:
        detected = "pooled"
    else:
        detected = "sequence" if len({a.shape[0] for _, a in ok}) == 1 else "ragged"
    if layout is None or layout == detected:
        return detected, d
    if layout == "ragged" and detected == "sequence":
        return "ragged", d  # frame-level outputs that happen to share a length in this shard
    raise CacheError(f"requested layout {layout!r} but the arrays are {detected!r}; choose one of {', '.join(LAYOUTS)} "
                     "matching the extractor output or leave layout unset")


def _check_rows(path: Path, ids: list[str], arrays: Sequence[np.ndarray | None], reasons: Mapping[str, str],
                dtype: str, layout: str | None) -> list[np.ndarray | None]:
    """Validate the write arguments; returns the arrays as numpy (None kept for failed rows)."""
    if dtype not in DTYPES:
        raise ConfigError(f"shard dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"shard layout {layout!r} is not supported; choose one of {', '.join(LAYOUTS)}")
    if len(ids) != len(arrays):
        raise CacheError(f"{path}: {len(ids)} ids but {len(arrays)} arrays; they must align")
    dup = first_duplicate(ids)
    if dup is not None:
        raise CacheError(f"{path}: utterance id {dup!r} appears twice; ids must be unique")
    out = [None if a is None else np.asarray(a) for a in arrays]
    for uid, a in zip(ids, out):
        if a is None and not reasons.get(uid):
            raise CacheError(f"utterance {uid!r} has no features and no reason; pass reasons[{uid!r}] saying why it failed")
        if a is not None and dtype == "float16" and a.size and float(np.nanmax(np.abs(a))) > _F16_MAX:
            raise CacheError(f"utterance {uid!r}: values up to {float(np.nanmax(np.abs(a))):.3g} overflow float16; "
                             "store this extractor with dtype float32")
    return out


def _pack_values(arrays: list[np.ndarray | None], layout: str, d: int,
                 np_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, offsets) in the stored layout: [N, D], [N, T, D], or ragged [sum T, D] + offsets [N+1]."""
    n = len(arrays)
    if layout in ("pooled", "sequence"):
        shape = (n, d) if layout == "pooled" else (n, next((a.shape[0] for a in arrays if a is not None), 0), d)
        values = np.zeros(shape, np_dtype)
        for i, a in enumerate(arrays):
            if a is not None:
                values[i] = a
        return values, None
    lengths = np.array([0 if a is None else a.shape[0] for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    parts = [a.astype(np_dtype, copy=False) for a in arrays if a is not None]
    values = np.concatenate(parts) if parts else np.zeros((0, d), np_dtype)
    return values.reshape(-1, d), offsets


def _encode_attrs(attrs: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The caller's attrs as HDF5-storable values (dicts/lists as JSON) and the names stored as JSON."""
    user_attrs = dict(attrs or {})
    clash = sorted(set(user_attrs) & set(_RESERVED))
    if clash:
        raise CacheError(f"shard attrs {clash} are reserved (set by write_shard); rename them")
    json_attrs = [k for k, v in user_attrs.items() if isinstance(v, (dict, list, tuple))]
    for k in json_attrs:
        user_attrs[k] = json.dumps(user_attrs[k], sort_keys=True)
    for k, v in user_attrs.items():
        if v is None or not isinstance(v, (str, int, float, bool, np.integer, np.floating)):
            raise CacheError(f"shard attr {k!r} has unsupported type {type(v).__name__}; use str, number, bool, dict or list")
    return user_attrs, json_attrs


def _write_h5(path: Path, datasets: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
    """One HDF5 file, written under a temp name and renamed into place. String lists become UTF-8 datasets."""
    import h5py

    str_dt = h5py.string_dtype("utf-8")
    # The file is built in memory (HDF5 "core" driver, no backing store) and written with plain file I/O:
    # HDF5 writing to disk itself cannot fail cleanly when the disk fills (its objects stay open, error
    # tracebacks at teardown, then a segfault at exit), while a Python write raises one OSError (ENOSPC)
    # that atomic_path turns into DiskFullError and a removed temp file. No HDF5 file locks either.
    f = h5py.File(f"mer-pipe-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)
    try:
        for name, data in datasets.items():
            if isinstance(data, list):
                f.create_dataset(name, data=np.array(data, dtype=object), dtype=str_dt)
            else:
                f.create_dataset(name, data=data)
        f.attrs.update(attrs)
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(image)


def write_shard(
    path: str | os.PathLike[str],
    ids: Sequence[str],
    arrays: Sequence[np.ndarray | None],
    reasons: Mapping[str, str],
    *,
    dtype: str = "float32",
    attrs: Mapping[str, Any] | None = None,
    layout: str | None = None,
    dim: int | None = None,
    media: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a shard atomically (temp file in the same folder + os.replace) and return its path.

    arrays[i] is [D], [T, D] or None (failed; reasons[ids[i]] says why). `layout`/`dim` are optional
    hints: needed only when every row failed, and `layout="ragged"` forces ragged storage.
    Dict/list attrs are stored as JSON and decoded again by read_shard. `media[id]`: the identity of a
    failed utterance's media file when it failed (path, size, mtime_ns, optional sha256), kept as JSON.
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    arrays = _check_rows(path, ids, arrays, reasons, dtype, layout)
    user_attrs, json_attrs = _encode_attrs(attrs)
    layout, d = _detect_layout(ids, arrays, layout, dim)
    values, offsets = _pack_values(arrays, layout, d, np.dtype(dtype))
    valid = np.array([a is not None for a in arrays], dtype=np.bool_)
    datasets: dict[str, Any] = {
        "ids": ids, "values": values, "valid": valid,
        "reasons": ["" if v else str(reasons.get(uid, "")) for uid, v in zip(ids, valid)],
    }
    if offsets is not None:
        datasets["offsets"] = offsets
    if media:
        datasets["media"] = ["" if v or uid not in media else json.dumps(dict(media[uid]), sort_keys=True)
                             for uid, v in zip(ids, valid)]
    _write_h5(path, datasets, {
        **user_attrs, "_json_attrs": json.dumps(json_attrs), "layout": layout, "n": len(ids), "dim": d,
        "dtype": dtype, "format": FORMAT_VERSION, "checksum": content_checksum(ids, values, valid, offsets)})
    return path


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_shard(path: str | os.PathLike[str], *, values: bool = True, verify: bool = False) -> Shard:
    """Read a shard. `values=False` skips the feature values (cheap listing: ids, valid, attrs only);
    `verify=True` recomputes the content checksum (one pass over bytes already in memory).

    Raises CorruptShard naming the path when the file is missing, truncated, not a shard, or (verify)
    fails its checksum; a feature run treats such a shard as missing and recomputes it.
    """
    import h5py

    path = Path(path)
    # a feature run recomputes a shard it finds corrupt; --verify makes it checksum every shard, even one
    # whose size and mtime are unchanged since it was last checked (bit rot)
    fix = (f"re-extract the features: `{command('features', verify=True)}` with the same --dataset/--only checksums every "
           "shard and recomputes this one")
    if not path.is_file():
        raise CorruptShard(str(path), f"shard {path} does not exist; {fix}")
    try:
        with h5py.File(path, "r", locking=False) as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            for k in json.loads(attrs.pop("_json_attrs", "[]")):
                attrs[k] = json.loads(attrs[k])
            layout, dim = attrs["layout"], int(attrs["dim"])
            ids = [s.decode("utf-8") if isinstance(s, bytes) else s for s in f["ids"][()]]
            valid = np.asarray(f["valid"][()], dtype=np.bool_)
            reason_arr = [s.decode("utf-8") if isinstance(s, bytes) else s for s in f["reasons"][()]]
            offsets = np.asarray(f["offsets"][()], dtype=np.int64) if layout == "ragged" else None
            media_arr = [s.decode("utf-8") if isinstance(s, bytes) else s for s in f["media"][()]] if "media" in f else []
            vals: np.ndarray | list[np.ndarray]
            if values:
                flat = f["values"][()]
                vals = [flat[offsets[i]:offsets[i + 1]] for i in range(len(ids))] if offsets is not None else flat
            else:
                vals = np.zeros((0, dim), np.float32)
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise CorruptShard(str(path), f"shard {path} is truncated or unreadable ({type(exc).__name__}: {exc}); {fix}") from None
    if len(valid) != len(ids) or len(reason_arr) != len(ids) or (offsets is not None and len(offsets) != len(ids) + 1):
        raise CorruptShard(str(path), f"shard {path} is inconsistent (ids, valid, reasons or offsets differ in length); {fix}")
    reasons = {uid: r for uid, r, ok in zip(ids, reason_arr, valid) if not ok}
    try:
        media = {uid: json.loads(m) for uid, m in zip(ids, media_arr) if m}
    except json.JSONDecodeError:
        raise CorruptShard(str(path), f"shard {path} has unreadable media records; {fix}") from None
    shard = Shard(path=path, ids=ids, values=vals, valid=valid, reasons=reasons, attrs=attrs,
                  layout=layout, dim=dim, offsets=offsets, media=media)
    if verify and values and attrs.get("checksum") and shard.checksum() != attrs["checksum"]:
        raise CorruptShard(str(path), f"shard {path} fails its checksum (bytes changed on disk); {fix}")
    return shard
