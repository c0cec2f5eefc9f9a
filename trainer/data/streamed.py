"""A corpus of many files, rows or compressed text, encoded as one stream into the id cache: never the whole
text on disk or in memory, only the ids.

The text's sha256 is known only once it has been read: a small record (sources/KEY.json in the cache) maps
the files' `source_key` to it, and to what was left out, so that a second launch costs the files' digests
(a stat each for large files), not a read. What was left out is said in one line at every load (the trainer
asks for it on the first process of each machine only).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from trainer.data.cache import Corpus, cache_lock, cache_paths, cached, write_record
from trainer.data.digests import Digests, cache_root
from trainer.data.encode import encode_pieces
from trainer.data.formats import ReadOptions, SourceFile
from trainer.data.join import Joined
from trainer.data.rows import Tally
from trainer.data.sources import source_key
from trainer.errors import UserError
from trainer.files import atomic_write_bytes


def load_streamed(
    spec: str, files: list[SourceFile], options: ReadOptions, cache_dir, form: str, digests: Digests, notes: bool
) -> Corpus:
    """The Corpus of `files` read with `options`, from the id cache when its text was encoded before; with
    `notes`, what was left out is said in one line on stderr."""
    key = source_key(files, options, digests)
    digests.save()
    record_path = cache_root(cache_dir) / "sources" / f"{key[:32]}.json"
    try:
        with cache_lock(record_path.with_suffix(".ids.npy")):
            record = _read(record_path)
            if record is not None:
                ids_path, ids_record = cache_paths(record["sha256"], form, cache_dir)
                with cache_lock(ids_path):
                    corpus = cached(ids_path, ids_record, record["sha256"])
                if corpus is not None:
                    _say(record.get("note") if notes else None)
                    return corpus
            tally = Tally(options.bad_rows)
            joined = Joined(files, options, tally)
            staging = record_path.with_name(f"{key[:32]}.{form.lower()}.ids.npy")
            # the text's size, about (a compressed text is several times its file): how many processes encode it
            size = sum(file.path.stat().st_size * (4 if file.compression else 1) for file in files)
            vocab, ids_sha256 = encode_pieces(joined, staging, size, form)
            if vocab is None:
                left = tally.note()
                raise UserError(f"data.path {spec!r} holds no text" + (f" ({left})" if left else ""))
            ids_path, ids_record = cache_paths(joined.sha256, form, cache_dir)
            with cache_lock(ids_path):
                os.replace(staging, ids_path)
                write_record(ids_record, vocab, joined.sha256, ids_sha256, ids_path)
            atomic_write_bytes(record_path, json.dumps({"sha256": joined.sha256, "note": tally.note()}).encode())
    except OSError as e:
        raise UserError(f"the id cache {record_path.parent.parent} cannot be written: {e.strerror or e}") from None
    _say(tally.note() if notes else None)
    return Corpus(np.load(ids_path, mmap_mode="r"), vocab, joined.sha256)


def _read(record_path: Path) -> dict | None:
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        return record if isinstance(record.get("sha256"), str) else None
    except (OSError, ValueError, AttributeError):
        return None


def _say(note: str | None) -> None:
    if note:
        print(f"charlstm: data: {note}", file=sys.stderr)
