"""Writing files so that a failure never leaves a half-written one: each is complete or absent,
a set is replaced all at once or not at all, and an error (a full disk) names the file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FolderBusy", "figure_bytes", "folder_lock", "write_atomic", "write_files"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _stage(path: Path, data: bytes) -> str:
    """Write ``data`` to a new temporary file beside ``path``, flushed to disk, readable as a
    file created with the process's umask would be; return its name. On failure nothing is
    left and the OSError names ``path`` (not the temporary file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: the file is complete or absent (a temporary file
    in the same folder, flushed to disk, then renamed over ``path``). An OSError (a full
    disk) names ``path`` in its ``filename`` and leaves any earlier ``path`` as it was."""
    write_files({path: data})


def write_files(files: Mapping[Path, bytes]) -> None:
    """Replace several files as one set: every file is written in full to a temporary file
    first, and only when all of them are on disk are they renamed over their targets. If any
    write fails (a full disk), the temporary files are removed and no target is touched; the
    OSError names the file that could not be written."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(path, data), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def figure_bytes(fig: Any, fmt: str = "png", dpi: int = 100) -> bytes:
    """A matplotlib figure rendered to ``fmt`` in memory (to be written with
    :func:`write_atomic`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; ``holder`` is what it wrote of itself (pid,
    command, start time), possibly empty."""

    def __init__(self, folder: Path, holder: dict[str, Any]) -> None:
        self.folder, self.holder = folder, holder
        who = (f"pid {holder.get('pid')}, started {holder.get('started')}: "
               f"{holder.get('command')}" if holder else "another process")
        super().__init__(f"{folder} is in use by {who}")


@contextlib.contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold ``folder/.lock`` for the block, or raise :class:`FolderBusy` at once when another
    process holds it. The lock is the kernel's (``flock``): it goes with the process, so a
    process killed with -9 leaves no stale lock behind. The file keeps the holder's pid,
    command and start time for the message another process shows. Where ``fcntl`` does not
    exist (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            raise FolderBusy(folder, holder if isinstance(holder, dict) else {}) from None
        me = {"pid": os.getpid(), "command": command,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        with contextlib.suppress(OSError):  # the lock holds even if its note cannot be written
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
