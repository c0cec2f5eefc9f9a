"""Where a corpus comes from: a file, a folder or a glob (their files joined), a built-in text, or the Tiny
Shakespeare download. Each resolves to one plain text file or to the list of files whose documents make it
(`resolve_corpus`); `source_key` names such a list's text by the files' contents and the options."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys
import sysconfig
import urllib.request
from pathlib import Path

from trainer.data import digests as file_digests  # by module: tests patch its constants
from trainer.data.digests import Digests, user_cache_dir
from trainer.data.formats import ReadOptions, SourceFile, is_plain, saved_dataset_files, source_file
from trainer.errors import UserError
from trainer.files import atomic_write_bytes

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


FILE_SEPARATOR = "\n\n"  # data.separator's default: a blank line marks where a document ends
BUILTINS = {"builtin:python-docs": build_python_docs, "builtin:python-stdlib": build_python_stdlib}


def resolve_corpus(spec: str) -> Path | list[SourceFile]:
    """A data.path value -> one plain text file to encode as it is (the file itself, a built-in corpus), or the
    files whose documents make the corpus, in order: for a folder every file under it, recursively, hidden ones
    aside, in sorted path order (a folder written by `datasets`' save_to_disk: its Arrow files); for a glob the
    files it matches, sorted; a compressed or row-format file alone."""
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
        return [_readable(source_file(file)) for file in files]
    if not path.exists():
        raise UserError(f"data.path: {spec!r} does not exist")
    if path.is_dir():
        files = _folder_files(path)
        if not files:
            raise UserError(f"data.path: the folder {spec!r} has no files")
        return files
    if not path.is_file():
        raise UserError(f"data.path: {spec!r} is not a file")
    file = _readable(source_file(path))
    return path if is_plain(file) else [file]


def _folder_files(folder: Path) -> list[SourceFile]:
    """The files under `folder` in sorted path order, hidden ones aside; a saved dataset inside is its Arrow
    files in its own order, its metadata (state.json, dataset_info.json) left out."""
    saved = saved_dataset_files(folder)
    if saved is not None:
        return [_readable(SourceFile(file, "arrow", None)) for file in saved]
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files += _folder_files(entry)
        elif entry.is_file():
            files.append(_readable(source_file(entry)))
    return files


def _readable(file: SourceFile) -> SourceFile:
    if not os.access(file.path, os.R_OK):
        raise UserError(f"data.path: {str(file.path)!r} is not readable")
    return file


def source_key(files: list[SourceFile], options: ReadOptions, digests: Digests) -> str:
    """A digest of the files' contents and order, their formats and the options that read them: the same key,
    the same text."""
    key = hashlib.sha256(json.dumps(["charlstm-sources/1", dataclasses.astuple(options)]).encode())
    # many small files make a large corpus: remember their digests
    remember = sum(file.path.stat().st_size for file in files) > file_digests.HASH_WHOLE_BYTES
    for file in files:
        key.update(json.dumps([file.form, file.compression, digests.sha256(file.path, remember)]).encode())
    return key.hexdigest()
