"""The sha256 of files, and the index (digests.json) that spares hashing a large file again at every launch.

A file larger than HASH_WHOLE_BYTES (or any, when asked: the files of a large folder) is hashed again only
when its size, modification time or inode change; a launch of a corpus of many GB then costs a stat.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from trainer.files import atomic_write_bytes

CHUNK_BYTES = 16 << 20  # read, hash and remap 16 MB at a time: bounded memory for any corpus size
HASH_WHOLE_BYTES = 8 << 20  # a file up to this size is hashed at every use (a few ms)


def user_cache_dir() -> Path:
    if os.environ.get("CHARLSTM_CACHE_DIR"):
        return Path(os.environ["CHARLSTM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charlstm"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else user_cache_dir()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def stamp(path: Path) -> list[int]:
    """What changes when a file is written or replaced: its size, modification time and inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class Digests:
    """The sha256 of files, remembered in the cache's digests.json by each file's size, modification time and
    inode: a file larger than HASH_WHOLE_BYTES (or any, with remember=True: the files of a large folder) is read
    only when those differ from the ones recorded when it was last hashed, so a later launch does not read many
    GB again to find its cache. The index is read once and written once per corpus."""

    def __init__(self, cache_dir: str | Path | None = None):
        self.path = cache_root(cache_dir) / "digests.json"
        self.entries = self._read()
        self.added: dict[str, dict] = {}

    def _read(self) -> dict:
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def sha256(self, path: Path, remember: bool | None = None) -> str:
        before = stamp(path)
        if not (remember if remember is not None else before[0] > HASH_WHOLE_BYTES):
            return sha256_file(path)
        key = str(path.resolve())
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == before and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = sha256_file(path)
        if stamp(path) == before:  # not written while it was read
            self.entries[key] = self.added[key] = {"stamp": before, "sha256": digest}
        return digest

    def save(self) -> None:
        """Write what was hashed anew, merged into the index as it is now on disk (another process may have
        added to it meanwhile); a read-only cache just hashes again next time."""
        if not self.added:
            return
        try:
            atomic_write_bytes(self.path, json.dumps(self._read() | self.added).encode("utf-8"))
        except OSError:
            pass
        self.added = {}
