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
