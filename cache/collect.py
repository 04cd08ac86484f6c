"""`cache gc` for feature sets and temp files: what may go, and deleting it without ever leaving the cache.

Rules (each guards against a way a careless or hostile layout could make gc delete what is not its own):
* the root must carry the store's marker (`FeatureStore.mark`, written by every store write): a folder
  that was never a cache (a project folder passed by mistake) is refused before anything is looked at;
* nothing is reached through a symlink: symlinked dataset, extractor or key folders and symlinked files
  are skipped, and every deletion re-checks that no part of its path below the root is a symlink;
* only names the store itself makes are deleted: key folders (16 hex digits) holding a spec or shards,
  and inside them only shards, spec.json, the run lock, `.verified.json` and temp files; temp files
  `<name>.tmp-<host>-<pid>-<hex>` (common.files.temp_name). A key folder that still holds anything
  else after that is kept (its own files are gone) and reported by the caller as not removed.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

from mer_pipe.common.errors import CacheError
from mer_pipe.common.files import TMP_MARK, temp_writer_dead

from .runlock import LOCK_NAME, RunLock, holder
from .store import KEY_RE, MARKER_FILE, SHARD_RE, SPEC_FILE, FeatureStore

# `<final>.tmp-<host>-<pid>-<hex>` as common.files.temp_name writes them
TEMP_RE = re.compile(r"^.+" + re.escape(TMP_MARK) + r"[A-Za-z0-9._-]+-\d+-[0-9a-f]{4,32}$")
SET_FILES = (SPEC_FILE, LOCK_NAME, ".verified.json")


class UnmarkedCache(CacheError):
    """gc was pointed at a folder without the store's marker. Carries the root so the CLI can name the
    command that marks a real cache."""

    def __init__(self, root: Path) -> None:
        super().__init__(f"{root} is not marked as a mer-pipe cache (no {MARKER_FILE}); gc deletes nothing there")
        self.root = root


def inside(path: Path, root: Path) -> bool:
    """`path` lies under `root` and no part of it below `root` is a symlink."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    p = root
    for part in rel.parts:
        p = p / part
        if p.is_symlink():
            return False
    return True


def require_marker(store: FeatureStore) -> None:
    if not store.marked():
        raise UnmarkedCache(store.root)


def is_temp(name: str) -> bool:
    return bool(TEMP_RE.match(name))


def _own_file(name: str) -> bool:
    return bool(SHARD_RE.match(name)) or name in SET_FILES or is_temp(name)


def _is_feature_set(path: Path) -> bool:
    if (path / SPEC_FILE).is_file():
        return True
    try:
        return any(SHARD_RE.match(n) or TMP_MARK in n for n in os.listdir(path))
    except OSError:
        return False


def _subdirs(path: Path, follow_symlinks: bool) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_dir()
                  and (follow_symlinks or not p.is_symlink()))


def iter_feature_sets(store: FeatureStore, dataset: str | None = None, *,
                      follow_symlinks: bool = True) -> Iterator[tuple[str, str, str, Path]]:
    """(dataset, extractor, key, folder) of every folder that holds a spec or shards; other folders are
    never touched, so files the pipeline keeps next to the manifest are safe from gc.
    `follow_symlinks=False` (gc) skips symlinked dataset, extractor and key folders: they may lead out
    of the cache."""
    datasets = [dataset] if dataset is not None else store.datasets()
    for ds in datasets:
        ddir = store.dataset_dir(ds)
        if not ddir.is_dir() or (not follow_symlinks and ddir.is_symlink()):
            continue
        for edir in _subdirs(ddir, follow_symlinks):
            for kdir in _subdirs(edir, follow_symlinks):
                if _is_feature_set(kdir):
                    yield ds, edir.name, kdir.name, kdir


def _remove_set(fdir: Path, root: Path) -> bool:
    """Delete the store's files of a feature set while holding its run lock, then the folder when that
    leaves it empty. False when a run holds it, it is not a plain folder inside the cache, or it holds
    files the store did not write (those are kept, with the folder)."""
    if not inside(fdir, root) or not fdir.is_dir():
        return False
    lock = RunLock(fdir, write_record=False)
    if not lock.try_acquire():
        return False
    try:
        for entry in os.scandir(fdir):
            if entry.name != LOCK_NAME and _own_file(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
    finally:
        lock.release()
    try:
        (fdir / LOCK_NAME).unlink(missing_ok=True)
        fdir.rmdir()
    except OSError:
        return False
    try:
        fdir.parent.rmdir()  # the extractor folder, once it holds no other key
    except OSError:
        pass
    return True


def _newest(path: Path) -> float:
    newest = path.lstat().st_mtime
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def feature_set_victims(store: FeatureStore, grace_s: float, now: float) -> list[Path]:
    """Unlocked, unheld feature sets older than `grace_s`, reached without any symlink."""
    victims: list[Path] = []
    locks: dict[str, set[tuple[str, str]]] = {}
    for ds, ex, key, fdir in iter_feature_sets(store, follow_symlinks=False):
        if not KEY_RE.match(key) or not inside(fdir, store.root):
            continue
        if ds not in locks:
            try:
                locks[ds] = {(str(e.get("extractor")), str(e.get("key"))) for e in store.read_lock(ds).values()}
            except CacheError:
                locks[ds] = {("*", "*")}  # an unreadable lock protects everything until it is fixed
        if (ex, key) in locks[ds] or ("*", "*") in locks[ds] or holder(fdir)[0]:
            continue
        if now - _newest(fdir) >= grace_s:
            victims.append(fdir)
    return victims


def temp_victims(store: FeatureStore, grace_s: float, now: float, skip: set[Path]) -> list[Path]:
    """The store's own temp files (never symlinks, never below a symlinked folder: os.walk does not
    follow them) of a dead writer on this host, or older than `grace_s`."""
    out: list[Path] = []
    for dirpath, dirnames, names in os.walk(store.root):
        here = Path(dirpath)
        if here in skip:
            dirnames[:] = []
            continue
        for name in names:  # temp files only (folders never pass is_file)
            p = here / name
            if not is_temp(name) or p.is_symlink() or not p.is_file():
                continue
            try:
                old = now - p.lstat().st_mtime >= grace_s
            except FileNotFoundError:
                continue
            if old or temp_writer_dead(name):
                out.append(p)
    return out


def gc(store: FeatureStore, *, dry_run: bool = True, grace_s: float = 600.0) -> list[Path]:
    """Feature sets no lock refers to, plus stale temp files; removed only when dry_run is False.
    Returns exactly what was (or would be) removed. Raises UnmarkedCache for a root without the marker."""
    require_marker(store)
    now = time.time()
    sets = feature_set_victims(store, grace_s, now)
    victims = sets + temp_victims(store, grace_s, now, set(sets))
    if dry_run:
        return sorted(victims)
    removed = []
    for p in victims:
        if p in sets:
            if _remove_set(p, store.root):
                removed.append(p)
        elif inside(p, store.root) and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return sorted(removed)


def remove_tree(path: Path, root: Path) -> bool:
    """rmtree a store-made folder (checkpoint, work folder) only when reached without a symlink;
    shutil.rmtree itself never follows links inside it."""
    if not inside(path, root) or path.is_symlink() or not path.is_dir():
        return False
    shutil.rmtree(path)
    return True


__all__ = ["TEMP_RE", "UnmarkedCache", "gc", "inside", "is_temp", "iter_feature_sets", "remove_tree", "require_marker"]
