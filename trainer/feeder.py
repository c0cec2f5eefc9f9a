"""This process's training windows on the device, prepared one step ahead on a background thread.

Everything a step takes from the host is made here: the inputs with their noise (train.input_noise), the
targets, and which streams start from a zero state (epoch starts and train.state_reset). All of it is keyed by
(seed, step, stream) (trainer/regularize.py), so preparing step s+1 while step s runs changes no number. On CUDA
the tensors are pinned and copied with non_blocking=True: a copy from pageable memory makes the host wait for the
device, and the host would then never queue work ahead of it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.config import Config
from trainer.data.streams import TrainStreams
from trainer.regularize import noisy_inputs, state_resets


@dataclass
class Window:
    """One step's window of streams [start, stop), on the host (pinned on CUDA) or on the device."""

    x: Tensor  # (b, T) int64 inputs, input noise applied
    y: Tensor  # (b, T) int64 targets (never noised)
    keep: Tensor | None  # (1, b, 1) float32: 0 for a stream whose state resets before this window; None if none does
    epoch_start: bool  # the window begins a pass over the data: every stream starts from a zero state

    def to(self, device: torch.device) -> Window:
        move = {"device": device, "non_blocking": True}  # from pinned memory: the host does not wait
        keep = None if self.keep is None else self.keep.to(**move)
        return Window(self.x.to(**move), self.y.to(**move), keep, self.epoch_start)


class WindowFeeder:
    """window(step) gives that step's window on the device and starts preparing step+1's. A step other than the
    one prepared (the first step, a resumed run) is prepared on the spot: the result never depends on the order."""

    def __init__(self, streams: TrainStreams, cfg: Config, start: int, stop: int, vocab_size: int, device):
        self.streams, self.cfg, self.stream_start, self.stream_stop = streams, cfg, start, stop
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"  # pinned memory needs a CUDA runtime, and only a copy to one gains
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charlstm-windows")
        self.ahead: tuple[int, Future[Window]] | None = None  # (step, its window being prepared)

    def window(self, step: int) -> Window:
        if self.ahead is not None and self.ahead[0] == step:
            host = self.ahead[1].result()
        else:
            host = self.prepare(step)
        self.ahead = (step + 1, self.pool.submit(self.prepare, step + 1))
        return host.to(self.device)

    def prepare(self, step: int) -> Window:
        """The window of `step` on the host: read, noised, its resets drawn; pinned on CUDA."""
        x, y = self.streams.window(step, self.stream_start, self.stream_stop)  # (b, T) each
        x = noisy_inputs(self.cfg, step, self.stream_start, torch.from_numpy(x), self.vocab_size)
        epoch_start = self.streams.starts_epoch(step)  # every stream resets: no draw needed
        resets = None if epoch_start else state_resets(self.cfg, step, self.stream_start, self.stream_stop)  # (b,) bool
        keep = None if resets is None or not resets.any() else (~resets).float()[None, :, None]
        window = Window(x, torch.from_numpy(y), keep, epoch_start)
        if self.pin:
            keep = None if keep is None else keep.pin_memory()
            window = Window(window.x.pin_memory(), window.y.pin_memory(), keep, epoch_start)
        return window

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
