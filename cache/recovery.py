"""Rebuilding a feature set's lost or corrupt spec.json from its shards.

spec.json fixes a set's sharding before any shard exists. When it is deleted (or unreadable), the shards
still say which sharding they belong to: every shard carries `key`, `shard_index`, `n_shards` and `start`
as attributes, and a checksum. The sharding is taken back from the shards that are sound and agree with
it; every other shard file of the folder (unsound, of another key, of another sharding) is deleted, so a
set recomputed after a lost spec never leaves stray shards behind. `find_layout` only reads (planning); a
feature run deletes its `bad` files once it holds the set's run lock (`recover_layout` does both at once).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mer_pipe.common.errors import CacheError

from .shard import read_shard
from .store import SHARD_RE, FeatureStore


def _n_bounds(n_items: int, size: int) -> int:
    return max(1, -(-n_items // size))


@dataclass(frozen=True)
class Recovered:
    """What the shards of a set without a usable spec say. `layout`: (shard_size, n_shards) of the sound
    shards, or None; `sound`: their paths by index (checksummed just now); `bad`: every other shard file
    (unsound, of another key or sharding), to delete."""

    layout: tuple[int, int] | None
    sound: dict[int, Path] = field(default_factory=dict)
    bad: tuple[Path, ...] = ()


def find_layout(store: FeatureStore, dataset: str, extractor: str, key: str, n_items: int) -> Recovered:
    """The sharding the sound shards agree on (reads and checksums them; deletes nothing)."""
    fdir = store.feature_dir(dataset, extractor, key)
    try:
        names = sorted(os.listdir(fdir))
    except OSError:
        return Recovered(None)
    found: dict[int, dict[int, tuple[Path, int, int]]] = {}  # n -> i -> (path, start, rows)
    bad: list[Path] = []
    for name in names:
        m = SHARD_RE.match(name)
        path = fdir / name
        if not m or path.is_symlink() or not path.is_file():
            continue
        i, n = int(m.group(1)), int(m.group(2))
        try:
            sh = read_shard(path, verify=True)
        except CacheError:
            bad.append(path)
            continue
        a = sh.attrs
        if a.get("key") != key or a.get("n_shards") != n or a.get("shard_index") != i or not isinstance(a.get("start"), int):
            bad.append(path)
            continue
        found.setdefault(n, {})[i] = (path, int(a["start"]), len(sh))
    best: tuple[int, int] | None = None
    best_count = 0
    for n, shards in found.items():
        size = _size_of(shards, n, n_items)
        if size is not None and len(shards) > best_count:
            best, best_count = (size, n), len(shards)
    for n, shards in found.items():
        if best is None or n != best[1]:
            bad.extend(p for p, _, _ in shards.values())
    sound = {i: p for i, (p, _, _) in found[best[1]].items()} if best is not None else {}
    return Recovered(best, sound, tuple(sorted(bad)))


def recover_layout(store: FeatureStore, dataset: str, extractor: str, key: str,
                   n_items: int) -> tuple[tuple[int, int] | None, list[Path]]:
    """((shard_size, n_shards) of the sound shards, or None) and the shard files deleted because they are
    unsound or belong to no sharding that fits `n_items` utterances."""
    found = find_layout(store, dataset, extractor, key, n_items)
    for p in found.bad:
        p.unlink(missing_ok=True)
    return found.layout, list(found.bad)


def _size_of(shards: dict[int, tuple[Path, int, int]], n: int, n_items: int) -> int | None:
    """The shard size these shards were cut with, when they agree on one that gives n shards."""
    if n == 1:
        size = n_items
    else:
        sizes = {start // i for i, (_, start, _) in shards.items() if i > 0 and start % i == 0}
        sizes |= {rows for i, (_, _, rows) in shards.items() if i < n - 1}
        if len(sizes) != 1:
            return None
        size = sizes.pop()
    if size < 1 or _n_bounds(n_items, size) != n:
        return None
    for i, (_, start, rows) in shards.items():
        if start != i * size or rows != min(size, n_items - start):
            return None
    return size


__all__ = ["Recovered", "find_layout", "recover_layout"]
