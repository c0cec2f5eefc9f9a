"""Corpus -> character ids -> sharded stateful streams.

The corpus is read in chunks and encoded with numpy (no Python loop per character), so a 100 MB
text encodes at tens of MB/s and a corpus larger than RAM still trains: the ids are written once to
a memory-mapped .npy cache in the user's cache folder ($XDG_CACHE_HOME/charlstm/ids, else
~/.cache/charlstm/ids), keyed by the corpus' sha256; nothing is written beside the corpus. The cache is
checked against digests written with it, and rebuilt (with one line saying so) when it does not match.

Stream layout (training). The train split of n ids is cut into B streams of S = W*T characters,
W = (n - 1) // (B*T) windows per epoch. Stream b reads ids[b*S + w*T : b*S + (w+1)*T] at window w
and predicts the same slice shifted by one, so the B streams tile ids[0 : B*S] exactly, each one
contiguous from window to window. The window is a pure function of the step (w = step % W), which
makes resume exact; at w == 0 a new epoch starts and the carried LSTM state is reset.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import sys
import sysconfig
import unicodedata
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import UserError
from trainer.files import atomic_path, atomic_write, atomic_write_bytes

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CHUNK_BYTES = 16 << 20  # encode 16 MB at a time: bounded memory for any corpus size
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


FILE_SEPARATOR = "\n\n"  # between the files of a folder or a glob: a blank line marks where a document ends


def resolve_corpus(spec: str) -> Path:
    """A data.path value -> one readable text file: the file itself, a built-in corpus, or for a folder (every
    file under it, recursively, hidden ones aside) or a glob the files joined in sorted path order with
    FILE_SEPARATOR, written once into the user cache and keyed by their contents."""
    if spec == "tinyshakespeare":
        return fetch_tinyshakespeare()
    if spec == "builtin:python-stdlib":
        return build_python_stdlib()
    if spec.startswith("builtin:"):
        raise UserError(f"data.path: unknown built-in corpus {spec!r} (known: builtin:python-stdlib)")
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"data.path: the glob {spec!r} matches no file")
        return join_files(files, spec)
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
        return join_files(files, spec)
    if not path.is_file():
        raise UserError(f"data.path: {spec!r} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"data.path: {spec!r} is not readable")
    return path


def join_files(files: list[Path], spec: str) -> Path:
    """The files' texts joined with FILE_SEPARATOR, cached by a digest of their contents (and order)."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(_sha256_file(file).encode())
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

    def with_vocab(self, vocab: list[str]) -> Corpus:
        """The same text with ids into `vocab`, which holds every character of this one (fine-tuning keeps a
        model's vocabulary and appends what the new text adds). The ids are remapped in memory."""
        lookup = np.array([vocab.index(ch) for ch in self.vocab], dtype=id_dtype(len(vocab)))
        return Corpus(lookup[self.ids], vocab, self.sha256)


def id_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise AssertionError("unreachable: Unicode has fewer than 2**32 code points")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


NORMAL_FORMS = ("NFC", "NFKC", "none")


def normalize(text: str, form: str) -> str:
    """The text in Unicode normal form `form` (NFC, NFKC), or as it is (none). Samplers put a prime into the
    form the corpus was put into, so that an ñ typed as one code point meets an ñ stored as n + U+0303."""
    return text if form == "none" else unicodedata.normalize(form, text)


def _text_chunks(path: Path, form: str):
    """Yield the corpus as text in normal form `form`, chunk by chunk; bad UTF-8 -> UserError with offset.
    A chunk ends at its last newline (the rest waits for the next one): normalization never reaches across a
    newline, so chunking changes nothing."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, carry = 0, ""
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_BYTES)
            final = not block
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path}: not UTF-8 text (invalid byte 0x{e.object[e.start]:02x} at byte offset "
                    f"{offset - pending + e.start})"
                ) from None
            offset += len(block)
            text = carry + text
            cut = len(text) if final or form == "none" else text.rfind("\n") + 1
            carry = text[cut:]
            if cut:
                yield normalize(text[:cut], form)
            if final:
                return


def _codepoint_chunks(path: Path, form: str):
    """Yield the corpus as code point arrays (uint8 for ASCII chunks, else uint32), one per chunk."""
    for text in _text_chunks(path, form):
        if text.isascii():  # the common case: one byte per character, no re-encoding needed
            yield np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        else:
            yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def encode_file(path: Path, out: Path, form: str = "NFC") -> tuple[np.ndarray, list[str]]:
    """Two chunked passes: count code points, then map them to ids into a .npy file at `out`."""
    counts = np.zeros(MAX_CODEPOINT, dtype=np.int64)
    for cps in _codepoint_chunks(path, form):
        span = 256 if cps.dtype == np.uint8 else MAX_CODEPOINT
        counts[:span] += np.bincount(cps, minlength=span)
    total = int(counts.sum())
    if total == 0:
        raise UserError(f"{path}: the file is empty")
    codepoints = np.flatnonzero(counts)
    vocab = [chr(cp) for cp in codepoints]
    dtype = id_dtype(len(vocab))
    lookup = np.zeros(MAX_CODEPOINT, dtype=dtype)
    lookup[codepoints] = np.arange(len(codepoints), dtype=dtype)

    with atomic_path(out) as tmp:
        ids = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total,))
        position = 0
        for cps in _codepoint_chunks(path, form):
            ids[position : position + len(cps)] = lookup[cps]
            position += len(cps)
        ids.flush()
        del ids
    return np.load(out, mmap_mode="r"), vocab


def cache_paths(sha256: str, form: str, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The cached ids (.npy) and their record (.json: the vocabulary and the digests) of a corpus in a form."""
    folder = (Path(cache_dir).expanduser() if cache_dir else user_cache_dir()) / "ids"
    stem = f"{sha256[:32]}.{form.lower()}"
    return folder / f"{stem}.ids.npy", folder / f"{stem}.json"


def _cached(ids_path: Path, record_path: Path, sha256: str) -> Corpus | None:
    """The cached encoding if it is whole and matches its digests, else None."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        vocab = record["vocab"]
        if record["corpus_sha256"] != sha256 or record["vocab_sha256"] != _digest(json.dumps(vocab).encode()):
            return None
        if record["ids_sha256"] != _sha256_file(ids_path):
            return None
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
    path = resolve_corpus(spec)
    sha256 = _sha256_file(path)
    ids_path, record_path = cache_paths(sha256, form, cache_dir)
    if ids_path.exists() or record_path.exists():
        corpus = _cached(ids_path, record_path, sha256)
        if corpus is not None:
            return corpus
        print(f"charlstm: the id cache of {path} in {ids_path.parent} is damaged; rebuilding it", file=sys.stderr)
    try:
        ids, vocab = encode_file(path, ids_path, form)
        record = {"vocab": vocab, "corpus_sha256": sha256, "vocab_sha256": _digest(json.dumps(vocab).encode())}
        record["ids_sha256"] = _sha256_file(ids_path)
        atomic_write_bytes(record_path, json.dumps(record).encode("utf-8"))
    except OSError as e:
        raise UserError(f"the id cache {ids_path.parent} cannot be written: {e.strerror or e}") from None
    return Corpus(ids, vocab, sha256)


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): validation is the LAST val_fraction of the corpus."""
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


# ---------------------------------------------------------------- streams


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
        self._offsets = np.arange(seq_len + 1)

    def window(self, step: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (last-first, T) int64 of streams [first, last) at this step."""
        w = step % self.windows_per_epoch
        starts = np.arange(first, last) * self.stream_len + w * self.seq_len
        chunk = self.ids[starts[:, None] + self._offsets].astype(np.int64)  # (b, T+1)
        return chunk[:, :-1], chunk[:, 1:]

    def starts_epoch(self, step: int) -> bool:
        """True when this step begins a pass over the data: the carried state must be reset."""
        return step % self.windows_per_epoch == 0


class EvalStreams:
    """The WHOLE validation split as B streams of (m-1)//B characters, read in windows of T (the last
    one shorter), state carried. serve.score uses the same layout, so the two losses agree."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        if len(ids) < batch_size + 1:
            raise UserError(
                f"the validation split has {len(ids):,} characters, too few for {batch_size} streams "
                f"(needs at least {batch_size + 1:,}): raise data.val_fraction, use a smaller "
                "train.batch_size, or a longer text"
            )
        self.ids = ids
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.stream_len = (len(ids) - 1) // batch_size

    def windows(self, first: int, last: int):
        """Yield (inputs, targets) int64 arrays (last-first, t <= T) covering streams [first, last)."""
        for start in range(0, self.stream_len, self.seq_len):
            length = min(self.seq_len, self.stream_len - start)
            starts = np.arange(first, last) * self.stream_len + start
            chunk = self.ids[starts[:, None] + np.arange(length + 1)].astype(np.int64)
            yield chunk[:, :-1], chunk[:, 1:]


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.data SPEC`: resolve and encode a corpus, print where it lives (used by launch.sh)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m trainer.data DATA_PATH   (a file, tinyshakespeare or builtin:python-stdlib)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        corpus = load_corpus(argv[0])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(corpus.ids):,} characters, vocab {len(corpus.vocab)}, sha256 {corpus.sha256[:16]}; "
        f"ids cached in {corpus.ids.filename}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
