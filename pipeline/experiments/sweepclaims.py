"""Claims on sweep runs, so two sweeps into one directory never train a (config, seed) twice.

Each task's run dir gets the feature sets' run lock (cache/runlock.py: an advisory flock on `<run dir>/.run.lock`
holding the owner's pid, host, start time and argv). The sweep driver, not the worker, holds it: executors need
no locking, and the kernel drops the lock of a killed driver, so a dead sweep never blocks another.

A sweep first claims every pending task it can without waiting and trains those. Then, one at a time, it waits
for each task another process holds: when that process finished it, the run is reused; when it failed there
while we waited, its failure is adopted (the same settings fail the same way; rerunning the command retries);
when it was killed, this sweep trains it. While it waits it holds no other claim, so two sweeps never deadlock.
Every training start is recorded in the run's sweep_task.json (`attempts`), which shows what trained each run.
"""
from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import Any, Callable, Sequence

from mer_pipe.cache.runlock import Owner, RunLock

Log = Callable[[str], None]


class TaskClaims:
    """The run locks this sweep holds, by task key."""

    def __init__(self) -> None:
        self._locks: dict[str, RunLock] = {}

    def claim(self, tasks: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """(tasks claimed now, tasks another process holds), without waiting."""
        mine, theirs = [], []
        for task in tasks:
            lock = RunLock(task.out)
            if lock.try_acquire():
                self._locks[task.key] = lock
                mine.append(task)
            else:
                theirs.append(task)
        return mine, theirs

    def wait(self, task: Any, on_wait: Callable[[Owner | None], None]) -> None:
        """Block until `task` is ours (Ctrl-C works); `on_wait(owner)` once if someone holds it."""
        lock = RunLock(task.out)
        lock.acquire(on_wait)
        self._locks[task.key] = lock

    def release(self, task: Any) -> None:
        lock = self._locks.pop(task.key, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for key in list(self._locks):
            self._locks.pop(key).release()


def now() -> str:
    """UTC ISO time with microseconds: attempts' `started` / `ended` compare as strings."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def adopted_failure(attempts: list[dict[str, Any]], since: str) -> dict[str, Any] | None:
    """The last recorded attempt when another process failed it after `since` (this sweep's start)."""
    last = attempts[-1] if attempts else {}
    mine = (last.get("pid"), last.get("host")) == (os.getpid(), socket.gethostname())
    if not mine and last.get("state") == "failed" and str(last.get("ended", "")) >= since:
        return last
    return None


def who(owner: Owner | None) -> str:
    return owner.describe() if owner is not None else "another process"


def read_attempts(run_dir: Path, key: str, read_json: Callable[[Path], Any], task_file: str) -> list[dict[str, Any]]:
    """The attempts recorded for this task key in run_dir (a different key's record starts over)."""
    ident = read_json(Path(run_dir) / task_file)
    if not isinstance(ident, dict) or ident.get("key") != key or not isinstance(ident.get("attempts"), list):
        return []
    return [a for a in ident["attempts"] if isinstance(a, dict)]
