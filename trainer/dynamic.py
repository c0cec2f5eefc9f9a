"""Dynamic evaluation (Krause et al., "Dynamic Evaluation of Neural Sequence Models", ICML 2018): while a text
is read, the model keeps learning from the characters it has just scored, a small gradient step per segment
pulled back toward the trained weights, so it adapts to the text in front of it.

Each segment is scored first and learned from after, the paper's order: a character never helps predict
itself. The two rules, for each weight W (W0 the trained weights, g the gradient of the segment's mean loss):
- `rms`: W += decay * r * (W0 - W) - lr * g / (ms + epsilon), where ms is the root mean square of W's
  gradients over segments of the training text and r = ms / (the mean of ms over all weights), clipped at
  1 / decay so the pull back never overshoots W0;
- `sgd`: W += decay * (W0 - W) - lr * g.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.model import CharLSTM

Rule = Literal["rms", "sgd"]
# The defaults at a segment of 5 characters, each rule's best in a search on Tiny Shakespeare's validation
# split (bench/dynamic_eval.py, docs/benchmarks.md). For rms that is the reference implementation's lr
# (benkrause/dynamic-evaluation) with 5 times its decay: a small model drifts further per step, and a
# stronger pull back keeps it near what it learned. lr and decay scale with the segment, as in the paper.
DEFAULT_SEGMENT = 5
DEFAULTS = {"rms": {"lr": 5e-5, "decay": 1e-2}, "sgd": {"lr": 0.1, "decay": 1e-3}}
EPSILON = 2e-5
STATIC_SEGMENT = 1024  # static scoring reads longer windows: the same sums, fewer calls


@dataclass(frozen=True)
class DynamicOptions:
    rule: Rule = "rms"
    segment: int = DEFAULT_SEGMENT
    lr: float | None = None  # None: DEFAULTS[rule] scaled by segment / DEFAULT_SEGMENT
    decay: float | None = None

    def resolved(self) -> tuple[float, float]:
        """(lr, decay) as used."""
        scale = self.segment / DEFAULT_SEGMENT
        lr = DEFAULTS[self.rule]["lr"] * scale if self.lr is None else self.lr
        decay = DEFAULTS[self.rule]["decay"] * scale if self.decay is None else self.decay
        return lr, decay


@dataclass
class Scored:
    nats: float  # summed over the characters predicted
    chars: int
    losses: Tensor | None = None  # (chars,) each character's loss, when asked for

    @property
    def mean(self) -> float:
        return self.nats / self.chars


def segments(ids: Tensor, length: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(inputs (1, T), targets (1, T)) covering ids[:-1] -> ids[1:] in order; the last may be shorter."""
    for start in range(0, len(ids) - 1, length):
        end = min(start + length, len(ids) - 1)
        yield ids[start:end].unsqueeze(0), ids[start + 1 : end + 1].unsqueeze(0)


def segment_losses(model: CharLSTM, inputs: Tensor, targets: Tensor, state) -> tuple[Tensor, tuple]:
    """Each character's cross-entropy (T,) in nats for one segment read from `state`; the state after it,
    detached."""
    logits, (h, c) = model(inputs, state)  # (1, T, V)
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # (T,)
    return losses, (h.detach(), c.detach())


@torch.no_grad()
def score_static(
    model: CharLSTM,
    ids: Tensor,
    progress: Callable[[int], None] | None = None,
    segment: int = STATIC_SEGMENT,
    keep_losses: bool = False,
) -> Scored:
    """The text's loss read as one stream from the zero state, the weights as they are."""
    state, total, done, kept = None, 0.0, 0, []
    for inputs, targets in segments(ids, segment):
        losses, state = segment_losses(model, inputs, targets, state)
        total += float(losses.sum())
        kept += [losses] if keep_losses else []
        done += inputs.shape[1]
        if progress:
            progress(done)
    return Scored(total, len(ids) - 1, torch.cat(kept) if keep_losses else None)


def gradient_rms(model: CharLSTM, ids: np.ndarray, segment: int, batch: int) -> dict[str, Tensor]:
    """The root mean square of each weight's gradient over the text cut into `batch` parallel streams, read
    `segment` characters at a time with the state carried: the paper's statistics, on the training text."""
    streams = len(ids) // batch
    if streams < segment + 1:
        raise ValueError(f"the training text is too short for gradient statistics ({len(ids):,} characters)")
    grid = torch.from_numpy(np.asarray(ids[: streams * batch], dtype=np.int64).reshape(batch, streams))
    squares = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    state, count = None, 0
    for start in range(0, streams - segment, segment):
        inputs, targets = grid[:, start : start + segment], grid[:, start + 1 : start + segment + 1]
        model.zero_grad(set_to_none=True)
        logits, (h, c) = model(inputs, state)
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        state = (h.detach(), c.detach())
        for name, p in model.named_parameters():
            squares[name] += p.grad * p.grad
        count += 1
    model.zero_grad(set_to_none=True)
    return {name: torch.sqrt(total / count) for name, total in squares.items()}


def decay_rates(rms: dict[str, Tensor], decay: float) -> dict[str, Tensor]:
    """Each weight's pull-back rate: its gradient's RMS over the mean RMS of all weights, clipped at 1/decay."""
    mean = torch.stack([value.mean() for value in rms.values()]).mean()
    ceiling = 1.0 / decay if decay > 0 else float("inf")
    return {name: torch.clamp(value / mean, max=ceiling) for name, value in rms.items()}


def score_dynamic(
    model: CharLSTM,
    ids: Tensor,
    options: DynamicOptions,
    rms: dict[str, Tensor] | None,
    progress: Callable[[int], None] | None = None,
    keep_losses: bool = False,
) -> Scored:
    """The text's loss read as one stream while the model learns from it; `model`'s weights end adapted."""
    lr, decay = options.resolved()
    params = dict(model.named_parameters())
    original = {name: p.detach().clone() for name, p in params.items()}
    rates = decay_rates(rms, decay) if options.rule == "rms" else None
    state, total, done, kept = None, 0.0, 0, []
    for inputs, targets in segments(ids, options.segment):
        model.zero_grad(set_to_none=True)
        losses, state = segment_losses(model, inputs, targets, state)
        total += float(losses.detach().sum())  # scored before the update below
        kept += [losses.detach()] if keep_losses else []
        losses.mean().backward()
        with torch.no_grad():
            for name, p in params.items():
                if rates is None:
                    p.add_(decay * (original[name] - p) - lr * p.grad)
                else:
                    p.add_(decay * rates[name] * (original[name] - p) - lr * p.grad / (rms[name] + EPSILON))
        done += inputs.shape[1]
        if progress:
            progress(done)
    model.zero_grad(set_to_none=True)
    return Scored(total, len(ids) - 1, torch.cat(kept) if keep_losses else None)
