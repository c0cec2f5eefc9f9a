"""What a corpus file holds, by its name, and its bytes decompressed.

A file is plain text unless its name ends in a row format (`.jsonl`/`.json` JSON Lines, `.csv`, `.tsv`,
`.parquet`, `.arrow`), optionally followed by a compression (`.gz`, `.bz2`, `.xz`, `.zst`). A folder written by
`datasets`' `save_to_disk` is its Arrow files, in the order its state.json lists them.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from trainer.errors import UserError

ROW_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
               ".arrow": "arrow"}  # fmt: skip
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
DATA_EXTRA = "pip install 'charlstm[data]'"  # what installs the libraries the row formats need


@dataclass(frozen=True)
class ReadOptions:
    """How rows become text: the field or column that holds each document, what joins documents (and files),
    and what a bad row does (`error`: one line naming it; `skip`: left out and counted)."""

    text_field: str = "text"
    separator: str = "\n\n"
    bad_rows: Literal["error", "skip"] = "error"

    @classmethod
    def of(cls, data: object) -> ReadOptions:
        """From a config's data section (an object with these attributes, or a plain dict of it)."""
        get = data.get if isinstance(data, dict) else lambda key, default: getattr(data, key, default)
        return cls(get("text_field", cls.text_field), get("separator", cls.separator), get("bad_rows", cls.bad_rows))


@dataclass(frozen=True)
class SourceFile:
    path: Path
    form: str  # "text" or one of ROW_FORMATS' values
    compression: str | None  # one of COMPRESSIONS, or None


def source_file(path: Path) -> SourceFile:
    """What `path` holds, from its name: `books.jsonl.zst` is zstandard-compressed JSON Lines."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    form = ROW_FORMATS.get(suffixes[-1], "text") if suffixes else "text"
    return SourceFile(path, form, compression)


def is_plain(file: SourceFile) -> bool:
    """Plain, uncompressed text: encoded from the file itself, in parallel ranges."""
    return file.form == "text" and file.compression is None


def open_decompressed(file: SourceFile) -> BinaryIO:
    """The file's bytes as a binary stream, decompressed as its name says."""
    try:
        return _open(file)
    except OSError as e:
        raise UserError(f"{file.path} cannot be read: {e.strerror or e}") from None


def _open(file: SourceFile) -> BinaryIO:
    if file.compression is None:
        return open(file.path, "rb")
    if file.compression == ".gz":
        return gzip.open(file.path, "rb")
    if file.compression == ".bz2":
        return bz2.open(file.path, "rb")
    if file.compression == ".xz":
        return lzma.open(file.path, "rb")
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{file.path}: .zst files need the zstandard package: {DATA_EXTRA}") from None
    return io.BufferedReader(_ZstdReader(file.path, zstandard), BUFFER_BYTES)


BUFFER_BYTES = 1 << 20


class _ZstdReader(io.RawIOBase):
    """Zstandard frames, one after another, decompressed; a last frame cut short raises EOFError, where
    zstandard's own reader would end quietly with the text cut."""

    def __init__(self, path: Path, zstandard) -> None:
        self.compressed, self.zstandard = open(path, "rb"), zstandard  # noqa: SIM115 (closed in close())
        self.frame, self.pending, self.offset = None, b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.offset == len(self.pending):
            block = self.compressed.read(BUFFER_BYTES)
            if not block:
                if self.frame is not None and not self.frame.eof:
                    raise EOFError("the last zstd frame ends early")
                return 0
            self.pending, self.offset = self._decompress(block), 0
        size = min(len(buffer), len(self.pending) - self.offset)
        buffer[:size] = self.pending[self.offset : self.offset + size]
        self.offset += size
        return size

    def _decompress(self, block: bytes) -> bytes:
        out = []
        while block:
            if self.frame is None or self.frame.eof:
                self.frame = self.zstandard.ZstdDecompressor().decompressobj()
            try:
                out.append(self.frame.decompress(block))
            except self.zstandard.ZstdError as e:
                raise OSError(str(e)) from None
            block = self.frame.unused_data if self.frame.eof else b""
        return b"".join(out)

    def close(self) -> None:
        self.compressed.close()
        super().close()


DAMAGED = (EOFError, OSError, lzma.LZMAError, ValueError)  # what a truncated or damaged compressed file raises


def damaged(file: SourceFile, error: BaseException) -> UserError:
    """The one line for a compressed file that ends early or does not decompress."""
    what = str(error) or type(error).__name__
    return UserError(f"{file.path}: the {file.compression} data is truncated or damaged ({what})")


def saved_dataset_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a folder written by `datasets`' save_to_disk, in its order; None if it is not one.
    A DatasetDict (one folder per split) is one line naming its splits: training on all of them at once would
    put the test split into the training text."""
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            splits = ["..."]
        raise UserError(
            f"data.path {str(folder)!r} is a saved DatasetDict with the splits {', '.join(map(str, splits))}: "
            f"name one of them, e.g. data.path={folder / str(splits[0])}"
        )
    state = folder / "state.json"
    if not state.is_file():
        return None
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = [folder / name for name in names]
    for file in files:
        if not file.is_file():
            raise UserError(f"data.path {str(folder)!r}: its state.json lists {file.name}, which is missing")
    return files


def require_pyarrow(file: SourceFile):
    """pyarrow, or one line naming the extra that installs it."""
    try:
        import pyarrow
    except ImportError:
        raise UserError(f"{file.path}: {file.form} files need pyarrow: {DATA_EXTRA}") from None
    return pyarrow
