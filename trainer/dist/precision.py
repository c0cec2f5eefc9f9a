"""The device and the precision a run trains in, and the Accelerator that applies them.

`train.mixed_precision: auto` (the default) picks what the hardware runs natively:
- a CUDA GPU with bf16: bf16, with the LSTM layers in fp32/TF32 (see `Precision.fp32_lstm`);
- a CUDA GPU without bf16: fp16 with loss scaling;
- a CPU whose oneDNN runs the bf16 LSTM natively (AVX-512 BF16 or AMX): bf16;
- anything else (an AVX2-only CPU, an Apple GPU): fp32.
The CPU case is decided by what the kernels do, not by a list of CPU names: one tiny bf16 LSTM forward and
backward under autocast, tried once per process. On a CPU without native bf16, oneDNN cannot even build
the bf16 LSTM ("could not create a primitive descriptor"), so an explicit `bf16` there is a user error.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import NamedTuple

import torch

from trainer.config import Config
from trainer.errors import UserError
from trainer.dist.peer_faults import process_group_env
from trainer.dist.group import join_process_group


class Precision(NamedTuple):
    mode: str  # what accelerate gets: "no" (fp32), "bf16" or "fp16"
    reason: str  # why, for the run's first line
    fp32_lstm: bool  # run the LSTM layers in fp32 inside the autocast region (bf16 on CUDA)


def device_type() -> str:
    """cuda, else Apple's mps, else cpu: what accelerate picks by itself."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@functools.cache
def cpu_runs_bf16_lstm() -> bool:
    """True when a bf16 LSTM trains on this CPU: one tiny forward and backward under autocast, cached."""
    with torch.random.fork_rng(devices=[]):  # the probe's init must not move the run's random stream
        lstm = torch.nn.LSTM(8, 8, batch_first=True)
        x = torch.ones(2, 3, 8, requires_grad=True)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, _ = lstm(x)
            out.float().sum().backward()
        except RuntimeError:
            return False
    return True


def choose_precision(requested: str, device: str) -> Precision:
    """The precision for train.mixed_precision=`requested` on `device`; UserError where it cannot run."""
    if requested == "auto":
        if device == "cuda":
            if torch.cuda.is_bf16_supported():
                return Precision("bf16", "this GPU has bf16; LSTM layers in fp32/TF32", True)
            return Precision("fp16", "this GPU has no bf16; fp16 with loss scaling", False)
        if device == "mps":
            return Precision("no", "mixed precision on Apple GPUs is untested here", False)
        if cpu_runs_bf16_lstm():
            return Precision("bf16", "this CPU runs the bf16 LSTM natively", False)
        return Precision("no", "this CPU has no native bf16", False)
    if requested == "fp16" and device != "cuda":
        raise UserError(f"train.mixed_precision=fp16 needs a CUDA GPU (this run is on {device}); use auto or no")
    if requested == "bf16":
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("train.mixed_precision=bf16: this GPU has no bf16; use auto (fp16 here) or fp16")
        if device == "cpu" and not cpu_runs_bf16_lstm():
            raise UserError(
                "train.mixed_precision=bf16: this CPU cannot run the bf16 LSTM (oneDNN has no native bf16 here); "
                "use auto or no"
            )
        if device == "mps":
            raise UserError("train.mixed_precision=bf16 is untested on Apple GPUs; use auto or no")
    return Precision(requested, "as configured", requested == "bf16" and device == "cuda")


def make_accelerator(cfg: Config, trackers: list[str] | None = None):
    """(Accelerator, Precision) for this run; `trackers` (tensorboard, wandb) log into out_dir."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    device = device_type()
    precision = choose_precision(cfg.train.mixed_precision, device)
    # accelerate keeps one process-wide state; a second train() in the same process (tests, notebooks)
    # may ask for another precision, so start from a clean one.
    AcceleratorState._reset_state(reset_partial_state=True)
    # cpu=True on a CPU-only machine: that is what makes accelerate join a torchrun process group (gloo)
    timeout = timedelta(seconds=cfg.train.collective_timeout)
    # on CUDA, before NCCL's process group reads it: a timed-out collective leaves this process alive to say so
    # in one line (trainer/dist/peer_faults.py); the user's own setting wins
    os.environ.update(process_group_env(os.environ, device))
    join_process_group(timeout)
    accelerator = Accelerator(
        mixed_precision=precision.mode,
        cpu=device == "cpu",
        log_with=trackers or None,
        project_dir=cfg.out_dir if trackers else None,
        # a peer that hangs or vanishes ends a collective after this long, not gloo's 30 minutes (trainer/train.py
        # turns the error into one line); the same bound covers the processes' first meeting
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
    )
    return accelerator, precision
