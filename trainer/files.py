"""Atomic file writes: a reader sees the previous file or the new one, never a torn one.

One helper for every file the trainer writes that another run may read (checkpoints, the id cache, the
downloaded corpus): write to a temp file beside the target, fsync it, rename it over the target, fsync
the folder so that the rename itself survives a crash. A write cut short by kill -9 leaves only its
temp file, which `remove_stale_temps` deletes on the next start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temp_path(path: Path) -> Path:
    """Where a write of `path` goes first: hidden, beside it, unique to this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temps(folder: Path) -> None:
    """Delete temp files of writes that were cut short (kill -9); the targets beside them are whole."""
    for stale in folder.glob(".*.*.tmp"):
        stale.unlink(missing_ok=True)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes a rename inside the folder durable
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write `path` through (for writers that want a file name, e.g. np.memmap); on
    success it is fsynced and renamed over `path`; on any error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """`with atomic_write(p) as f: f.write(...)`: a binary file that replaces `p` only once it is whole."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    with atomic_write(path) as f:
        f.write(payload)


# ---------------------------------------------------------------- one run at a time on an out_dir


def lock_out_dir(out_dir: Path):
    """Create out_dir and take it for this run (one run at a time): its open .lock file, locked while the run
    lives. UserError when it cannot be written or another run holds it."""
    from trainer.errors import UserError  # here: this file's head belongs to the atomic writes

    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir {str(out_dir)!r} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / ".lock", "a+")  # noqa: SIM115 (held for the whole run)
        holder = take_lock(lock)
    except OSError as e:
        raise UserError(f"out_dir {str(out_dir)!r} cannot be written: {e.strerror or e}") from None
    if holder is not None:
        lock.close()
        raise UserError(
            f"out_dir {str(out_dir)!r} is in use by another run"
            + (f" (process {holder})" if holder else "")
            + ": wait for it to end, or use another out_dir"
        )
    return lock


def take_lock(file) -> str | None:
    """Lock an out_dir's .lock file for this process (flock: the OS drops it when the process ends, even by
    kill -9, so no stale lock survives). None when taken; else the pid written by the run that holds it."""
    import fcntl

    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        return file.read().strip()
    file.seek(0)
    file.truncate()
    file.write(str(os.getpid()))
    file.flush()
    return None
