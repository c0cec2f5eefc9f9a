"""What changes as a run trains, apart from the weights and the optimizer: `TrainState`, with the pair that
writes it into a checkpoint and reads it back (as torchtitan keeps its train state).

A process of an N-process run carries the LSTM state (h, c) of its own streams [start, stop) of the B global
streams; the checkpoint holds all B, in stream order, so that a run resumes on any number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TrainState:
    """Each field has one writer during training, named beside it (besides `load_state_dict` at a resume)."""

    step: int = 0  # optimizer steps done; written by apply_update (trainer/step.py)
    best_val: float = math.inf  # the best validation loss so far (best.pt holds its weights); Run.evaluate
    h: Tensor | None = None  # (L, b, H) carried state of this process's streams; compute_gradients, and
    c: Tensor | None = None  # apply_update zeroes both on a skipped (non-finite) step
    bad_steps: int = 0  # non-finite steps in a row (never saved: a save follows only good steps); apply_update
    max_steps: int | None = None  # the plan: the total; None until train.max_steps=auto has timed the first
    # steps; Run.start sets it from train.max_steps, Budget.replan (trainer/stopping.py) plans and revises it
    resumed_from: int | None = None  # the step of the checkpoint this process started from; load_state_dict
    train_seconds: float = 0.0  # seconds of training steps so far, evaluations and saves not counted; Meter.count
    loss_scale: float | None = None  # fp16: GradScaler's scale after the last step (not saved: read again);
    # step_overflowed (trainer/step.py)

    def state_dict(self, gather: Callable[[Tensor], Tensor]) -> dict:
        """The checkpoint's keys for this state. `gather` takes each process's (b, L, H) to the (B, L, H) of
        all streams in stream order (accelerator.gather: collective, every process calls it)."""
        state = {
            "step": self.step,
            "best_val_loss": self.best_val,
            "train_seconds": self.train_seconds,
            "streams": {
                "h": gather(self.h.transpose(0, 1).contiguous()).cpu(),
                "c": gather(self.c.transpose(0, 1).contiguous()).cpu(),
            },
        }
        if self.max_steps is not None:
            state["max_steps"] = self.max_steps
        return state

    def load_state_dict(self, ckpt: dict, start: int, stop: int, device: torch.device, keep_plan: bool) -> None:
        """Resume from a checkpoint's keys: this process's streams are [start, stop). With `keep_plan`
        (train.max_steps=auto) the total saved when the run began is kept; an explicit one wins."""
        self.step = self.resumed_from = ckpt["step"]
        self.best_val = ckpt.get("best_val_loss", math.inf)
        self.train_seconds = ckpt.get("train_seconds", 0.0)
        if keep_plan:
            self.max_steps = ckpt.get("max_steps")
        for name in ("h", "c"):  # (B, L, H) of all streams -> (L, b, H) of this process's
            mine = ckpt["streams"][name][start:stop].transpose(0, 1).contiguous()
            setattr(self, name, mine.to(device))
