"""The feature store: paths, shard bookkeeping, specs, the per-dataset lock file and loading.

Layout under the root (`--cache-dir`, else $MER_PIPE_CACHE, else ~/.cache/mer-pipe):
  <root>/<dataset>/lock.json                                  slot -> {"extractor", "key", "dim", ...}
  <root>/<dataset>/<extractor>/<key>/spec.json                what was extracted, how, how many shards
  <root>/<dataset>/<extractor>/<key>/shard-00003-of-00016.h5  contiguous manifest slices, 0-based index
The lock is the only link between extraction and training: `cache.loading.load_table` follows it.
Loading (`cache.loading.load_table`) and maintenance (`cache.maintenance`: ls, verify, gc, du) are
functions over a store; they import this module, never the other way round.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mer_pipe.common.errors import CacheError, ConfigError
from mer_pipe.common.files import write_json_atomic

if TYPE_CHECKING:  # numpy only for annotations: importing the store stays light
    import numpy as np

LOCK_FILE = "lock.json"
SPEC_FILE = "spec.json"
LOCK_FIELDS = ("extractor", "key", "dim")
SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.h5$")
KEY_RE = re.compile(r"^[0-9a-f]{16}$")  # cache.keys.feature_key: 16 hex digits
# Written into the root when the store first writes there: `cache gc` deletes only under a marked root.
MARKER_FILE = ".mer-pipe-cache.json"
MARKER_FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def default_root() -> Path:
    """$MER_PIPE_CACHE if set, else ~/.cache/mer-pipe."""
    env = os.environ.get("MER_PIPE_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/mer-pipe").expanduser()


def shard_name(i: int, n: int) -> str:
    """`shard-00003-of-00016.h5` for index i (0-based) of n shards."""
    if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n <= 99999):
        raise ConfigError(f"shard index {i!r} of {n!r} is out of range; need 0 <= i < n <= 99999")
    return f"shard-{i:05d}-of-{n:05d}.h5"


def check_name(kind: str, value: str) -> str:
    """Dataset, extractor, key and slot names become path parts: refuse separators, '..' and blanks."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(
            f"{kind} name {value!r} is not usable in the cache; use letters, digits and . _ + = - "
            "(no '/', no leading '.', not empty)"
        )
    return value


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise CacheError(f"{what} {path} is unreadable ({exc}); delete it and rerun the command that wrote it") from None


@dataclass
class FeatureTable:
    """The features of one slot of one dataset, in manifest order.

    values: [N, D] (pooled), [N, T, D] (fixed-length sequence) or a list of N [T_i, D] arrays (ragged),
    float32; failed rows are zeros (length 0 when ragged) with valid[i] False and reasons[id] saying why.
    """

    dataset: str
    slot: str
    extractor: str
    key: str
    dim: int
    layout: str
    ids: list[str]
    values: np.ndarray | list[np.ndarray]
    valid: np.ndarray
    reasons: dict[str, str]
    spec: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_failed(self) -> int:
        return int((~self.valid).sum())

    def index(self) -> dict[str, int]:
        """id -> row."""
        return {uid: i for i, uid in enumerate(self.ids)}


class FeatureStore:
    """Content-addressed feature sets under one root folder. Cheap to construct; touches nothing until used."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    # ---- marker ------------------------------------------------------------------------------
    @property
    def marker_path(self) -> Path:
        return self.root / MARKER_FILE

    def marked(self) -> bool:
        """The root carries the store's marker (a plain file, not a symlink): it is a cache gc may clean."""
        p = self.marker_path
        return p.is_file() and not p.is_symlink()

    def mark(self) -> Path:
        """Write the marker (format version, creation time) unless present. Every write of the store calls
        this, so a cache made before markers existed gets one the next time it is written to."""
        if not self.marked():
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.marker_path, {
                "what": "mer-pipe feature cache", "format": MARKER_FORMAT,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        return self.marker_path

    # ---- paths -------------------------------------------------------------------------------
    def dataset_dir(self, dataset: str) -> Path:
        return self.root / check_name("dataset", dataset)

    def feature_dir(self, dataset: str, extractor: str, key: str) -> Path:
        return self.dataset_dir(dataset) / check_name("extractor", extractor) / check_name("key", key)

    def shard_path(self, dataset: str, extractor: str, key: str, i: int, n: int) -> Path:
        return self.feature_dir(dataset, extractor, key) / shard_name(i, n)

    def existing_shards(self, dataset: str, extractor: str, key: str, n: int) -> set[int]:
        """Indices of the complete shards of an n-shard set. Temp files never count: shards appear by rename."""
        fdir = self.feature_dir(dataset, extractor, key)
        found: set[int] = set()
        try:
            names = os.listdir(fdir)
        except FileNotFoundError:
            return found
        for name in names:
            m = SHARD_RE.match(name)
            if m and int(m.group(2)) == n and int(m.group(1)) < n and (fdir / name).is_file():
                found.add(int(m.group(1)))
        return found

    # ---- spec --------------------------------------------------------------------------------
    def write_spec(self, dataset: str, extractor: str, key: str, spec: Mapping[str, Any]) -> Path:
        """Write spec.json (its schema: cache/featureset.py `set_spec`, the one writer of feature sets).
        Fills `key`, `extractor`, `dataset` and `created` when absent; refuses a wrong key."""
        data = dict(spec)
        for name, value in (("key", key), ("extractor", extractor), ("dataset", dataset)):
            if data.setdefault(name, value) != value:
                raise CacheError(f"spec {name} {data[name]!r} does not match the feature set {dataset}/{extractor}/{key}")
        data.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        path = self.feature_dir(dataset, extractor, key) / SPEC_FILE
        self.mark()
        try:
            write_json_atomic(path, data)
        except TypeError as exc:
            raise CacheError(f"spec for {dataset}/{extractor}/{key} is not JSON-serialisable: {exc}") from None
        return path

    def read_spec(self, dataset: str, extractor: str, key: str) -> dict[str, Any]:
        path = self.feature_dir(dataset, extractor, key) / SPEC_FILE
        try:
            return read_json(path, "spec")
        except FileNotFoundError:
            raise CacheError(
                f"feature set {dataset}/{extractor}/{key} has no {SPEC_FILE} ({path}); "
                "it was never completed or was deleted; extract the features again"
            ) from None

    # ---- lock --------------------------------------------------------------------------------
    def lock_path(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / LOCK_FILE

    def read_lock(self, dataset: str) -> dict[str, dict[str, Any]]:
        """slot -> {"extractor", "key", "dim", ...}; empty when the dataset has no lock yet."""
        path = self.lock_path(dataset)
        try:
            lock = read_json(path, "lock file")
        except FileNotFoundError:
            return {}
        if not isinstance(lock, dict) or not all(isinstance(v, dict) for v in lock.values()):
            raise CacheError(f"lock file {path} is malformed (expected slot -> entry); delete it and extract the features again")
        return lock

    @contextmanager
    def _lock_guard(self, dataset: str) -> Iterator[None]:
        # Two feature runs (say text and audio) may set their slots at the same time: serialise the
        # read-modify-write so neither update is lost.
        import fcntl

        ddir = self.dataset_dir(dataset)
        ddir.mkdir(parents=True, exist_ok=True)
        self.mark()
        with open(ddir / f".{LOCK_FILE}.guard", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def set_lock(self, dataset: str, slot: str, entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Point `slot` at a feature set (atomic write); returns the new lock."""
        check_name("slot", slot)
        missing = [f for f in LOCK_FIELDS if f not in entry]
        if missing:
            raise CacheError(f"lock entry for slot {slot!r} lacks {missing}; it needs {', '.join(LOCK_FIELDS)}")
        fdir = self.feature_dir(dataset, str(entry["extractor"]), str(entry["key"]))
        if not fdir.is_dir():
            raise CacheError(f"cannot lock slot {slot!r} of {dataset!r} to {fdir}: no such feature set; extract it first")
        with self._lock_guard(dataset):
            lock = self.read_lock(dataset)
            lock[slot] = dict(entry)
            write_json_atomic(self.lock_path(dataset), lock)
        return lock

    def unset_lock(self, dataset: str, slot: str) -> dict[str, dict[str, Any]]:
        """Remove `slot` from the lock (its feature set becomes collectable by gc)."""
        with self._lock_guard(dataset):
            lock = self.read_lock(dataset)
            if slot not in lock:
                raise CacheError(f"slot {slot!r} is not locked for {dataset!r}; locked: {', '.join(sorted(lock)) or '(none)'}")
            del lock[slot]
            write_json_atomic(self.lock_path(dataset), lock)
        return lock

    # ---- listing ------------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        """Dataset folders under the root (sorted)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))
