"""Corpus -> character ids -> sharded stateful streams.

The corpus is read in ranges cut at newlines and encoded with numpy (no Python loop per character), by one
process per core for a large corpus, and a corpus larger than RAM still trains: the ids are written once to
a .npy cache in the user's cache folder ($XDG_CACHE_HOME/charlstm/ids, else ~/.cache/charlstm/ids), keyed by
the corpus' sha256, memory-mapped when loaded and read by the streams with positional reads; nothing is
written beside the corpus. The cache is checked against digests written with it, and rebuilt (with one line
saying so) when it does not match; a large file is hashed again only when its stat changes (Digests).

Stream layout (training). The train split of n ids is cut into B streams of S = W*T characters,
W = (n - 1) // (B*T) windows per epoch. Stream b reads ids[b*S + w*T : b*S + (w+1)*T] at window w
and predicts the same slice shifted by one, so the B streams tile ids[0 : B*S] exactly, each one
contiguous from window to window. The window is a pure function of the step (w = step % W), which
makes resume exact; at w == 0 a new epoch starts and the carried LSTM state is reset.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import mmap
import os
import sys
import sysconfig
import unicodedata
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import UserError
from trainer.files import atomic_write, atomic_write_bytes

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CHUNK_BYTES = 16 << 20  # read, hash and remap 16 MB at a time: bounded memory for any corpus size
TEXT_CHUNK_BYTES = 4 << 20  # text decoded and normalized at a time, per worker (memory: about 20x this)
PARALLEL_MIN_BYTES = 32 << 20  # a corpus this large is encoded by one process per core
MAX_CODEPOINT = 0x110000


def user_cache_dir() -> Path:
    if os.environ.get("CHARLSTM_CACHE_DIR"):
        return Path(os.environ["CHARLSTM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charlstm"


# ---------------------------------------------------------------- corpus sources


def fetch_tinyshakespeare() -> Path:
    """Tiny Shakespeare from the char-rnn repository, downloaded once into the cache, sha256-checked."""
    path = user_cache_dir() / "tinyshakespeare.txt"
    if path.is_file() and _sha256_file(path) == TINYSHAKESPEARE_SHA256:
        return path
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=20) as response:
            payload = response.read()
    except OSError as e:
        raise UserError(f"could not download Tiny Shakespeare from {TINYSHAKESPEARE_URL}: {e}") from None
    if hashlib.sha256(payload).hexdigest() != TINYSHAKESPEARE_SHA256:
        raise UserError(f"the download from {TINYSHAKESPEARE_URL} does not match its sha256")
    atomic_write_bytes(path, payload)
    return path


def build_python_stdlib() -> Path:
    """The running Python's standard library .py files, concatenated in sorted path order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = "{}.{}.{}".format(*sys.version_info[:3])
    path = user_cache_dir() / f"python-stdlib-{version}.txt"
    if path.is_file():
        return path
    parts = []
    for file in sorted(stdlib.rglob("*.py")):
        if "site-packages" in file.relative_to(stdlib).parts:
            continue
        try:
            parts.append(file.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError):
            continue  # a few test fixtures are deliberately not UTF-8
    atomic_write_bytes(path, "".join(parts).encode("utf-8"))
    return path


def build_python_docs() -> Path:
    """The running Python's reference documentation as it ships with every CPython (pydoc_data/topics.py: the
    language reference and library topics that `help()` shows), its topics in sorted order: about 465,000
    characters of English prose with code and about 100 symbols. The offline quickstart's text."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise UserError("data.path: builtin:python-docs needs pydoc_data, which this Python lacks") from None
    version = "{}.{}.{}".format(*sys.version_info[:3])
    path = user_cache_dir() / f"python-docs-{version}.txt"
    if not path.is_file():
        text = FILE_SEPARATOR.join(topics[name].strip("\n") for name in sorted(topics)) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))
    return path


FILE_SEPARATOR = "\n\n"  # between the files of a folder or a glob: a blank line marks where a document ends
BUILTINS = {"builtin:python-docs": build_python_docs, "builtin:python-stdlib": build_python_stdlib}


def resolve_corpus(spec: str, digests: Digests | None = None) -> Path:
    """A data.path value -> one readable text file: the file itself, a built-in corpus, or for a folder (every
    file under it, recursively, hidden ones aside) or a glob the files joined in sorted path order with
    FILE_SEPARATOR, written once into the user cache and keyed by their contents."""
    if spec == "tinyshakespeare":
        return fetch_tinyshakespeare()
    if spec in BUILTINS:
        return BUILTINS[spec]()
    if spec.startswith("builtin:"):
        raise UserError(f"data.path: unknown built-in corpus {spec!r} (known: {', '.join(BUILTINS)})")
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"data.path: the glob {spec!r} matches no file")
        return join_files(files, spec, digests or Digests())
    if not path.exists():
        raise UserError(f"data.path: {spec!r} does not exist")
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise UserError(f"data.path: the folder {spec!r} has no files")
        return join_files(files, spec, digests or Digests())
    if not path.is_file():
        raise UserError(f"data.path: {spec!r} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"data.path: {spec!r} is not readable")
    return path


def join_files(files: list[Path], spec: str, digests: Digests) -> Path:
    """The files' texts joined with FILE_SEPARATOR, cached by a digest of their contents (and order)."""
    digest = hashlib.sha256()
    remember = sum(file.stat().st_size for file in files) > HASH_WHOLE_BYTES  # many small files: a large corpus
    for file in files:
        digest.update(digests.sha256(file, remember).encode())
    joined = user_cache_dir() / "joined" / f"{digest.hexdigest()[:32]}.txt"
    if joined.is_file():
        return joined
    with atomic_write(joined) as out:
        for i, file in enumerate(files):
            payload = file.read_bytes()
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"data.path {spec!r}: {file} is not UTF-8 text (invalid byte 0x{payload[e.start]:02x} at byte "
                    f"offset {e.start})"
                ) from None
            out.write((FILE_SEPARATOR.encode() if i else b"") + payload)
    if joined.stat().st_size == len(FILE_SEPARATOR) * (len(files) - 1):
        joined.unlink()
        raise UserError(f"data.path {spec!r}: its files hold no text")
    return joined


# ---------------------------------------------------------------- encoding


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
            with _cache_lock(ids_path):
                cached = _cached(ids_path, record_path, self.sha256)
                if cached is not None and cached.vocab == vocab:
                    return cached
                ids_sha256 = _write_ids(ids_path, lookup.dtype, len(self.ids), (lookup[c] for c in id_chunks(self.ids)))
                _write_record(record_path, vocab, self.sha256, ids_sha256, ids_path)
        except OSError as e:
            raise UserError(f"the id cache {ids_path.parent} cannot be written: {e.strerror or e}") from None
        return Corpus(np.load(ids_path, mmap_mode="r"), vocab, self.sha256)


def id_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise AssertionError("unreachable: Unicode has fewer than 2**32 code points")


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
    step = max(1, CHUNK_BYTES // ids.itemsize)
    position = file_position(ids)
    if position is None:
        for start in range(0, len(ids), step):
            yield np.asarray(ids[start : start + step])
        return
    with open(position[0], "rb") as f:
        f.seek(position[1])
        for start in range(0, len(ids), step):
            yield np.fromfile(f, dtype=ids.dtype, count=min(step, len(ids) - start))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


HASH_WHOLE_BYTES = 8 << 20  # a file up to this size is hashed at every use (a few ms)


def _stamp(path: Path) -> list[int]:
    """What changes when a file is written or replaced: its size, modification time and inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else user_cache_dir()


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
        stamp = _stamp(path)
        if not (remember if remember is not None else stamp[0] > HASH_WHOLE_BYTES):
            return _sha256_file(path)
        key = str(path.resolve())
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = _sha256_file(path)
        if _stamp(path) == stamp:  # not written while it was read
            self.entries[key] = self.added[key] = {"stamp": stamp, "sha256": digest}
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


NORMAL_FORMS = ("NFC", "NFKC", "none")


def normalize(text: str, form: str) -> str:
    """The text in Unicode normal form `form` (NFC, NFKC), or as it is (none). Samplers put a prime into the
    form the corpus was put into, so that an ñ typed as one code point meets an ñ stored as n + U+0303."""
    return text if form == "none" else unicodedata.normalize(form, text)


def _write_ids(out: Path, dtype: np.dtype, total: int, chunks) -> str:
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
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at byte offset {start + e.start})"
        ) from None
    if text.isascii():  # the common case: one byte per character, which no normal form changes
        cps = np.frombuffer(raw, dtype=np.uint8)
    else:
        cps = np.frombuffer(normalize(text, form).encode("utf-32-le"), dtype=np.uint32)
    present = np.flatnonzero(np.bincount(cps))  # this range's code points, sorted
    local = np.zeros(int(present[-1]) + 1 if len(present) else 1, dtype=id_dtype(max(1, len(present))))
    local[present] = np.arange(len(present), dtype=local.dtype)
    return present.astype(np.uint32), local[cps]


def _in_order(tasks: list[tuple], workers: int):
    """_encode_range over tasks, results in task order: in this process, or in `workers` fresh processes with
    at most 2 x workers results waiting (bounded memory whatever the corpus size)."""
    if workers < 2:
        yield from (_encode_range(*task) for task in tasks)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the workers start clean (the trainer may hold threads that a fork would copy in a broken state)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        waiting, pending = deque(), iter(tasks)
        for task in pending:
            waiting.append(pool.submit(_encode_range, *task))
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
    ranges = _line_ranges(path)
    parts = out.with_name(f".{out.name}.{os.getpid()}.parts.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    layout = []  # (code points, id dtype, count) of each range, in order
    try:
        with open(parts, "wb") as f:
            tasks = [(path, start, end, form) for start, end in ranges]
            for present, ids in _in_order(tasks, encode_workers(path.stat().st_size)):
                f.write(ids.tobytes())
                layout.append((present, ids.dtype, len(ids)))
        total = sum(count for _, _, count in layout)
        if total == 0:
            raise UserError(f"{path}: the file is empty")
        codepoints = np.unique(np.concatenate([present for present, _, _ in layout]))
        vocab = [chr(cp) for cp in codepoints]
        dtype = id_dtype(len(vocab))

        def remapped():
            with open(parts, "rb") as f:
                for present, part_dtype, count in layout:
                    table = np.searchsorted(codepoints, present).astype(dtype)  # range id -> vocabulary id
                    yield table[np.fromfile(f, dtype=part_dtype, count=count)]

        return vocab, _write_ids(out, dtype, total, remapped())
    finally:
        parts.unlink(missing_ok=True)


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
def _cache_lock(ids_path: Path):
    """Hold a lock beside a cache entry while it is checked and built: the processes of one machine encode a
    corpus once, the others wait for it and reuse it (no collective waits on a long first encode)."""
    import fcntl

    ids_path.parent.mkdir(parents=True, exist_ok=True)
    with open(ids_path.with_name(ids_path.name.replace(".ids.npy", ".lock")), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _write_record(record_path: Path, vocab: list[str], sha256: str, ids_sha256: str, ids_path: Path) -> None:
    record = {"vocab": vocab, "corpus_sha256": sha256, "vocab_sha256": _digest(json.dumps(vocab).encode())}
    record |= {"ids_sha256": ids_sha256, "ids_stamp": _stamp(ids_path)}
    atomic_write_bytes(record_path, json.dumps(record).encode("utf-8"))


def _cached(ids_path: Path, record_path: Path, sha256: str) -> Corpus | None:
    """The cached encoding if it is whole and matches its digests, else None. The ids are hashed again unless
    they are larger than HASH_WHOLE_BYTES and their size, modification time and inode are those recorded."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        vocab = record["vocab"]
        if record["corpus_sha256"] != sha256 or record["vocab_sha256"] != _digest(json.dumps(vocab).encode()):
            return None
        stamp = _stamp(ids_path)
        if stamp[0] <= HASH_WHOLE_BYTES or record.get("ids_stamp") != stamp:
            if record["ids_sha256"] != _sha256_file(ids_path):
                return None
            if record.get("ids_stamp") != stamp:
                _write_record(record_path, vocab, sha256, record["ids_sha256"], ids_path)
        ids = np.load(ids_path, mmap_mode="r")
        if ids.dtype != id_dtype(len(vocab)) or ids.ndim != 1:
            return None
        return Corpus(ids, vocab, sha256)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def load_corpus(spec: str, cache_dir: str | Path | None = None, form: str = "NFC") -> Corpus:
    """Resolve, hash, normalize and encode (or reuse the cached encoding of) a corpus."""
    if form not in NORMAL_FORMS:
        raise UserError(f"data.normalize must be one of {', '.join(NORMAL_FORMS)}, got {form!r}")
    digests = Digests(cache_dir)
    path = resolve_corpus(spec, digests)
    sha256 = digests.sha256(path)
    digests.save()
    ids_path, record_path = cache_paths(sha256, form, cache_dir)
    try:
        with _cache_lock(ids_path):
            if ids_path.exists() or record_path.exists():
                corpus = _cached(ids_path, record_path, sha256)
                if corpus is not None:
                    return corpus
                damaged = f"the id cache of {path} in {ids_path.parent} is damaged; rebuilding it"
                print(f"charlstm: {damaged}", file=sys.stderr)
            vocab, ids_sha256 = encode_file(path, ids_path, form)
            _write_record(record_path, vocab, sha256, ids_sha256, ids_path)
    except OSError as e:
        raise UserError(f"the id cache {ids_path.parent} cannot be written: {e.strerror or e}") from None
    return Corpus(np.load(ids_path, mmap_mode="r"), vocab, sha256)


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): validation is the LAST val_fraction of the corpus."""
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


# ---------------------------------------------------------------- streams


class WindowReader:
    """ids[s : s + length] for many starts s at once. From a memory-mapped cache it reads with positional reads
    (os.pread) instead of through the mapping: a step reads a few characters at each of B places spread over a
    corpus of many GB, and the kernel maps a whole page-cache folio, about a megabyte, around each place it is
    read through a mapping, which would count in the process's memory (80 MB for 32 streams in 40 steps and one
    evaluation of a 1 GB corpus, measured). Anything else (an array in memory) is indexed as it is."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self.file = None
        position = file_position(ids) if hasattr(os, "pread") else None
        if position is not None:
            self.file = open(position[0], "rb", buffering=0)  # noqa: SIM115 (lives as long as the reader)
            self.first_byte = position[1]

    def read(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(len(starts), length) int64: the ids from each start."""
        if self.file is None:
            return self.ids[starts[:, None] + np.arange(length)].astype(np.int64)
        size, dtype, fd = self.ids.itemsize, self.ids.dtype, self.file.fileno()
        rows = [np.frombuffer(os.pread(fd, length * size, self.first_byte + int(s) * size), dtype) for s in starts]
        return np.stack(rows).astype(np.int64)


class TrainStreams:
    """B contiguous streams over the train split; window(step) is a pure function of the step."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        need = batch_size * seq_len + 1
        if len(ids) < need:
            raise UserError(
                f"the training split has {len(ids):,} characters but batch_size={batch_size} x "
                f"seq_len={seq_len} needs at least {need:,}: use a smaller train.batch_size or "
                "train.seq_len, or a longer text"
            )
        self.ids = ids
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.windows_per_epoch = (len(ids) - 1) // (batch_size * seq_len)  # W
        self.stream_len = self.windows_per_epoch * seq_len  # S
        self.reader = WindowReader(ids)

    def window(self, step: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (last-first, T) int64 of streams [first, last) at this step."""
        w = step % self.windows_per_epoch
        starts = np.arange(first, last) * self.stream_len + w * self.seq_len
        chunk = self.reader.read(starts, self.seq_len + 1)  # (b, T+1)
        return chunk[:, :-1], chunk[:, 1:]

    def starts_epoch(self, step: int) -> bool:
        """True when this step begins a pass over the data: the carried state must be reset."""
        return step % self.windows_per_epoch == 0


class EvalStreams:
    """The validation split as B streams of (m-1)//B characters, state carried, read in windows of T (the last
    one shorter). With a budget of `max_chars`, each stream is read for its first max_chars // B characters
    only: the same part at every evaluation and for any number of processes, spread over the whole split (B
    pieces, one at the start of each stream), so an evaluation's cost does not grow with the corpus.
    serve.score uses the same layout (--max-chars), so the two losses agree."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, max_chars: int | None = None):
        if len(ids) < batch_size + 1:
            raise UserError(
                f"the validation split has {len(ids):,} characters, too few for {batch_size} streams "
                f"(needs at least {batch_size + 1:,}): raise data.val_fraction, use a smaller "
                "train.batch_size, or a longer text"
            )
        self.ids = ids
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.stream_len = (len(ids) - 1) // batch_size  # where stream b starts: b * stream_len
        self.read_len = self.stream_len if max_chars is None else min(self.stream_len, max_chars // batch_size)
        self.reader = WindowReader(ids)

    @property
    def chars(self) -> int:
        """How many characters an evaluation scores (predicts)."""
        return self.batch_size * self.read_len

    def windows(self, first: int, last: int):
        """Yield (inputs, targets) int64 arrays (last-first, t <= T) covering streams [first, last)."""
        for start in range(0, self.read_len, self.seq_len):
            length = min(self.seq_len, self.read_len - start)
            starts = np.arange(first, last) * self.stream_len + start
            chunk = self.reader.read(starts, length + 1)  # (b, t+1)
            yield chunk[:, :-1], chunk[:, 1:]


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.data SPEC` or `--config FILE [key=value ...]`: resolve and encode a corpus (as the
    config's data.path, data.normalize and data.cache_dir say), print where its ids live. launch.sh runs it
    on every machine before a run of several processes, so that no process waits for a long first encode in
    a collective."""
    import argparse

    from trainer.config import check_processes, load_config

    parser = argparse.ArgumentParser(prog="trainer.data", description="Encode a corpus into the id cache.")
    parser.add_argument("spec", nargs="?", help="a data.path value: a file, a folder, a glob, tinyshakespeare, "
                        f"{', '.join(BUILTINS)}")  # fmt: skip
    parser.add_argument("--config", help="take data.path, data.normalize and data.cache_dir from this config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the config, e.g. data.path=novel.txt")
    parser.add_argument("--processes", type=int, help="with --config: check that the run fits this many processes")
    parser.add_argument(
        "--write-val",
        metavar="FILE",
        help="with --config: write the validation split (data.val_fraction) to FILE as text, for "
        "`python -m serve.score MODEL FILE` to score it whole",
    )
    args = parser.parse_args(argv)
    try:
        val_fraction = None
        if args.config is not None:
            overrides = [args.spec, *args.overrides] if args.spec else args.overrides
            cfg = load_config(args.config, overrides)
            if args.processes is not None:
                check_processes(cfg, args.processes)
            spec, cache_dir, form = cfg.data.path, cfg.data.cache_dir, cfg.data.normalize
            val_fraction = cfg.data.val_fraction
        elif args.spec is not None and not args.overrides and args.write_val is None:
            spec, cache_dir, form = args.spec, None, "NFC"
        else:
            print("error: give a data.path value, or --config FILE [key=value ...] (with --write-val)", file=sys.stderr)
            return 2
        corpus = load_corpus(spec, cache_dir, form)
        if args.write_val is not None:
            _, val_ids = split(corpus.ids, val_fraction)
            try:
                with atomic_write(Path(args.write_val)) as out:
                    for chunk in id_chunks(val_ids):
                        out.write(corpus.decode(chunk).encode("utf-8"))
            except OSError as e:
                raise UserError(f"--write-val {args.write_val}: cannot be written: {e.strerror or e}") from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(corpus.ids):,} characters, vocab {len(corpus.vocab)}, sha256 {corpus.sha256[:16]}; "
        f"ids cached in {corpus.ids.filename}"
        + (f"; validation split written to {args.write_val}" if args.write_val else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
