"""Fine-tuned encoder checkpoints in the store: layout, listing, verification and collection.

Layout (next to the feature sets of a dataset; never mistaken for one: no spec.json, no shards):
  <root>/<dataset>/finetune/<key>/            a complete checkpoint (save_pretrained encoder, pre-processor,
                                              classifier_head.pt, finetune.json with the training log)
  <root>/<dataset>/finetune/.work-<key>/      a fine-tune in progress (resumable state); never read by extraction
  <root>/<dataset>/finetune/.lock-<key>       flock held by the process training <key>
A checkpoint folder appears by one rename of a finished folder, so it exists whole or not at all.

A feature set built on a checkpoint names its key in spec.json (`upstream`, and `finetune_keys` for a
cross-fitted set); gc keeps every checkpoint that a locked feature set names.
"""
from __future__ import annotations

import fcntl
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from mer_pipe.common.errors import CacheError
from mer_pipe.common.files import human_bytes

from .store import FeatureStore, check_name, read_json

FINETUNE_DIR = "finetune"
META_FILE = "finetune.json"
WORK_PREFIX = ".work-"
LOCK_PREFIX = ".lock-"


def finetune_root(store: FeatureStore, dataset: str) -> Path:
    return store.dataset_dir(dataset) / FINETUNE_DIR


def checkpoint_dir(store: FeatureStore, dataset: str, key: str) -> Path:
    return finetune_root(store, dataset) / check_name("key", key)


def work_dir(store: FeatureStore, dataset: str, key: str) -> Path:
    return finetune_root(store, dataset) / f"{WORK_PREFIX}{check_name('key', key)}"


def is_complete(path: Path) -> bool:
    """A checkpoint extraction may use: the folder exists and its finetune.json says complete."""
    try:
        return bool(read_json(path / META_FILE, "fine-tune record").get("complete"))
    except (FileNotFoundError, CacheError, AttributeError):
        return False


def content_digest(path: Path) -> str:
    """sha256 over the names and contents of every file except finetune.json (which records this digest)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != META_FILE):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


class TrainingLock:
    """Exclusive flock on `.lock-<key>` while a process trains <key>: a second process waits, then finds
    the checkpoint done. The kernel drops the lock when its holder dies (SIGKILL included)."""

    def __init__(self, store: FeatureStore, dataset: str, key: str) -> None:
        self.store = store
        self.path = finetune_root(store, dataset) / f"{LOCK_PREFIX}{check_name('key', key)}"
        self._fh: Any = None

    def __enter__(self) -> "TrainingLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.store.mark()
        self._fh = open(self.path, "a")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def _held(lock_path: Path) -> bool:
    """Whether some process holds the training lock now."""
    if not lock_path.exists():
        return False
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


# --- the train/dev report a checkpoint records (finetune.json "scores"; issue 19) ---------------------------
def _f1(part: Any) -> float | None:
    if not isinstance(part, Mapping):
        return None
    v = part.get("weighted_f1")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass(frozen=True)
class EncoderScores:
    """One checkpoint's W-F1 (fractions): on its own training utterances, dev, and (fold encoders) held-out."""

    key: str
    fold: tuple[int, int] | None
    train: float | None
    dev: float | None
    heldout: float | None
    n_heldout: int
    best_epoch: int | None
    epochs: int | None

    @property
    def gap(self) -> float | None:
        return None if self.train is None or self.dev is None else self.train - self.dev


def scores_of(meta: Mapping[str, Any]) -> EncoderScores:
    """The scores recorded in a finetune.json (None where a record predates them)."""
    s = meta.get("scores") if isinstance(meta.get("scores"), Mapping) else {}
    rec = meta.get("record") if isinstance(meta.get("record"), Mapping) else {}
    dev = _f1(s.get("dev")) if s.get("dev") is not None else _f1({"weighted_f1": rec.get("dev_weighted_f1")})
    held = s.get("heldout") if isinstance(s.get("heldout"), Mapping) else {}
    fold = meta.get("fold")
    cfg = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    return EncoderScores(key=str(meta.get("key", "")), fold=tuple(fold) if isinstance(fold, list) else None,
                         train=_f1(s.get("train")), dev=dev, heldout=_f1(held), n_heldout=int(held.get("n") or 0),
                         best_epoch=rec.get("best_epoch"), epochs=cfg.get("epochs"))


@dataclass(frozen=True)
class CheckpointInfo:
    dataset: str
    key: str
    complete: bool
    meta: dict[str, Any]
    used_by: tuple[str, ...]  # "slot (extractor/key)" of locked feature sets built on it
    bytes: int
    path: Path

    def row(self) -> dict[str, str]:
        """One `cache ls` row: the encoder's W-F1 on its own training utterances next to dev and their gap (the
        memorisation its features carry, issue 19), and for a cross-fit fold encoder its held-out (out-of-fold) W-F1."""
        m = self.meta
        rec = m.get("record") or {}
        s = scores_of(m)
        fold = m.get("fold")
        pct = lambda v, sign="": "-" if v is None else f"{100 * v:{sign}.2f}"  # noqa: E731
        return {
            "dataset": self.dataset, "checkpoint": self.key, "slot": str(m.get("slot", "-")),
            "base": str(m.get("base_name", "-")), "fold": f"{fold[0] + 1}/{fold[1]}" if fold else "all",
            "epochs": f"{rec.get('best_epoch', '-')}/{(m.get('config') or {}).get('epochs', '-')}",
            "train W-F1": pct(s.train), "dev W-F1": pct(s.dev), "gap": pct(s.gap, "+"),
            "held-out W-F1": pct(s.heldout),
            "used by": ",".join(self.used_by) or "-", "size": human_bytes(self.bytes),
        }


def _size(path: Path) -> tuple[int, float]:
    size, newest = 0, path.stat().st_mtime if path.exists() else 0.0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return size, newest


def dependents(store: FeatureStore, dataset: str) -> dict[str, list[str]]:
    """checkpoint key -> locked feature sets ("slot (extractor/key)") whose spec names it."""
    out: dict[str, list[str]] = {}
    try:
        lock = store.read_lock(dataset)
    except CacheError:
        return {"*": ["(unreadable lock file)"]}
    for slot, entry in sorted(lock.items()):
        ex, key = str(entry.get("extractor")), str(entry.get("key"))
        try:
            spec = store.read_spec(dataset, ex, key)
        except (CacheError, FileNotFoundError):
            continue
        keys = list(spec.get("finetune_keys") or []) + ([spec["upstream"]] if spec.get("upstream") else [])
        for k in dict.fromkeys(keys):
            out.setdefault(str(k), []).append(f"{slot} ({ex}/{key})")
    return out


def iter_checkpoints(store: FeatureStore, dataset: str | None = None) -> Iterator[tuple[str, str, Path]]:
    for ds in [dataset] if dataset is not None else store.datasets():
        froot = finetune_root(store, ds)
        if not froot.is_dir():
            continue
        for p in sorted(froot.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                yield ds, p.name, p


def ls(store: FeatureStore, dataset: str | None = None) -> list[CheckpointInfo]:
    out = []
    deps: dict[str, dict[str, list[str]]] = {}
    for ds, key, path in iter_checkpoints(store, dataset):
        d = deps.setdefault(ds, dependents(store, ds))
        try:
            meta = read_json(path / META_FILE, "fine-tune record")
        except (FileNotFoundError, CacheError):
            meta = {}
        out.append(CheckpointInfo(ds, key, bool(meta.get("complete")), meta if isinstance(meta, dict) else {},
                                  tuple(d.get(key, [])), _size(path)[0], path))
    return out


@dataclass(frozen=True)
class CheckpointProblem:
    kind: str  # "missing-record" | "checksum" | "key-mismatch" | "missing-checkpoint"
    dataset: str
    key: str
    path: Path
    message: str
    fix: str

    def row(self) -> dict[str, str]:
        return {"kind": self.kind, "path": str(self.path), "message": self.message, "fix": self.fix}


def verify(store: FeatureStore, dataset: str | None = None) -> list[CheckpointProblem]:
    """Every checkpoint: a readable record naming its own key, files matching the recorded digest."""
    problems = []
    for ds, key, path in iter_checkpoints(store, dataset):
        redo = f"delete {path} and rerun the feature run that fine-tunes it (it is retrained)"
        try:
            meta = read_json(path / META_FILE, "fine-tune record")
        except (FileNotFoundError, CacheError) as exc:
            problems.append(CheckpointProblem("missing-record", ds, key, path / META_FILE,
                                              f"no readable {META_FILE} ({type(exc).__name__})", redo))
            continue
        if meta.get("key") != key:
            problems.append(CheckpointProblem("key-mismatch", ds, key, path,
                                              f"{META_FILE} says key {meta.get('key')!r}", redo))
        if meta.get("content_sha256") != content_digest(path):
            problems.append(CheckpointProblem("checksum", ds, key, path,
                                              "checkpoint files changed after fine-tuning", redo))
    for ds in [dataset] if dataset is not None else store.datasets():
        have = {k for _, k, p in iter_checkpoints(store, ds) if is_complete(p)}
        for key, users in dependents(store, ds).items():
            if key != "*" and key not in have:
                # features stay usable (they are stored); only re-extraction would need to retrain
                problems.append(CheckpointProblem(
                    "missing-checkpoint", ds, key, checkpoint_dir(store, ds, key),
                    f"locked feature set(s) {', '.join(users)} were built on fine-tune {key}, which is gone",
                    "the features still load; rerun the feature run to retrain it if you want it back"))
    return problems


def problem(path: Path) -> str | None:
    """What makes the checkpoint at `path` unfit for reuse (None when sound): no complete record, a record
    for another key, or files that no longer match the digest recorded when it appeared."""
    try:
        meta = read_json(path / META_FILE, "fine-tune record")
    except (FileNotFoundError, CacheError):
        return f"{path / META_FILE} is missing or unreadable"
    if not isinstance(meta, dict) or not meta.get("complete"):
        return f"{path / META_FILE} does not record a complete fine-tune"
    if meta.get("key") != path.name:
        return f"{path / META_FILE} says key {meta.get('key')!r}, not {path.name!r}"
    if meta.get("content_sha256") != content_digest(path):
        return f"the files of {path} fail their checksum (changed after fine-tuning: corruption or an edit)"
    return None


def _plain_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def gc_victims(store: FeatureStore, *, grace_s: float = 600.0, now: float | None = None) -> list[Path]:
    """Checkpoints no locked feature set names, and abandoned work folders, older than `grace_s`.

    A checkpoint a locked feature set depends on is never a victim; nor is a work folder whose training
    lock is held (a fine-tune in progress), however old. Only names the store makes (`<key>`,
    `.work-<key>`) are considered, and nothing behind a symlink (dataset or finetune folder, entries).
    """
    from .collect import inside
    from .store import KEY_RE

    now = time.time() if now is None else now
    victims: list[Path] = []
    for ds in store.datasets():
        froot = finetune_root(store, ds)
        if not _plain_dir(froot) or not inside(froot, store.root):
            continue
        deps = dependents(store, ds)
        if "*" in deps:
            continue  # an unreadable lock protects everything until it is fixed
        for p in sorted(froot.iterdir()):
            if not _plain_dir(p):
                continue
            if p.name.startswith(WORK_PREFIX) and KEY_RE.match(p.name[len(WORK_PREFIX):]):
                key = p.name[len(WORK_PREFIX):]
                if _held(froot / f"{LOCK_PREFIX}{key}"):
                    continue
                if now - _size(p)[1] >= grace_s or not (froot / f"{LOCK_PREFIX}{key}").exists():
                    victims.append(p)
            elif KEY_RE.match(p.name) and p.name not in deps and now - _size(p)[1] >= grace_s:
                victims.append(p)
    return victims


def remove(paths: list[Path], root: Path) -> list[Path]:
    """Delete gc victims (re-checked: inside `root`, no symlink on the way) and their unheld training
    locks; returns exactly what was removed."""
    from .collect import remove_tree

    removed = []
    for p in paths:
        if not remove_tree(p, root):
            continue
        removed.append(p)
        key = p.name[len(WORK_PREFIX):] if p.name.startswith(WORK_PREFIX) else p.name
        lock = p.parent / f"{LOCK_PREFIX}{key}"
        if lock.is_file() and not lock.is_symlink() and not _held(lock) and not (p.parent / key).exists():
            lock.unlink(missing_ok=True)
            removed.append(lock)
    return removed


__all__ = ["CheckpointInfo", "CheckpointProblem", "EncoderScores", "FINETUNE_DIR", "META_FILE", "TrainingLock",
           "checkpoint_dir", "content_digest", "dependents", "gc_victims", "is_complete", "iter_checkpoints", "ls", "problem", "remove",
           "scores_of", "verify", "work_dir"]
