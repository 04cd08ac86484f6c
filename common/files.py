"""Atomic file writes: every file mer-pipe writes appears complete by rename, or not at all.

Temp names carry the writer's host and pid (`<final>.tmp-<host>-<pid>-<random>`), so concurrent
writers never collide and `cache gc` can tell a dead writer's leftovers from a live one's. A full
disk (ENOSPC) becomes one `DiskFullError` naming the file; the temp file is always removed.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import DiskFullError

TMP_MARK = ".tmp-"


def temp_name(final_name: str) -> str:
    """`<final>.tmp-<host>-<pid>-<random>`: unique per writer."""
    return f"{final_name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success flush it to disk and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    try:
        yield tmp
        _fsync(tmp)  # a power cut must not leave a complete-looking empty file after the rename
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on the device while writing {path}; free space (e.g. "
                                "`mer-pipe cache gc --yes`) or point --cache-dir/--out elsewhere, then rerun: "
                                "everything written before is kept") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int = 2, sort_keys: bool = True) -> None:
    """JSON (UTF-8, non-ASCII kept) written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")
