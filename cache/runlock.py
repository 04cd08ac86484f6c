"""Per-feature-set run locks: one feature run at a time builds a feature set; gc keeps what a live run holds.

`<root>/<dataset>/<extractor>/<key>/.run.lock` is an advisory `fcntl.flock` lock held by the feature run
(the process that planned the set, not its workers) from planning until the set is complete and its
slots are locked. The file's content is a JSON record of the owner: `{"pid", "host", "started", "argv"}`.

* The kernel drops a lock when its process dies (SIGKILL included), so a dead owner never blocks anyone;
  its record stays in the file, and the next owner reports that it took over from it.
* The lock file is never deleted while in use: deleting a flock'ed file lets two processes each lock a
  different inode. gc deletes a feature set only while holding its lock itself, and a run that acquires
  a lock checks that the file it locked is still the one at the path (otherwise it locks again).
* On NFS, Linux maps flock to POSIX byte-range locks, which also work across machines.

Why one lock per feature set and not per-shard claims: the driver holds it, so executors and workers
(serial, a local dask cluster, a remote scheduler) need no locking at all; it also covers the time
before a set's first shard is written (a planned, queued stage), which is what gc must respect; and a
second run that waits loses little, since it would only duplicate the first run's work. Two runs that
want different sets of one dataset still run side by side.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mer_pipe.common.errors import CacheError

LOCK_NAME = ".run.lock"


@dataclass(frozen=True)
class Owner:
    """Who holds (or last held) a feature set's run lock."""

    pid: int | None
    host: str | None
    started: str | None
    argv: str = ""

    @classmethod
    def me(cls) -> "Owner":
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), now, " ".join(sys.argv)[:300])

    @classmethod
    def parse(cls, text: str) -> "Owner | None":
        try:
            d = json.loads(text)
        except ValueError:
            return None  # empty (released) or being written
        if not isinstance(d, dict):
            return None
        pid = d.get("pid")
        return cls(pid if isinstance(pid, int) else None, d.get("host"), d.get("started"), str(d.get("argv", "")))

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "started": self.started, "argv": self.argv})

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        since = f", started {self.started}" if self.started else ""
        return f"{who}{where}{since}"


@dataclass(frozen=True)
class Acquired:
    """How a lock was obtained: `waited_for` the owner we queued behind, `took_over` a dead owner's
    leftover record, `replan` True when the set may have changed meanwhile (we waited, or the folder
    was removed and recreated), so the caller should look at its shards again."""

    waited_for: Owner | None = None
    took_over: Owner | None = None
    replan: bool = False


def lock_path(feature_dir: str | os.PathLike[str]) -> Path:
    return Path(feature_dir) / LOCK_NAME


def _flock(fd: int, blocking: bool) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks).decode("utf-8", "replace")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


class RunLock:
    """The run lock of one feature set. `acquire()` blocks (polling, so Ctrl-C works) until it holds the
    lock; `try_acquire()` does not block. Use as a context manager or call `release()`."""

    def __init__(self, feature_dir: str | os.PathLike[str], *, write_record: bool = True) -> None:
        self.dir = Path(feature_dir)
        self.path = lock_path(self.dir)
        self._fd: int | None = None
        self._write_record = write_record

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> tuple[int, bool]:
        """(fd, created folder) for the lock file; creates the folder when missing (gc removed it)."""
        created = not self.dir.is_dir()
        try:
            if created:
                self.dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664), created
        except PermissionError:
            raise CacheError(f"cannot open the run lock {self.path} for writing (permission denied); a feature run "
                             "needs write access to the cache: use a cache you can write (--cache-dir) or ask its "
                             "owner for group write permission") from None

    def _take(self, blocking: bool) -> tuple[bool, Owner | None, bool]:
        """One attempt: (got it, the previous record, folder recreated)."""
        fd, created = self._open()
        try:
            if not _flock(fd, blocking):
                os.close(fd)
                return False, None, created
            if not _same_file(fd, self.path):  # gc removed the set between our open and our lock
                os.close(fd)
                got, previous, _ = self._take(blocking)
                return got, previous, True
            previous = Owner.parse(_read(fd))
            if self._write_record:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, Owner.me().to_json().encode())
            self._fd = fd
            return True, previous, created
        except BaseException:
            if self._fd != fd:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never blocks."""
        if self._fd is not None:
            return True
        got, _, _ = self._take(False)
        return got

    def acquire(self, on_wait: Callable[[Owner | None], None] | None = None, poll_s: float = 0.5) -> Acquired:
        """Block until the lock is ours. `on_wait(owner)` is called once if another process holds it."""
        if self._fd is not None:
            return Acquired()
        waited_for: Owner | None = None
        waited = recreated = False
        while True:
            got, previous, created = self._take(False)
            recreated |= created
            if got:
                break
            if not waited:
                waited = True
                waited_for = self.owner()
                if on_wait is not None:
                    on_wait(waited_for)
            time.sleep(poll_s)
        took_over = None
        if previous is not None and previous.pid is not None and not waited:
            # A record left behind: its process ended without releasing (killed), or it released but
            # crashed before clearing the record. Either way the lock was free; say whose it was.
            if (previous.pid, previous.host) != (os.getpid(), socket.gethostname()):
                took_over = previous
        return Acquired(waited_for=waited_for, took_over=took_over, replan=waited or recreated)

    def owner(self) -> Owner | None:
        """The record in the lock file (the holder while it is held), read without locking."""
        try:
            return Owner.parse(self.path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return None

    def release(self) -> None:
        """Clear the record and unlock (the file stays: see the module docstring)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._write_record:
                os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(feature_dir: str | os.PathLike[str]) -> tuple[bool, Owner | None]:
    """(held, record): whether a live process holds the set's run lock now, and its record if readable."""
    lock = RunLock(feature_dir, write_record=False)
    if not lock.path.is_file():
        return False, None
    if lock.try_acquire():
        lock.release()
        return False, None
    return True, lock.owner()
