"""Atomic file writes: every file mer-pipe writes appears complete by rename, or not at all.

Temp names carry the writer's host and pid (`<final>.tmp-<host>-<pid>-<random>`), so concurrent
writers never collide and `cache gc` can tell a dead writer's leftovers from a live one's. A full
disk (ENOSPC) becomes one `DiskFullError` naming the file; the temp file is removed. A temp file can
still be left behind when its writer is killed mid-write; the next successful write of the same file
removes such leftovers of dead writers on this host (and `cache gc` removes any).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .commands import command
from .errors import DiskFullError

TMP_MARK = ".tmp-"


def temp_name(final_name: str) -> str:
    """`<final>.tmp-<host>-<pid>-<random>`: unique per writer."""
    return f"{final_name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temp_writer_dead(name: str) -> bool:
    """True when temp file `name` was written on this host by a process that no longer exists."""
    try:
        host, pid, _ = name.split(TMP_MARK, 1)[1].rsplit("-", 2)
        pid_i = int(pid)
    except (IndexError, ValueError):
        return False
    if host != socket.gethostname() or pid_i == os.getpid():
        return False
    try:
        os.kill(pid_i, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_dead_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove `<path>.tmp-*` files left by dead writers on this host; returns what was removed."""
    path = Path(path)
    prefix = path.name + TMP_MARK
    removed = []
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        if temp_writer_dead(name):
            try:
                (path.parent / name).unlink()
                removed.append(path.parent / name)
            except OSError:
                pass
    return removed


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_identity(path: str | os.PathLike[str], *, content_hash: bool = False) -> dict[str, Any]:
    """{"path", "exists", "size", "mtime_ns"} of a file (plus "sha256" when asked): what a failure
    record keeps so a later check can tell whether the file changed since."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path), "exists": False}
    ident: dict[str, Any] = {"path": str(path), "exists": True, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if content_hash and path.is_file():
        try:
            ident["sha256"] = sha256_file(path)
        except OSError:
            pass
    return ident


def identity_changed(recorded: dict[str, Any]) -> bool:
    """Whether the file a `file_identity` record describes differs now (content hash when recorded)."""
    now = file_identity(recorded.get("path", ""), content_hash="sha256" in recorded)
    if now["exists"] != recorded.get("exists", True):
        return True
    if not now["exists"]:
        return False
    if "sha256" in recorded and "sha256" in now:
        return now["sha256"] != recorded["sha256"]
    return (now["size"], now["mtime_ns"]) != (recorded.get("size"), recorded.get("mtime_ns"))


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
        remove_dead_temps(path)  # e.g. the leftover of a writer killed while the disk was full
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on the device while writing {path}; free space (e.g. "
                                f"`{command('cache', 'gc', yes=True)}`) or point --cache-dir/--out elsewhere, then rerun: "
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


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (B, KiB, MiB, GiB), for sizes in listings."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable
