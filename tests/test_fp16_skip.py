"""fp16's overflow skip seen from the loss scale: GradScaler skips the update of a step whose gradients
overflowed and lowers the scale. accelerate's `step_was_skipped` watches whether the optimizer's step ran, which
with fused AdamW it always does (the scaler skips inside the kernel), so the trainer reads the scale instead.
On the CPU with torch's GradScaler behind a wrapper that, like accelerate's with a fused optimizer, never says
it skipped."""

from __future__ import annotations

import torch

from trainer.state import TrainState
from trainer.step import Verdict, apply_update, step_overflowed


class FusedLikeOptimizer:
    """accelerate's AcceleratedOptimizer as the fused path leaves it: the scaler steps, nothing reports a skip."""

    step_was_skipped = False

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.optimizer, self.scaler = optimizer, scaler

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


def test_an_overflow_is_a_skip_and_a_finite_step_is_not():
    weight = torch.nn.Parameter(torch.ones(4))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = FusedLikeOptimizer(torch.optim.AdamW([weight], lr=0.1), scaler)
    scaler.scale((weight * 2).sum()).backward()
    assert step_overflowed(optimizer, TrainState()) is False and not torch.equal(weight.detach(), torch.ones(4))
    optimizer.zero_grad()
    before = weight.detach().clone()
    scaler.scale((weight * 1e38).sum() * 1e38).backward()  # inf gradients
    assert step_overflowed(optimizer, TrainState()) is True
    assert torch.equal(weight.detach(), before) and scaler.get_scale() < 1024.0  # skipped, scale lowered
    assert step_overflowed(torch.optim.SGD([weight], lr=0.1), TrainState()) is False  # no scaler: never a skip


def test_apply_update_logs_the_skip():
    weight = torch.nn.Parameter(torch.ones(4))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = FusedLikeOptimizer(torch.optim.AdamW([weight], lr=0.1), scaler)
    scaler.scale((weight * 1e38).sum() * 1e38).backward()
    events: list[dict] = []
    state = TrainState(step=7, h=torch.zeros(1, 1, 1), c=torch.zeros(1, 1, 1))
    verdict = Verdict(non_finite=False, signalled=False, out_of_time=False, plan_now=False)
    apply_update(
        verdict, state, optimizer=optimizer, precision_mode="fp16", average=None, unwrapped=None, log=events.append
    )
    assert events == [{"step": 7, "skipped": "fp16 gradient overflow; loss scale lowered"}] and state.step == 8


def test_the_scale_is_read_again_after_a_non_finite_skip():
    """The scale before a step is the one read after the last (one read of the device per step); a non-finite
    step, which lets the scaler lower the scale too, must not leave the old figure behind: the next good step
    would be logged as an overflow."""
    weight = torch.nn.Parameter(torch.ones(4))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = FusedLikeOptimizer(torch.optim.AdamW([weight], lr=0.1), scaler)
    events: list[dict] = []
    state = TrainState(step=0, h=torch.zeros(1, 1, 1), c=torch.zeros(1, 1, 1))
    good = Verdict(non_finite=False, signalled=False, out_of_time=False, plan_now=False)
    for gradient, verdict in [(2.0, good), (float("inf"), good._replace(non_finite=True)), (2.0, good)]:
        scaler.scale((weight * gradient).sum()).backward()
        apply_update(
            verdict, state, optimizer=optimizer, precision_mode="fp16", average=None, unwrapped=None, log=events.append
        )
    assert scaler.get_scale() < 1024.0  # the skipped step lowered it
    assert events == [{"step": 1, "skipped": "non-finite loss or gradient norm"}] and state.step == 3
