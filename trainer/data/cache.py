"""The id cache: a corpus' ids written once as .npy in the user's cache folder ($XDG_CACHE_HOME/charlstm/ids,
else ~/.cache/charlstm/ids), keyed by the corpus' sha256 and its Unicode form, memory-mapped when loaded;
nothing is written beside the corpus. Each entry is checked against the digests recorded with it and rebuilt
(with one line saying so) when it does not match. The processes of one machine build an entry once: the
others wait on its lock and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data import digests
from trainer.data.digests import Digests, cache_root
from trainer.data.encode import NORMAL_FORMS, encode_file, id_dtype, write_ids
from trainer.data.formats import ReadOptions
from trainer.data.sources import resolve_corpus
from trainer.errors import UserError
from trainer.files import atomic_write_bytes


@dataclass
class Corpus:
    ids: np.ndarray  # (n,) token ids, memory-mapped, smallest unsigned dtype that fits the vocab
    vocab: list[str]  # vocab[id] = the character; sorted by code point (with_vocab: another order)
    sha256: str  # of the corpus bytes (as read, before normalization)

    def decode(self, ids: np.ndarray) -> str:
        return "".join(self.vocab[i] for i in ids)

    def with_vocab(self, vocab: list[str], cache_dir: str | Path | None = None, form: str = "NFC") -> Corpus:
        """The same text with ids into `vocab`, which holds every character of this one (fine-tuning keeps a
        model's vocabulary and appends what the new text adds). The ids are remapped chunk by chunk into the id
        cache, keyed by the corpus, its form and `vocab`: never the whole array in memory, so a corpus larger
        than RAM can be fine-tuned on, and a rerun reuses the remapped ids."""
        if vocab == self.vocab:
            return self
        lookup = np.array([vocab.index(ch) for ch in self.vocab], dtype=id_dtype(len(vocab)))
        ids_path, record_path = cache_paths(self.sha256, form, cache_dir, vocab)
        try:
            with cache_lock(ids_path):
                remapped = cached(ids_path, record_path, self.sha256)
                if remapped is not None and remapped.vocab == vocab:
                    return remapped
                ids_sha256 = write_ids(ids_path, lookup.dtype, len(self.ids), (lookup[c] for c in id_chunks(self.ids)))
                write_record(record_path, vocab, self.sha256, ids_sha256, ids_path)
        except OSError as e:
            raise UserError(f"the id cache {ids_path.parent} cannot be written: {e.strerror or e}") from None
        return Corpus(np.load(ids_path, mmap_mode="r"), vocab, self.sha256)


def file_position(ids: np.ndarray) -> tuple[str, int] | None:
    """(file, byte offset of ids[0]) when `ids` is a memory-mapped cache or a contiguous 1-D view of one, for
    positional reads of it; else None."""
    root = ids if isinstance(ids.base, mmap.mmap) else ids.base
    if not (isinstance(ids, np.memmap) and isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap)):
        return None
    if ids.ndim != 1 or not ids.flags.c_contiguous or not root.filename:
        return None
    return root.filename, root.offset + (ids.ctypes.data - root.ctypes.data)


def id_chunks(ids: np.ndarray):
    """The ids in chunks of CHUNK_BYTES, read from the file behind a memory-mapped array with plain reads:
    the pages read are not kept mapped, so streaming over many GB keeps the process small."""
    step = max(1, digests.CHUNK_BYTES // ids.itemsize)
    position = file_position(ids)
    if position is None:
        for start in range(0, len(ids), step):
            yield np.asarray(ids[start : start + step])
        return
    with open(position[0], "rb") as f:
        f.seek(position[1])
        for start in range(0, len(ids), step):
            yield np.fromfile(f, dtype=ids.dtype, count=min(step, len(ids) - start))


def cache_paths(
    sha256: str, form: str, cache_dir: str | Path | None = None, vocab: list[str] | None = None
) -> tuple[Path, Path]:
    """The cached ids (.npy) and their record (.json: the vocabulary and the digests) of a corpus in a form;
    with `vocab`, those of its ids remapped into that vocabulary (fine-tuning)."""
    stem = f"{sha256[:32]}.{form.lower()}"
    if vocab is not None:
        stem += f".vocab-{_digest(json.dumps(vocab).encode())[:16]}"
    folder = cache_root(cache_dir) / "ids"
    return folder / f"{stem}.ids.npy", folder / f"{stem}.json"


@contextmanager
def cache_lock(ids_path: Path):
    """Hold a lock beside a cache entry while it is checked and built: the processes of one machine encode a
    corpus once, the others wait for it and reuse it (no collective waits on a long first encode)."""
    import fcntl

    ids_path.parent.mkdir(parents=True, exist_ok=True)
    with open(ids_path.with_name(ids_path.name.replace(".ids.npy", ".lock")), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def write_record(record_path: Path, vocab: list[str], sha256: str, ids_sha256: str, ids_path: Path) -> None:
    record = {"vocab": vocab, "corpus_sha256": sha256, "vocab_sha256": _digest(json.dumps(vocab).encode())}
    record |= {"ids_sha256": ids_sha256, "ids_stamp": digests.stamp(ids_path)}
    atomic_write_bytes(record_path, json.dumps(record).encode("utf-8"))


def cached(ids_path: Path, record_path: Path, sha256: str) -> Corpus | None:
    """The cached encoding if it is whole and matches its digests, else None. The ids are hashed again unless
    they are larger than HASH_WHOLE_BYTES and their size, modification time and inode are those recorded."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        vocab = record["vocab"]
        if record["corpus_sha256"] != sha256 or record["vocab_sha256"] != _digest(json.dumps(vocab).encode()):
            return None
        stamp = digests.stamp(ids_path)
        if stamp[0] <= digests.HASH_WHOLE_BYTES or record.get("ids_stamp") != stamp:
            if record["ids_sha256"] != digests.sha256_file(ids_path):
                return None
            if record.get("ids_stamp") != stamp:
                write_record(record_path, vocab, sha256, record["ids_sha256"], ids_path)
        ids = np.load(ids_path, mmap_mode="r")
        if ids.dtype != id_dtype(len(vocab)) or ids.ndim != 1:
            return None
        return Corpus(ids, vocab, sha256)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def load_corpus(
    spec: str,
    cache_dir: str | Path | None = None,
    form: str = "NFC",
    options: ReadOptions | None = None,
    notes: bool = True,
) -> Corpus:
    """Resolve, hash, normalize and encode (or reuse the cached encoding of) a corpus: a plain text file as it
    is, or the documents of its files (rows, compressed text) read with `options` as one stream; with `notes`,
    what the reading left out (rows with no text, skipped bad rows) is said in one line on stderr."""
    if form not in NORMAL_FORMS:
        raise UserError(f"data.normalize must be one of {', '.join(NORMAL_FORMS)}, got {form!r}")
    digests = Digests(cache_dir)
    source = resolve_corpus(spec)
    if not isinstance(source, Path):
        from trainer.data.streamed import load_streamed

        return load_streamed(spec, source, options or ReadOptions(), cache_dir, form, digests, notes)
    path = source
    sha256 = digests.sha256(path)
    digests.save()
    ids_path, record_path = cache_paths(sha256, form, cache_dir)
    try:
        with cache_lock(ids_path):
            if ids_path.exists() or record_path.exists():
                corpus = cached(ids_path, record_path, sha256)
                if corpus is not None:
                    return corpus
                damaged = f"the id cache of {path} in {ids_path.parent} is damaged; rebuilding it"
                print(f"charlstm: {damaged}", file=sys.stderr)
            vocab, ids_sha256 = encode_file(path, ids_path, form)
            write_record(record_path, vocab, sha256, ids_sha256, ids_path)
    except OSError as e:
        raise UserError(f"the id cache {ids_path.parent} cannot be written: {e.strerror or e}") from None
    return Corpus(np.load(ids_path, mmap_mode="r"), vocab, sha256)


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): validation is the LAST val_fraction of the corpus."""
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]
