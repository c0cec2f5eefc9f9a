"""A text file -> character ids into its vocabulary (its code points, sorted), in a .npy file.

The corpus is read in ranges cut at newlines and encoded with numpy (no Python loop per character), by one
process per core for a large corpus; a first pass writes each range's ids into its own code points, a second
maps them to the vocabulary as it writes the .npy file, so memory stays bounded for any corpus size.
"""

from __future__ import annotations

import hashlib
import io
import os
import unicodedata
from pathlib import Path

import numpy as np

from trainer.errors import UserError
from trainer.files import atomic_write

TEXT_CHUNK_BYTES = 4 << 20  # text decoded and normalized at a time, per worker (memory: about 20x this)
PARALLEL_MIN_BYTES = 32 << 20  # a corpus this large is encoded by one process per core
MAX_CODEPOINT = 0x110000

NORMAL_FORMS = ("NFC", "NFKC", "none")


def normalize(text: str, form: str) -> str:
    """The text in Unicode normal form `form` (NFC, NFKC), or as it is (none). Samplers put a prime into the
    form the corpus was put into, so that an ñ typed as one code point meets an ñ stored as n + U+0303."""
    return text if form == "none" else unicodedata.normalize(form, text)


def id_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise AssertionError("unreachable: Unicode has fewer than 2**32 code points")


def write_ids(out: Path, dtype: np.dtype, total: int, chunks) -> str:
    """Write ids, chunk by chunk, as a .npy file of `total` ids at `out` (atomically, with plain writes: no
    page of it stays mapped); returns the file's sha256."""
    header = io.BytesIO()
    descr = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (total,)}
    np.lib.format.write_array_header_1_0(header, descr)
    digest, written = hashlib.sha256(header.getvalue()), 0
    with atomic_write(out) as f:
        f.write(header.getvalue())
        for chunk in chunks:
            payload = chunk.astype(dtype, copy=False).tobytes()
            digest.update(payload)
            f.write(payload)
            written += len(chunk)
    if written != total:
        raise AssertionError(f"wrote {written} ids, expected {total}")
    return digest.hexdigest()


def _line_ranges(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte ranges that cover the file, each of about TEXT_CHUNK_BYTES and ending just after a
    newline (or at the end). A newline byte is never inside a UTF-8 sequence, and normalization never reaches
    across a newline, so the ranges encode apart exactly as the whole would."""
    total, ranges, start = path.stat().st_size, [], 0
    with open(path, "rb") as f:
        while start < total:
            end = start + TEXT_CHUNK_BYTES
            if end >= total:
                end = total
            else:
                f.seek(end)
                while True:  # forward to the next newline (a very long line makes a longer range)
                    block = f.read(1 << 16)
                    if not block:
                        end = total
                        break
                    if (newline := block.find(b"\n")) >= 0:
                        end += newline + 1
                        break
                    end += len(block)
            ranges.append((start, end))
            start = end
    return ranges


def _encode_range(path: Path, start: int, end: int, form: str) -> tuple[np.ndarray, np.ndarray]:
    """Bytes [start, end) of the file as (the code points they hold, sorted; their ids into those code points).
    Bad UTF-8 -> UserError naming the byte offset in the file. Runs in the encoding's worker processes."""
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(end - start)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at byte offset {start + e.start})"
        ) from None
    return _encode_text(raw, form)


def _encode_text(raw: bytes, form: str) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 text (checked) as (the code points it holds, sorted; its ids into those code points)."""
    if raw.isascii():  # the common case: one byte per character, which no normal form changes
        cps = np.frombuffer(raw, dtype=np.uint8)
    else:
        cps = np.frombuffer(normalize(raw.decode("utf-8"), form).encode("utf-32-le"), dtype=np.uint32)
    present = np.flatnonzero(np.bincount(cps))  # this range's code points, sorted
    local = np.zeros(int(present[-1]) + 1 if len(present) else 1, dtype=id_dtype(max(1, len(present))))
    local[present] = np.arange(len(present), dtype=local.dtype)
    return present.astype(np.uint32), local[cps]


def _encode_task(task: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(path, start, end, form): a range of a file; (text bytes, form): a piece of a streamed corpus."""
    return _encode_range(*task) if len(task) == 4 else _encode_text(*task)


def _in_order(tasks: list[tuple], workers: int):
    """_encode_range over tasks, results in task order: in this process, or in `workers` fresh processes with
    at most 2 x workers results waiting (bounded memory whatever the corpus size)."""
    if workers < 2:
        yield from (_encode_task(task) for task in tasks)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the workers start clean (the trainer may hold threads that a fork would copy in a broken state)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        waiting, pending = deque(), iter(tasks)
        for task in pending:
            waiting.append(pool.submit(_encode_task, task))
            if len(waiting) >= 2 * workers:
                yield waiting.popleft().result()
        while waiting:
            yield waiting.popleft().result()


def encode_workers(size: int) -> int:
    """Processes that encode a corpus of `size` bytes: one for small ones, else one per core (at most 8)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if size < PARALLEL_MIN_BYTES else max(1, min(8, cores))


def encode_file(path: Path, out: Path, form: str = "NFC") -> tuple[list[str], str]:
    """The corpus as ids into its vocabulary (its code points, sorted), in a .npy file at `out`; returns the
    vocabulary and the file's sha256. One pass decodes and normalizes the text, range by range (in parallel
    for a large corpus), into ids into each range's own code points, kept in a temp file beside `out`; a second
    pass maps them to the vocabulary's ids as it writes `out`."""
    tasks = [(path, start, end, form) for start, end in _line_ranges(path)]
    vocab, ids_sha256 = encode_tasks(tasks, out, encode_workers(path.stat().st_size))
    if vocab is None:
        raise UserError(f"{path}: the file is empty")
    return vocab, ids_sha256


def encode_pieces(pieces, out: Path, size: int, form: str = "NFC") -> tuple[list[str] | None, str]:
    """Streamed text (UTF-8 pieces, each cut after a newline or before an ASCII character, where no
    normalization reaches across) encoded as `encode_file` encodes a file; `size` (bytes, about) picks the
    number of worker processes. (None, "") for no text."""
    return encode_tasks(((piece, form) for piece in pieces), out, encode_workers(size))


def encode_tasks(tasks, out: Path, workers: int) -> tuple[list[str] | None, str]:
    parts = out.with_name(f".{out.name}.{os.getpid()}.parts.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    layout = []  # (code points, id dtype, count) of each range, in order
    try:
        with open(parts, "wb") as f:
            for present, ids in _in_order(tasks, workers):
                f.write(ids.tobytes())
                layout.append((present, ids.dtype, len(ids)))
        total = sum(count for _, _, count in layout)
        if total == 0:
            return None, ""
        codepoints = np.unique(np.concatenate([present for present, _, _ in layout]))
        vocab = [chr(cp) for cp in codepoints]
        dtype = id_dtype(len(vocab))

        def remapped():
            with open(parts, "rb") as f:
                for present, part_dtype, count in layout:
                    table = np.searchsorted(codepoints, present).astype(dtype)  # range id -> vocabulary id
                    yield table[np.fromfile(f, dtype=part_dtype, count=count)]

        return vocab, write_ids(out, dtype, total, remapped())
    finally:
        parts.unlink(missing_ok=True)
