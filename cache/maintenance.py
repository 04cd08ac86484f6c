"""Looking after a store: list feature sets (ls), check them (verify), collect the unlocked ones (gc), du.

Every function returns plain dataclasses; each has `row()` giving an ordered dict of printable
cells so the CLI can print a table without knowing the fields.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mer_pipe.common.errors import CacheError
from mer_pipe.common.files import human_bytes, identity_changed

from .collect import gc as _collect, iter_feature_sets
from .shard import read_shard
from .store import SHARD_RE, SPEC_FILE, FeatureStore


@dataclass(frozen=True)
class FeatureSetInfo:
    """One feature set as `mer-pipe cache ls` shows it. `shards_expected` is None without a spec."""

    dataset: str
    extractor: str
    key: str
    slots: tuple[str, ...]
    dim: int | None
    layout: str | None
    utterances: int
    failures: int
    shards_present: int
    shards_expected: int | None
    bytes: int
    unreadable: int
    created: str | None
    path: Path

    @property
    def complete(self) -> bool:
        return self.shards_expected is not None and self.shards_present == self.shards_expected and not self.unreadable

    def row(self) -> dict[str, str]:
        return {
            "dataset": self.dataset, "extractor": self.extractor, "key": self.key,
            "slots": ",".join(self.slots) or "-", "dim": _s(self.dim), "layout": _s(self.layout),
            "utterances": str(self.utterances), "failures": str(self.failures),
            "shards": f"{self.shards_present}/{_s(self.shards_expected)}" + (f" ({self.unreadable} bad)" if self.unreadable else ""),
            "size": human_bytes(self.bytes),
        }


@dataclass(frozen=True)
class Problem:
    """One finding of `verify`: kind is one of PROBLEM_KINDS; `fix` says what to run or delete."""

    kind: str
    dataset: str
    extractor: str | None
    key: str | None
    path: Path
    message: str
    fix: str

    def row(self) -> dict[str, str]:
        return {"kind": self.kind, "path": str(self.path), "message": self.message, "fix": self.fix}


PROBLEM_KINDS = ("unreadable", "checksum", "key-mismatch", "missing-shard", "stray-shard", "missing-spec",
                 "dangling-lock", "media-changed")


@dataclass(frozen=True)
class DiskUsage:
    """Bytes of one feature set, or of a whole dataset folder when extractor and key are None."""

    dataset: str
    extractor: str | None
    key: str | None
    bytes: int
    files: int
    locked: bool

    def row(self) -> dict[str, str]:
        return {"dataset": self.dataset, "extractor": self.extractor or "(total)", "key": self.key or "",
                "locked": "yes" if self.locked else "", "files": str(self.files), "size": human_bytes(self.bytes)}


def _s(v: Any) -> str:
    return "-" if v is None else str(v)


def _tree_stats(path: Path) -> tuple[int, int, float]:
    """(bytes, files, newest mtime) of everything under path, temp files included."""
    size = files = 0
    newest = path.stat().st_mtime if path.exists() else 0.0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:  # removed while we walk (a writer renaming its temp file)
                continue
            size += st.st_size
            files += 1
            newest = max(newest, st.st_mtime)
    return size, files, newest


def _shard_files(fdir: Path) -> list[tuple[int, int, Path]]:
    out = []
    for name in sorted(os.listdir(fdir)):
        m = SHARD_RE.match(name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), fdir / name))
    return out


def _spec(store: FeatureStore, ds: str, ex: str, key: str) -> dict[str, Any] | None:
    try:
        return store.read_spec(ds, ex, key)
    except CacheError:
        return None


def _slots(lock: dict[str, dict[str, Any]], ex: str, key: str) -> tuple[str, ...]:
    return tuple(sorted(s for s, e in lock.items() if e.get("extractor") == ex and e.get("key") == key))


def ls(store: FeatureStore, dataset: str | None = None) -> list[FeatureSetInfo]:
    """Every feature set (optionally of one dataset), reading only shard attrs and `valid` flags."""

    out: list[FeatureSetInfo] = []
    locks: dict[str, dict[str, dict[str, Any]]] = {}
    broken: set[str] = set()
    for ds, ex, key, fdir in iter_feature_sets(store, dataset):
        if ds not in locks:
            try:
                locks[ds] = store.read_lock(ds)
            except CacheError:
                locks[ds] = {}  # shown with slots "?" (broken lock); `cache verify` names the file and the fix
                broken.add(ds)
        lock = locks[ds]
        spec = _spec(store, ds, ex, key) or {}
        n_expected = spec.get("n_shards") if isinstance(spec.get("n_shards"), int) else None
        utts = fails = present = bad = 0
        dim, layout = spec.get("dim"), spec.get("layout")
        for i, n, path in _shard_files(fdir):
            if n_expected is not None and (n != n_expected or i >= n):
                continue  # shards of another sharding are strays (verify reports them)
            present += 1
            try:
                sh = read_shard(path, values=False)
            except CacheError:
                bad += 1
                continue
            utts += len(sh)
            fails += int((~sh.valid).sum())
            if sh.valid.any():
                dim = dim if dim is not None else sh.dim
                layout = layout if layout is not None else sh.layout
        size, _, _ = _tree_stats(fdir)
        out.append(FeatureSetInfo(ds, ex, key, ("?",) if ds in broken else _slots(lock, ex, key), dim, layout, utts, fails, present,
                                  n_expected, size, bad, spec.get("created"), fdir))
    return out


def _media_changed(shard: Any) -> str | None:
    """What differs about the media of the shard's failed utterances since they failed, or None."""
    changed = [uid for uid, rec in shard.media.items() if identity_changed(rec)]
    if not changed:
        return None
    eg = shard.media[changed[0]].get("path")
    return f"{len(changed)} utterance(s) recorded as failed have different media now (e.g. {changed[0]!r}: {eg})"


def verify(store: FeatureStore, dataset: str | None = None) -> list[Problem]:
    """Re-read every shard and check checksum, key and completeness; also locks pointing nowhere."""

    problems: list[Problem] = []
    seen: set[tuple[str, str, str]] = set()
    for ds, ex, key, fdir in iter_feature_sets(store, dataset):
        seen.add((ds, ex, key))
        rebuild = f"delete it and re-extract the features of {ds} (only missing shards are computed)"

        def add(kind: str, path: Path, msg: str, fix: str = rebuild) -> None:
            problems.append(Problem(kind, ds, ex, key, path, msg, fix))

        spec = None
        if not (fdir / SPEC_FILE).is_file():
            add("missing-spec", fdir / SPEC_FILE, f"feature set {ds}/{ex}/{key} has no {SPEC_FILE}",
                f"remove {fdir} or re-extract the features of {ds}")
        else:
            spec = _spec(store, ds, ex, key)
            if spec is None or not isinstance(spec.get("n_shards"), int):
                add("missing-spec", fdir / SPEC_FILE, f"{SPEC_FILE} of {ds}/{ex}/{key} is unreadable or lacks n_shards")
                spec = None
        n_expected = spec["n_shards"] if spec else None
        present: set[int] = set()
        for i, n, path in _shard_files(fdir):
            if n_expected is not None and (n != n_expected or i >= n):
                add("stray-shard", path, f"shard {path.name} does not belong to a {n_expected}-shard set",
                    f"delete {path}")
                continue
            present.add(i)
            try:
                sh = read_shard(path)
            except CacheError as exc:
                add("unreadable", path, str(exc))
                continue
            if sh.attrs.get("key") != key:
                add("key-mismatch", path, f"shard says key {sh.attrs.get('key')!r} but lives in folder {key!r}")
            stored = sh.attrs.get("checksum")
            if stored != sh.checksum():
                add("checksum", path, "content checksum does not match: the data was altered after writing")
            changed = _media_changed(sh)
            if changed:
                add("media-changed", path, changed, f"re-extract the failed utterances of {ds} (a feature run "
                    "that retries failed utterances recomputes only these shards)")
        if n_expected is not None:
            for i in sorted(set(range(n_expected)) - present):
                add("missing-shard", fdir / f"shard-{i:05d}-of-{n_expected:05d}.h5",
                    f"shard {i} of {n_expected} of {ds}/{ex}/{key} is missing",
                    f"re-extract the features of {ds}: only the missing shards are computed")
    for ds in [dataset] if dataset is not None else store.datasets():
        try:
            lock = store.read_lock(ds)
        except CacheError as exc:
            problems.append(Problem("dangling-lock", ds, None, None, store.lock_path(ds), str(exc),
                                    f"delete {store.lock_path(ds)} and re-extract the features of {ds}"))
            continue
        for slot, entry in sorted(lock.items()):
            ex, key = str(entry.get("extractor")), str(entry.get("key"))
            if (ds, ex, key) not in seen:
                problems.append(Problem("dangling-lock", ds, ex, key, store.lock_path(ds),
                                        f"slot {slot!r} is locked to {ex}/{key}, which does not exist",
                                        f"re-extract slot {slot!r} of {ds}"))
    return problems


def gc(store: FeatureStore, *, dry_run: bool = True, grace_s: float = 600.0) -> list[Path]:
    """Feature sets no lock refers to, plus stale temp files; removed only when dry_run is False.

    Never collected: a set a live feature run holds (its run lock, `cache/runlock.py`: held from planning
    until the slots are locked, however long the run), anything written in the last `grace_s` seconds
    (a run from before run locks existed), anything reached through a symlink (it may point out of
    the cache), and any name the store does not make. The root must carry the store's marker
    (cache/collect.py has the rules). Temp files of a dead writer on this host go at once, others after
    `grace_s`.
    """
    return _collect(store, dry_run=dry_run, grace_s=grace_s)


def du(store: FeatureStore) -> list[DiskUsage]:
    """Bytes per feature set, then one total row per dataset (manifest and reports included)."""
    out: list[DiskUsage] = []
    for ds in store.datasets():
        try:
            locked = {(str(e.get("extractor")), str(e.get("key"))) for e in store.read_lock(ds).values()}
        except CacheError:
            locked = set()
        for _, ex, key, fdir in iter_feature_sets(store, ds):
            size, files, _ = _tree_stats(fdir)
            out.append(DiskUsage(ds, ex, key, size, files, (ex, key) in locked))
        size, files, _ = _tree_stats(store.dataset_dir(ds))
        out.append(DiskUsage(ds, None, None, size, files, bool(locked)))
    return out


__all__ = ["DiskUsage", "FeatureSetInfo", "Problem", "PROBLEM_KINDS", "du", "gc", "human_bytes",
           "iter_feature_sets", "ls", "verify"]
