"""Where a training step lets the host wait for the device, named so that it is the only place.

A CUDA step runs asynchronously: the host queues kernels and goes on, as long as nothing reads a device value or
copies from pageable memory. The step reads the device once, the processes' verdict (trainer/step.py `agree`),
because the skip, the stop and the save are the host's decisions; fp16 reads the loss scale after the update too.
`host_read` is that read. Under `torch.cuda.set_sync_debug_mode("error")` (the GPU test) it is allowed, and any
other wait raises.
"""

from __future__ import annotations

import torch


def host_read(values: torch.Tensor) -> list:
    """values.tolist(): the step's one wait for the device (allowed under the CUDA sync debug mode)."""
    if not values.is_cuda:
        return values.tolist()
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        return values.tolist()
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def to_device(values: list[float], device: torch.device) -> torch.Tensor:
    """A few host numbers as a float32 tensor on the device, without making the host wait (pinned on CUDA)."""
    host = torch.tensor(values, dtype=torch.float32)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
