"""The checkpoint's layout, and the one pair that moves it to and from disk.

A checkpoint is one file that `torch.load(path, weights_only=True)` reads, written atomically
(trainer/files.py), so a kill at any moment leaves the previous file or the new one, never a torn one.
No random generator state is in it: after the seeded init every draw is keyed by (seed, step, stream)
(trainer/regularize.py) and the learning rate is a function of the step, so these keys are all that exact
resume needs. What writes them is `Run.state_dict` in trainer/run.py; what reads them back is
`Run.load_state_dict`.
"""

from __future__ import annotations

import errno
import io
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, TypedDict

import torch

from trainer.errors import UserError
from trainer.files import atomic_write

FORMAT = "charlstm-ckpt/1"


class StreamState(TypedDict):
    h: torch.Tensor  # (B, L, H): the carried state of all B global streams, in stream order
    c: torch.Tensor  # (B, L, H)


class _Required(TypedDict):
    """The keys other tools rely on (export, scripts)."""

    format: str  # FORMAT
    model: dict[str, torch.Tensor]  # state_dict of the bare model (no DDP prefixes); the average with ema_decay
    vocab: list[str]  # vocab[id] = the character
    config: dict[str, Any]  # the resolved config, as a plain dict
    step: int  # optimizer steps done
    val_loss: float | None  # of `model` on the validation split, when this save followed an evaluation


class Checkpoint(_Required, total=False):
    """Written by every save; a checkpoint from outside charlstm may hold only the required keys."""

    normalize: str  # the Unicode form (NFC, NFKC, none) the corpus was put into before `vocab` was built
    optimizer: dict[str, Any]  # AdamW's state_dict
    best_val_loss: float  # the best validation loss so far (best.pt holds those weights)
    train_seconds: float  # seconds of training so far (evaluations and saves not counted); for the record
    corpus_sha256: str  # of the text the run trains on
    streams: StreamState
    max_steps: int  # the run's total steps as resolved (train.max_steps=auto fixes it after timing steps)
    train_weights: dict[str, torch.Tensor]  # with train.ema_decay: the weights Adam updates


REQUIRED_KEYS = tuple(k for k in _Required.__annotations__ if k != "format")


class DiskFullError(UserError):
    """No room for a save: the file before it is kept, and a rerun after space is freed resumes from it."""


def no_room(path: Path, needed: int, free: int | None) -> DiskFullError:
    free_text = f"{free / 1e6:,.1f} MB are free" if free is not None else "the device said it is full"
    return DiskFullError(
        f"no space left to write {path}: it needs {needed / 1e6:,.1f} MB and {free_text} on "
        f"{path.parent.resolve()}; the earlier checkpoints are intact: free some space and rerun to resume"
    )


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` atomically. It is serialized in memory first, so that a full disk is found before the
    write (torch.save into a full disk fails with an error that has lost its errno) and said in one line."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    payload = buffer.getbuffer()
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < len(payload):
        raise no_room(path, len(payload), free)
    try:
        with atomic_write(path) as f:
            f.write(payload)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # filled meanwhile, or a quota below the free space
            raise no_room(path, len(payload), None) from None
        raise


def load_checkpoint(path: str | Path) -> Checkpoint:
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
    except Exception as e:  # any bytes reach the weights-only unpickler, and it fails on them in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path}: not a charlstm checkpoint (unreadable or truncated: {type(e).__name__}: {first[:160]})"
        ) from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: not a charlstm checkpoint (holds a {type(payload).__name__}, not a dict)")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise UserError(f"{path}: not a complete charlstm checkpoint (missing keys: {', '.join(missing)})")
    if payload.get("format") != FORMAT:
        found = f"format {payload['format']!r}" if "format" in payload else "no format key"
        raise UserError(f"{path}: not a checkpoint this charlstm reads ({found}; it reads {FORMAT!r})")
    vocab = payload["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(ch, str) and len(ch) == 1 for ch in vocab):
        raise UserError(f"{path}: checkpoint vocab must be a list of single characters")
    if not isinstance(payload["config"], dict) or not isinstance(payload["model"], dict):
        raise UserError(f"{path}: checkpoint config and model must be mappings")
    return payload
