"""Which shards of a feature set are sound: opened and checksummed once, then trusted while unchanged.

A feature run must not build on a shard that fails its checksum or cannot be opened; it treats such a
shard as missing and recomputes it. Checking every shard's checksum on every run would read the whole
feature set each time (a MELD-sized Swin set is ~1 GB), so the result of a check is remembered in
`<feature set>/.verified.json`: shard name -> [size, mtime_ns, checksum]. A shard whose size and mtime
still match its record is not read again; any write (a recomputed shard, an edit in place) changes its
mtime and makes it checked again. Bit rot that leaves size and mtime alone is caught where it matters:
`load_table` (training, export) verifies every shard's checksum on every load, and `cache verify` too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from mer_pipe.common.errors import CorruptShard
from mer_pipe.common.files import write_json_atomic

from .shard import read_shard
from .store import FeatureStore

VERIFIED_FILE = ".verified.json"


def _load_record(fdir: Path) -> dict[str, list]:
    try:
        data = json.loads((fdir / VERIFIED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_record(fdir: Path, record: dict[str, list]) -> None:
    try:
        write_json_atomic(fdir / VERIFIED_FILE, record, indent=0)
    except OSError:
        pass  # a read-only cache: checks are then simply repeated next time


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def sound_shards(store: FeatureStore, dataset: str, extractor: str, key: str, n: int, *,
                 full: bool = False) -> tuple[set[int], dict[int, str]]:
    """(sound, corrupt) among the present shards of an n-shard set; corrupt maps index -> what is wrong.
    `full`: checksum every shard, records notwithstanding (`features --verify`: bit rot keeps size and mtime)."""
    fdir = store.feature_dir(dataset, extractor, key)
    present = store.existing_shards(dataset, extractor, key, n)
    if not present:
        return set(), {}
    record = _load_record(fdir)
    sound: set[int] = set()
    corrupt: dict[int, str] = {}
    changed = False
    for i in sorted(present):
        path = store.shard_path(dataset, extractor, key, i, n)
        stamp = _stamp(path)
        rec = record.get(path.name)
        if not full and stamp is not None and isinstance(rec, list) and rec[:2] == stamp:
            sound.add(i)
            continue
        try:
            shard = read_shard(path, verify=True)
        except CorruptShard as exc:
            corrupt[i] = exc.detail
            changed |= record.pop(path.name, None) is not None
            continue
        sound.add(i)
        if stamp is not None:
            record[path.name] = [*stamp, shard.attrs.get("checksum")]
            changed = True
    if changed:
        _save_record(fdir, record)
    return sound, corrupt


def forget(path: str | os.PathLike[str]) -> None:
    """Drop a shard's record (it failed its checksum when loaded): the next feature run checks it again,
    finds it corrupt and recomputes it."""
    p = Path(path)
    record = _load_record(p.parent)
    if record.pop(p.name, None) is not None:
        _save_record(p.parent, record)


def mark_verified(store: FeatureStore, dataset: str, extractor: str, key: str, paths: Iterable[str | os.PathLike[str]]) -> None:
    """Record shards this process has just written (and so knows to be whole) as checked."""
    fdir = store.feature_dir(dataset, extractor, key)
    record = _load_record(fdir)
    for p in map(Path, paths):
        stamp = _stamp(p)
        if stamp is None:
            continue
        try:
            checksum = read_shard(p, values=False).attrs.get("checksum")
        except CorruptShard:
            continue
        record[p.name] = [*stamp, checksum]
    _save_record(fdir, record)


__all__ = ["VERIFIED_FILE", "forget", "mark_verified", "sound_shards"]
