"""Everything random or regularizing in training, keyed by (seed, step, stream).

No random generator state is carried from step to step: every draw comes from a generator seeded by
`stream_seed(seed, step, stream, purpose)`, or for dropout from a counter-based hash of (seed, step, stream,
layer, position). So a stream's dropout mask, reset or noise is the same whichever process owns the stream
(N processes compute what one computes), and a resumed run draws what the uninterrupted run drew (exact resume
without saving RNG state).
"""

from __future__ import annotations

import hashlib
import math
from enum import Enum

import torch

from trainer.config import Config

ALL_STREAMS = -1  # the stream index of draws shared by every stream (weight drop): no real stream has it


class Purpose(Enum):
    """What a draw is for."""

    DROPOUT = "dropout"
    WEIGHT_DROP = "weight_drop"
    RESET = "reset"
    NOISE = "noise"


# The key each purpose adds to (seed, step, stream), all in one place. Weight drop has the empty key (it predates
# the others, and changing a key would change every run's draws).
PURPOSE_KEYS = {Purpose.DROPOUT: "dropout", Purpose.WEIGHT_DROP: "", Purpose.RESET: "reset", Purpose.NOISE: "noise"}
MASK32 = 0xFFFFFFFF


def stream_seed(seed: int, step: int, stream: int, purpose: Purpose) -> int:
    """A 63-bit generator seed that depends on (seed, step, stream, purpose) only."""
    digest = hashlib.blake2b(f"{seed}/{step}/{stream}{PURPOSE_KEYS[purpose]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _generator(seed: int, step: int, stream: int, purpose: Purpose, device: torch.device | str = "cpu"):
    return torch.Generator(device=device).manual_seed(stream_seed(seed, step, stream, purpose))


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of an int64 tensor holding values in [0, 2^32): Wellons' lowbias32 with the
    multipliers found for it by the hash prospector, both below 2^31 so that no int64 product overflows. A
    bijection of [0, 2^32) whose output bits each depend on every input bit."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)


def dropout_masks(cfg: Config, step: int, start: int, stop: int, device: torch.device) -> torch.Tensor | None:
    """Keep-masks (L, b, T, H) bool for streams [start, stop): True keeps a unit, which the model scales by
    1/(1-p); T = 1 with locked dropout (one mask for the window's T steps). None when dropout is off.

    One draw for all of the process's streams, with no generator and nothing copied from the host: each entry
    is a hash of (seed, step, stream, layer, position) made on the device, kept where it is at least p * 2^32.
    A stream's mask is the same on any process and on any device."""
    p = cfg.model.dropout
    if p == 0.0:
        return None
    layers, hidden = cfg.model.layers, cfg.model.hidden
    steps = 1 if cfg.model.locked_dropout else cfg.train.seq_len
    key = stream_seed(cfg.train.seed, step, ALL_STREAMS, Purpose.DROPOUT)  # (seed, step): 63 bits
    streams = torch.arange(start, stop, device=device)  # (b,)
    stream_keys = mix32(mix32(streams ^ (key & MASK32)) ^ (key >> 32))  # (b,)
    positions = mix32(torch.arange(steps * hidden, device=device))  # (T*H,)
    threshold = math.ceil(p * 2**32)
    masks = torch.empty((layers, stop - start, steps, hidden), dtype=torch.bool, device=device)
    for layer in range(layers):  # a layer at a time: the int64 work stays (b, T*H)
        layer_keys = mix32(stream_keys ^ mix32(torch.full_like(stream_keys, layer)))  # (b,)
        draws = mix32(positions[None, :] ^ layer_keys[:, None])  # (b, T*H), uniform on [0, 2^32)
        masks[layer] = (draws >= threshold).view(stop - start, steps, hidden)
    return masks


def weight_masks(cfg: Config, step: int, device: torch.device) -> torch.Tensor | None:
    """Keep-masks (L, 4H, H) for the recurrent matrices (weight drop), scaled by 1/(1-p); keyed by the step
    only, so every process and every micro-batch of a step drops the same weights."""
    p = cfg.model.weight_drop
    if p == 0.0:
        return None
    hidden = cfg.model.hidden
    generator = _generator(cfg.train.seed, step, ALL_STREAMS, Purpose.WEIGHT_DROP, device)
    noise = torch.empty((cfg.model.layers, 4 * hidden, hidden), device=device).uniform_(generator=generator)
    return (noise >= p) * (1.0 / (1.0 - p))


def state_resets(cfg: Config, step: int, start: int, stop: int) -> torch.Tensor | None:
    """Which of streams [start, stop) start this window from a zero state (b,) bool, each with probability
    train.state_reset. Why: sampling starts from a zero state, but carried training state is zero only at
    epoch starts, so without resets a model can learn to handle fresh starts badly (docs/benchmarks.md, Fresh
    starts)."""
    p = cfg.train.state_reset
    if p == 0.0:
        return None
    draws = [stream_seed(cfg.train.seed, step, stream, Purpose.RESET) / 2**63 for stream in range(start, stop)]
    return torch.tensor(draws) < p


def noisy_inputs(cfg: Config, step: int, start: int, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """x (b, T) of streams [first, first + b) with each character replaced, with probability train.input_noise,
    by one drawn uniformly from the vocabulary (data noising, Xie et al. 2017); the targets stay. Returns x
    itself when the option is off."""
    p = cfg.train.input_noise
    if p == 0.0:
        return x
    hits, draws = torch.empty(x.shape), torch.empty(x.shape, dtype=torch.int64)
    for i in range(x.shape[0]):
        generator = _generator(cfg.train.seed, step, start + i, Purpose.NOISE)
        hits[i].uniform_(generator=generator)
        draws[i].random_(vocab_size, generator=generator)
    return torch.where(hits.to(x.device) < p, draws.to(device=x.device, dtype=x.dtype), x)  # (b, T)


def activation_penalty(cfg: Config, top: torch.Tensor) -> torch.Tensor:
    """AR + TAR of AWD-LSTM on the last layer's output top (b, T, H) before dropout: large activations and
    fast changes from one character to the next cost extra. Added to what is minimized, never to the
    reported loss."""
    top = top.float()
    penalty = cfg.train.activation_reg * top.pow(2).mean()
    if top.shape[1] > 1:
        penalty = penalty + cfg.train.temporal_reg * (top[:, 1:] - top[:, :-1]).pow(2).mean()
    return penalty


class WeightAverage:
    """An exponential moving average of a model's weights (train.ema_decay), updated after every step.
    It is what gets evaluated, kept as best.pt and exported: it smooths out the noise of the last steps,
    which lets small batches and strong dropout pay off (docs/benchmarks.md)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = model.eval().requires_grad_(False)
        self.decay = decay

    def update(self, weights: torch.nn.Module, step: int) -> None:
        # the decay ramps up from 0.1 so that the average soon forgets the random init
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, weight in zip(self.model.parameters(), weights.parameters()):
                average.lerp_(weight, 1.0 - decay)
