"""One training step as named parts: the learning rate, the loss and its gradients, the processes' verdict,
and the update. Plus the two things that end a run early: signals and the wall-clock budget.
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainer.config import Config
from trainer.errors import TrainingError
from trainer.regularize import activation_penalty, dropout_masks, noisy_inputs, state_resets, weight_masks
from trainer.run import Run

MAX_BAD_STEPS = 10  # this many non-finite steps in a row stop the run


def lr_at(step: int, cfg: Config, max_steps: int | None) -> float:
    """Linear warmup to train.lr, then cosine decay to train.min_lr at decay_steps (default: the run's total),
    flat after. A pure function of the step. While train.max_steps=auto is still timing the first steps
    (max_steps None) the rate stays at its peak after the warmup."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    horizon = t.decay_steps or max_steps
    if horizon is None:
        return t.lr
    progress = min(1.0, (step - t.warmup_steps) / max(1, horizon - t.warmup_steps))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + math.cos(math.pi * progress))


def compute_gradients(run: Run) -> torch.Tensor:
    """Forward and backward of this step's window over this process's streams, in train.grad_accum
    micro-batches; carries the state forward. Returns the mean cross-entropy (the reported loss)."""
    cfg, step, device = run.cfg, run.step, run.device
    t = cfg.train
    if run.streams.starts_epoch(step):
        run.h, run.c = torch.zeros_like(run.h), torch.zeros_like(run.c)
    elif (resets := state_resets(cfg, step, run.first, run.last)) is not None and resets.any():
        keep = (~resets).to(device=device, dtype=run.h.dtype)[None, :, None]  # (1, b, 1)
        run.h, run.c = run.h * keep, run.c * keep
    x, y = run.streams.window(step, run.first, run.last)  # (b, T) each
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    x = noisy_inputs(cfg, step, run.first, x, len(run.corpus.vocab))
    masks = dropout_masks(cfg, step, run.first, run.last, device)  # (L, b, T, H) or None
    w_masks = weight_masks(cfg, step, device)  # (L, 4H, H) or None
    penalized = t.activation_reg > 0 or t.temporal_reg > 0
    micro = (run.last - run.first) // t.grad_accum
    step_loss = torch.zeros((), device=device)
    new_h, new_c = [], []
    for k in range(t.grad_accum):
        part = slice(k * micro, (k + 1) * micro)
        last_part = k == t.grad_accum - 1  # DDP all-reduces the gradients once, after the last micro-batch
        with nullcontext() if last_part else run.accelerator.no_sync(run.model):
            state = (run.h[:, part], run.c[:, part])
            part_masks = None if masks is None else masks[:, part]
            logits, (h, c), top = run.model(x[part], state, part_masks, w_masks, with_top=True)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y[part].flatten())
            objective = loss + activation_penalty(cfg, top) if penalized else loss
            run.accelerator.backward(objective / t.grad_accum)
        step_loss += loss.detach() / t.grad_accum
        new_h.append(h.detach().float())
        new_c.append(c.detach().float())
    run.h, run.c = torch.cat(new_h, dim=1), torch.cat(new_c, dim=1)
    return step_loss


class StopFlags:
    """SIGTERM / SIGINT ask the loop to finish the current step, save and exit."""

    def __init__(self):
        self.signal_name: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name


class Verdict(NamedTuple):
    """What all processes agree on after a step's gradients, so that they skip, stop and save together."""

    non_finite: bool  # some process's loss or gradient norm is not finite: skip the update
    signalled: bool  # some process got SIGTERM / SIGINT: save and exit
    out_of_time: bool  # train.max_minutes is spent (by the main process's clock): final eval, save, exit
    plan_now: bool  # train.max_steps=auto: the main process has timed enough steps to fix the total


def agree(run: Run, step_loss: torch.Tensor, stop: StopFlags, budget: Budget) -> Verdict:
    """Clip the gradients and take the verdict of all processes: one small all-reduce per step."""
    t = run.cfg.train
    grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
    # fp16: GradScaler itself skips a step whose gradients overflowed (and lowers the scale), so only a
    # non-finite loss counts as bad there; otherwise a non-finite gradient norm does too.
    finite = torch.isfinite(step_loss) & (torch.isfinite(grad_norm) | (run.precision.mode == "fp16"))
    flags = torch.stack(
        [
            (~finite).float(),
            torch.tensor(float(stop.signal_name is not None), device=run.device),
            torch.tensor(float(run.is_main and budget.spent()), device=run.device),
            torch.tensor(float(budget.ready_to_plan(run)), device=run.device),
        ]
    )
    if run.accelerator.num_processes > 1:
        flags = run.accelerator.reduce(flags, reduction="sum")
    return Verdict(*(bool(flag > 0) for flag in flags.tolist()))


def apply_update(run: Run, verdict: Verdict) -> None:
    """The optimizer step and the weight average, or, for a non-finite step, a skip that zeroes the state."""
    if verdict.non_finite:
        if run.precision.mode == "fp16":
            run.optimizer.step()  # lets the scaler close this iteration (it skips the update)
        run.optimizer.zero_grad(set_to_none=True)
        run.h, run.c = torch.zeros_like(run.h), torch.zeros_like(run.c)  # the state went bad with the loss
        run.bad_steps += 1
        run.log({"step": run.step, "skipped": "non-finite loss or gradient norm"})
        if run.bad_steps >= MAX_BAD_STEPS:
            raise TrainingError(
                f"{MAX_BAD_STEPS} non-finite steps in a row at step {run.step}: lower train.lr or use "
                "train.mixed_precision=no; the last good checkpoint is kept"
            )
    else:
        run.bad_steps = 0
        run.optimizer.step()
        if run.optimizer.step_was_skipped:  # fp16 only: the gradients overflowed, the scaler lowered the scale
            run.log({"step": run.step, "skipped": "fp16 gradient overflow; loss scale lowered"})
        if run.average is not None:
            run.average.update(run.bare, run.step)
        run.optimizer.zero_grad(set_to_none=True)
    run.step += 1


class Budget:
    """train.max_minutes as a clock, and train.max_steps=auto as a total fitted to it.

    With `auto`, the steps after WARM_STEPS are timed for PROBE_STEPS steps and at least PROBE_SHARE of the
    budget, one evaluation is timed, and the total is set so that the steps left and their evaluations end
    inside SAFETY of the budget: the cosine schedule then completes on any machine. Until then the learning rate
    stays at its peak after the warmup. After each later evaluation the total is revised to what the steps so far
    say fits: down whenever it would overrun (a machine that slowed down), up by GROW or more only in the first
    half of the run (the first steps are often the slowest; late in the cosine a longer horizon would bend its
    tail). The total is saved in the checkpoint, so a resumed run keeps it (exact resume); the clock still
    stops a run that overruns anyway.
    """

    WARM_STEPS = 3  # the first steps of a launch build kernels and allocate: not timed
    PROBE_STEPS = 20
    PROBE_SHARE = 0.03  # of the budget: long enough to average out a noisy machine
    SAFETY = 0.95  # the share of the budget that the plan may fill
    GROW = 1.02  # a revision up must add at least this share of steps: no churn for a few steps

    def __init__(self, run: Run):
        self.minutes = run.cfg.train.max_minutes
        self.auto = run.cfg.train.max_steps == "auto"
        self.started = time.monotonic()
        self.timed_from: tuple[int, float] | None = None  # (step, time) where this launch's timing began
        self.eval_seconds = 0.0  # the last evaluation's duration
        self.paused = 0.0  # seconds spent evaluating since timed_from

    def spent(self) -> bool:
        return self.minutes is not None and time.monotonic() - self.started > 60 * self.minutes

    def ready_to_plan(self, run: Run) -> bool:
        """With train.max_steps=auto and no total yet: has the main process timed enough steps? The processes
        take this verdict together (agree), since planning evaluates, and evaluating is collective."""
        if not (self.auto and run.is_main):
            return False
        if self.timed_from is None:
            if run.step + 1 - (run.resumed_from or 0) >= self.WARM_STEPS:
                self.timed_from = (run.step + 1, time.monotonic())  # timing starts after this step
            return False
        probing = time.monotonic() - self.timed_from[1] < self.PROBE_SHARE * 60 * self.minutes
        return run.max_steps is None and run.step + 1 - self.timed_from[0] >= self.PROBE_STEPS and not probing

    def evaluate(self, run: Run) -> float:
        """run.evaluate(), timed; then, with train.max_steps=auto, the total is fixed (the first time) or revised
        down if it would overrun. Every process calls this together."""
        clock = time.monotonic()
        val = run.evaluate()
        self.eval_seconds = time.monotonic() - clock
        self.paused += self.eval_seconds
        if self.auto and (run.max_steps is None or run.max_steps > run.step):
            self._fit(run)
        return val

    def _fit(self, run: Run) -> None:
        """The main process decides (its figure is summed with the others' zeros); -1 means no change."""
        planned, total, per_step = run.max_steps, 0.0, 0.0
        if run.is_main:
            total = -1.0
            timed = self.timed_from is not None and run.step > self.timed_from[0]
            if timed and not self.spent():
                first_step, first_time = self.timed_from
                per_step = (time.monotonic() - first_time - self.paused) / (run.step - first_step)
                left = self.SAFETY * 60 * self.minutes - (time.monotonic() - self.started)
                # steps s with s * per_step + (s / eval_every + 1) * eval_seconds <= left
                fits = (left - self.eval_seconds) / (per_step + self.eval_seconds / run.cfg.train.eval_every)
                total = float(run.step + max(0, int(fits)))
                grows = planned is not None and total >= self.GROW * planned and run.step < planned / 2
                if planned is not None and total >= planned and not grows:
                    total = -1.0
        total = torch.tensor(total, device=run.device)
        if run.accelerator.num_processes > 1:
            total = run.accelerator.reduce(total, reduction="sum")  # the main process's figure, everywhere
        if total.item() < 0:
            return
        run.max_steps = int(total.item())
        run.log({"step": run.step, "max_steps": run.max_steps, "seconds_per_step": per_step, "revised": planned})
        verb = "fixed at" if planned is None else f"revised from {planned:,} to"
        run.say(
            f"train.max_steps=auto {verb} {run.max_steps:,} steps ({per_step * 1000:.1f} ms per step, "
            f"{self.eval_seconds:.1f} s per evaluation, {self.minutes:g} minutes)"
        )
