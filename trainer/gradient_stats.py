"""The rms rule's statistics for a checkpoint: the RMS of each weight's gradient over its own training split
(or a text the user names), computed once and kept beside the checkpoint in CKPT.gradient_rms.pt, keyed by
the checkpoint's sha256 and the segment length. The checkpoint itself is never written.
"""

from __future__ import annotations

import hashlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from trainer.dynamic import gradient_rms
from trainer.errors import UserError
from trainer.files import atomic_write_bytes

STATS_BATCH = 100  # parallel streams of the training text, as in the paper's implementation
STATS_CHARS = 1_000_000  # characters of the training split read for the statistics, at most


def stats_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".gradient_rms.pt")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def training_ids(ckpt: dict, path: Path, stats_text: Path | None) -> np.ndarray:
    """Ids (in the checkpoint's vocabulary) of the text the statistics are taken on."""
    from trainer.data import ReadOptions, load_corpus, split

    vocab_index = {ch: i for i, ch in enumerate(ckpt["vocab"])}
    if stats_text is not None:
        from trainer.score import encode_text, read_file

        return encode_text(
            read_file(stats_text), ckpt["vocab"], ckpt.get("normalize", "NFC"), "skip", str(stats_text)
        ).numpy()
    data = ckpt["config"].get("data") or {}
    spec = data.get("path")
    if not spec:
        raise UserError(f"{path}: the checkpoint names no training text: give one with --stats-text FILE")
    try:
        corpus = load_corpus(
            str(spec), data.get("cache_dir"), ckpt.get("normalize", "NFC"), ReadOptions.of(data), notes=False
        )
    except UserError as e:
        raise UserError(f"the training text of {path} cannot be read ({e}): give one with --stats-text FILE") from None
    if ckpt.get("corpus_sha256", corpus.sha256) != corpus.sha256:
        raise UserError(
            f"data.path {spec!r} no longer holds the text {path} was trained on (another sha256): give that text "
            "with --stats-text FILE"
        )
    train, _ = split(corpus.ids, float(data.get("val_fraction", 0.1)))
    train = np.asarray(train[:STATS_CHARS])
    to_checkpoint = np.array([vocab_index.get(ch, -1) for ch in corpus.vocab], dtype=np.int64)
    ids = to_checkpoint[train]
    return ids[ids >= 0]


def gradient_rms_for(
    model: torch.nn.Module, ckpt: dict, path: Path, segment: int, stats_text: Path | None
) -> dict[str, torch.Tensor]:
    """The statistics for `model` (the checkpoint at `path`), from the file beside it when it matches."""
    key = {
        "checkpoint_sha256": file_sha256(path),
        "segment": segment,
        "text": "training split" if stats_text is None else file_sha256(stats_text),
    }
    kept = stats_path(path)
    stored = _read(kept)
    if stored is not None and stored.get("key") == key:
        return stored["rms"]
    ids = training_ids(ckpt, path, stats_text)[:STATS_CHARS]
    batch = min(STATS_BATCH, max(1, len(ids) // (2 * segment + 2)))  # a short text: fewer, longer streams
    try:
        rms = gradient_rms(model, ids, segment, batch)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    buffer = io.BytesIO()
    torch.save({"key": key, "rms": rms}, buffer)
    try:
        atomic_write_bytes(kept, buffer.getvalue())
    except OSError as e:
        print(f"charlstm: the gradient statistics could not be kept in {kept} ({e.strerror or e})", file=sys.stderr)
    return rms


def _read(path: Path) -> dict | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = torch.load(path, map_location="cpu", weights_only=True)
        return stored if isinstance(stored, dict) and isinstance(stored.get("rms"), dict) else None
    except Exception:  # absent, or unreadable: computed again
        return None
