"""Where a corpus comes from: a file, a folder or a glob (their files joined), a built-in text, or the Tiny
Shakespeare download. Each resolves to one readable text file (`resolve_corpus`)."""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import sysconfig
import urllib.request
from pathlib import Path

from trainer.data import digests as file_digests  # by module: tests patch its constants
from trainer.data.digests import Digests, user_cache_dir
from trainer.errors import UserError
from trainer.files import atomic_write, atomic_write_bytes

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def fetch_tinyshakespeare() -> Path:
    """Tiny Shakespeare from the char-rnn repository, downloaded once into the cache, sha256-checked."""
    path = user_cache_dir() / "tinyshakespeare.txt"
    if path.is_file() and file_digests.sha256_file(path) == TINYSHAKESPEARE_SHA256:
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
    # many small files make a large corpus: remember their digests
    remember = sum(file.stat().st_size for file in files) > file_digests.HASH_WHOLE_BYTES
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
