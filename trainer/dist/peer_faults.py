"""A peer that hangs or vanishes on NCCL ends the run with the same one line as on gloo.

gloo raises in the process that waited, and trainer/train.py `collective_failure` turns that into one line.
NCCL does not raise: its watchdog thread watches every collective, and with torch's default
TORCH_NCCL_ASYNC_ERROR_HANDLING=3 (SkipCleanUp) it aborts the whole process with a C++ log on a timeout. So
before the process group starts on CUDA the run asks for 2 (CleanUpOnly: the watchdog aborts the
communicators but leaves the process alive), and `check_peers` asks the process group afterwards: once the
communicators are aborted, the collectives in flight return, with garbage, instead of raising. It is called
after each step's one read of the device (trainer/step.py `agree`), after the collective part of a save and
before anything is written (trainer/run.py `Run.save`), and after an evaluation (`Run.evaluate`).

Where the 2 is set: torchelastic (torchrun, and `accelerate launch`, which runs it) gives every worker
TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (TearDown: abort the process) unless its own environment has the variable,
so a worker cannot tell torchelastic's 1 from a user's. The launcher's plan (trainer/launch/plan.py) therefore
sets it for the launch on GPUs, and trainer/dist/precision.py sets it in a worker started some other way.

Not yet run on real GPUs: no machine with several GPUs has been available to this project.
"""

from __future__ import annotations

from collections.abc import Mapping

ASYNC_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"
CLEAN_UP_ONLY = "2"  # abort the communicators on a timeout or an error, leave the process alive
# torch still reads the variable's old name, and when both are set the new one wins: a user who set only the
# old one would lose their choice to ours
USERS_NAMES = (ASYNC_ERROR_HANDLING, "NCCL_ASYNC_ERROR_HANDLING")


class PeerError(RuntimeError):
    """NCCL's watchdog found a collective that timed out (`timed_out`) or failed: another process hung, was
    stopped, died or lost its network. trainer/train.py `collective_failure` says it in one line."""

    def __init__(self, message: str, timed_out: bool):
        super().__init__(message)
        self.timed_out = timed_out


def process_group_env(env: Mapping[str, str], device: str) -> dict[str, str]:
    """The environment variables to set before the process group starts on `device` (what `env`, the current
    environment, lacks): on CUDA, TORCH_NCCL_ASYNC_ERROR_HANDLING=2, so that a timeout or a lost peer leaves the
    process alive to say so in one line. A value the user set (under either of torch's names) wins: nothing is
    returned then. Nothing either on any other device (gloo has no watchdog)."""
    if device != "cuda" or any(name in env for name in USERS_NAMES):
        return {}
    return {ASYNC_ERROR_HANDLING: CLEAN_UP_ONLY}


def check_peers(accelerator) -> None:
    """Raise PeerError when NCCL's watchdog has found a collective of this run's process group timed out or
    failed (its communicators are aborted then, and what the last collectives returned is garbage). Does
    nothing on one process, off CUDA, or where the backend cannot tell (a torch without `get_error`)."""
    if accelerator.num_processes < 2 or accelerator.device.type != "cuda":
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cuda"))
    except RuntimeError:  # a group with no CUDA backend: no NCCL watchdog to ask
        return
    get_error = getattr(backend, "get_error", None)
    if get_error is not None:
        raise_for(get_error())


def raise_for(error) -> None:
    """PeerError for an ErrorType of the process group other than SUCCESS."""
    from torch._C._distributed_c10d import ErrorType

    if error == ErrorType.SUCCESS:
        return
    name = getattr(error, "name", str(error))
    raise PeerError(f"NCCL's watchdog reported {name}", timed_out=error == ErrorType.TIMEOUT)
