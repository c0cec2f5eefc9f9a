"""The one pair that moves training state to and from disk.

A checkpoint is one file that `torch.load(path, weights_only=True)` reads, written atomically (temp
file, fsync, rename, fsync of the folder), so a kill at any moment leaves the previous file or the new
one, never a torn one. Keys (DESIGN.md): model, vocab, config, step, val_loss; for exact resume also
optimizer, best_val_loss, corpus_sha256 and streams (the carried (h, c) of all B global streams,
(B, L, H) each). With train.ema_decay, `model` is the weight average (what val_loss measures and export
reads) and `train_weights` the weights Adam updates. No RNG state is needed: after the seeded init the
only randomness is dropout, weight drop and state resets, all keyed by (seed, step, stream), and the
learning rate is a pure function of the step.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from trainer.config import UserError

FORMAT = "charlstm-ckpt/1"
REQUIRED_KEYS = ("model", "vocab", "config", "step", "val_loss")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # make the rename itself durable
    finally:
        os.close(folder)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint; anything wrong raises UserError with one line. Never unpickles code."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing them
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = re.search(r"GLOBAL (\S+)", str(e))
        if code:  # a pickled object or function: torch's weights-only unpickler refused it unexecuted
            raise UserError(
                f"{path}: refused to load: it holds pickled Python objects ({code.group(1)}), which are never "
                "executed; a charlstm checkpoint holds only tensors and plain data"
            ) from None
        raise UserError(f"{path}: not a charlstm checkpoint (not a file written by torch.save)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a charlstm checkpoint (unreadable or truncated: {first[:160]})") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: not a charlstm checkpoint (holds a {type(payload).__name__}, not a dict)")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise UserError(f"{path}: not a complete charlstm checkpoint (missing keys: {', '.join(missing)})")
    vocab = payload["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(ch, str) and len(ch) == 1 for ch in vocab):
        raise UserError(f"{path}: checkpoint vocab must be a list of single characters")
    if not isinstance(payload["config"], dict) or not isinstance(payload["model"], dict):
        raise UserError(f"{path}: checkpoint config and model must be mappings")
    return payload
