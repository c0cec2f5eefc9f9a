"""One training step as named parts: the learning rate, the loss and its gradients, the processes' verdict,
and the update. Plus the two things that end a run early: signals and the wall-clock budget.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainer.config import Config
from trainer.data.feeder import Window
from trainer.errors import TrainingError
from trainer.host_sync import host_read, to_device
from trainer.peers import check_peers
from trainer.regularize import WeightAverage, activation_penalty, dropout_masks, weight_masks
from trainer.state import TrainState

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


def compute_gradients(
    state: TrainState, window: Window, *, cfg: Config, model: torch.nn.Module, accelerator, first: int, last: int
) -> torch.Tensor:
    """Forward and backward of this step's window (trainer/data/feeder.py: on the device, noised, its resets
    drawn) over this process's streams [first, last), in train.grad_accum micro-batches. Returns the mean
    cross-entropy (the reported loss), still on the device; writes state.h and state.c (the carried state, one
    window on), nothing else."""
    step, device = state.step, accelerator.device
    t = cfg.train
    if window.epoch_start:
        state.h, state.c = torch.zeros_like(state.h), torch.zeros_like(state.c)
    elif window.keep is not None:  # (1, b, 1): 0 for the streams that start this window from a zero state
        state.h, state.c = state.h * window.keep, state.c * window.keep
    masks = dropout_masks(cfg, step, first, last, device)  # (L, b, T, H) bool or None
    w_masks = weight_masks(cfg, step, device)  # (L, 4H, H) or None
    penalized = t.activation_reg > 0 or t.temporal_reg > 0
    micro = (last - first) // t.grad_accum
    step_loss = torch.zeros((), device=device)
    new_h, new_c = [], []
    for k in range(t.grad_accum):
        part = slice(k * micro, (k + 1) * micro)
        last_part = k == t.grad_accum - 1  # DDP all-reduces the gradients once, after the last micro-batch
        with nullcontext() if last_part else accelerator.no_sync(model):
            part_state = (state.h[:, part], state.c[:, part])
            part_masks = None if masks is None else masks[:, part]
            logits, (h, c), top = model(window.x[part], part_state, part_masks, w_masks, with_top=True)
            loss = F.cross_entropy(logits.float().flatten(0, 1), window.y[part].flatten())
            objective = loss + activation_penalty(cfg, top) if penalized else loss
            accelerator.backward(objective / t.grad_accum)
        step_loss += loss.detach() / t.grad_accum
        new_h.append(h.detach().float())
        new_c.append(c.detach().float())
    state.h, state.c = torch.cat(new_h, dim=1), torch.cat(new_c, dim=1)
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


def agree(
    step_loss: torch.Tensor,
    stop: StopFlags,
    budget: Budget,
    state: TrainState,
    *,
    cfg: Config,
    model: torch.nn.Module,
    accelerator,
    precision_mode: str,
) -> Verdict:
    """Clip the gradients and take the verdict of all processes: one small all-reduce per step, and the step's
    one read of the device (host_read). Writes no train state (the budget may start its clock)."""
    t, device = cfg.train, accelerator.device
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
    # fp16: GradScaler itself skips a step whose gradients overflowed (and lowers the scale), so only a
    # non-finite loss counts as bad there; otherwise a non-finite gradient norm does too.
    finite = torch.isfinite(step_loss) & (torch.isfinite(grad_norm) | (precision_mode == "fp16"))
    flags = (~finite).float().reshape(1)  # on the device
    # what the host knows (a signal, the main process's clock, the plan)
    known = [float(stop.signal_name is not None), float(accelerator.is_main_process and budget.spent())]
    known.append(float(budget.ready_to_plan(state)))
    if accelerator.num_processes > 1:  # every process must take the same decisions: one all-reduce of all four
        flags = accelerator.reduce(torch.cat([flags, to_device(known, device)]), reduction="sum")
        agreed = host_read(flags)
        check_peers(accelerator)  # an all-reduce that NCCL aborted returned garbage: no decision on it
        return Verdict(*(flag > 0 for flag in agreed))
    return Verdict(host_read(flags)[0] > 0, *(flag > 0 for flag in known))


def apply_update(
    verdict: Verdict,
    state: TrainState,
    *,
    optimizer: torch.optim.Optimizer,
    precision_mode: str,
    average: WeightAverage | None,
    bare: torch.nn.Module,
    log: Callable[[dict], None],
) -> None:
    """The optimizer step and the weight average, or, for a non-finite step, a skip that zeroes the state.
    Writes state.step (one on), state.bad_steps, state.loss_scale, and on a skip state.h and state.c."""
    if verdict.non_finite:
        if precision_mode == "fp16":
            optimizer.step()  # lets the scaler close this iteration (it skips the update)
            state.loss_scale = None  # it lowered the scale: read it again before the next step
        optimizer.zero_grad(set_to_none=True)
        state.h, state.c = torch.zeros_like(state.h), torch.zeros_like(state.c)  # the state went bad with the loss
        state.bad_steps += 1
        log({"step": state.step, "skipped": "non-finite loss or gradient norm"})
        if state.bad_steps >= MAX_BAD_STEPS:
            raise TrainingError(
                f"{MAX_BAD_STEPS} non-finite steps in a row at step {state.step}: lower train.lr or use "
                "train.mixed_precision=no; the last good checkpoint is kept"
            )
    else:
        state.bad_steps = 0
        if step_overflowed(optimizer, state):  # fp16 only: GradScaler skipped the update and lowered the scale
            log({"step": state.step, "skipped": "fp16 gradient overflow; loss scale lowered"})
        if average is not None:
            average.update(bare, state.step)
        optimizer.zero_grad(set_to_none=True)
    state.step += 1


def loss_scale(optimizer: torch.optim.Optimizer) -> float | None:
    """fp16's loss scale (GradScaler's, through accelerate's optimizer wrapper), or None without one. Read with
    host_read: get_scale() would read the same tensor with .item(), a wait the sync debug mode refuses."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    scale = scaler._get_scale_async()  # the scale tensor; None before the first scaled step
    return scaler.get_scale() if scale is None else host_read(scale)


def step_overflowed(optimizer: torch.optim.Optimizer, state: TrainState) -> bool:
    """Take the optimizer step; True when fp16's GradScaler skipped it for overflowed gradients. Read from the
    scale, which GradScaler lowers exactly then: accelerate's `step_was_skipped` watches whether the optimizer's
    step ran, and with fused AdamW the scaler skips inside the kernel, so it never says so. The scale before the
    step is the one read after the previous step (state.loss_scale): one read of the device per step. Writes
    state.loss_scale."""
    before = state.loss_scale if state.loss_scale is not None else loss_scale(optimizer)
    optimizer.step()
    state.loss_scale = loss_scale(optimizer)
    return before is not None and state.loss_scale < before


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

    Its methods read the train state they are given; only the plan (state.max_steps) is written, by `_fit`.
    """

    WARM_STEPS = 3  # the first steps of a launch build kernels and allocate: not timed
    PROBE_STEPS = 20
    PROBE_SHARE = 0.03  # of the budget: long enough to average out a noisy machine
    SAFETY = 0.95  # the share of the budget that the plan may fill
    GROW = 1.02  # a revision up must add at least this share of steps: no churn for a few steps

    def __init__(self, cfg: Config, accelerator, log: Callable[[dict], None], say: Callable[[str], None]):
        self.minutes = cfg.train.max_minutes
        self.auto = cfg.train.max_steps == "auto"
        self.eval_every = cfg.train.eval_every
        self.accelerator = accelerator  # the main process decides; its figure is shared by one all-reduce
        self.log, self.say = log, say
        self.started = time.monotonic()
        self.timed_from: tuple[int, float] | None = None  # (step, time) where this launch's timing began
        self.eval_seconds = 0.0  # the last evaluation's duration
        self.paused = 0.0  # seconds spent evaluating since timed_from

    def spent(self) -> bool:
        return self.minutes is not None and time.monotonic() - self.started > 60 * self.minutes

    def ready_to_plan(self, state: TrainState) -> bool:
        """With train.max_steps=auto and no total yet: has the main process timed enough steps? The processes
        take this verdict together (agree), since planning evaluates, and evaluating is collective."""
        if not (self.auto and self.accelerator.is_main_process):
            return False
        if self.timed_from is None:
            if state.step + 1 - (state.resumed_from or 0) >= self.WARM_STEPS:
                self.timed_from = (state.step + 1, time.monotonic())  # timing starts after this step
            return False
        probing = time.monotonic() - self.timed_from[1] < self.PROBE_SHARE * 60 * self.minutes
        return state.max_steps is None and state.step + 1 - self.timed_from[0] >= self.PROBE_STEPS and not probing

    def evaluate(self, evaluate: Callable[[], float], state: TrainState) -> float:
        """evaluate() (Run.evaluate), timed; then, with train.max_steps=auto, the total is fixed (the first time)
        or revised down if it would overrun. Every process calls this together."""
        clock = time.monotonic()
        val = evaluate()
        self.eval_seconds = time.monotonic() - clock
        self.paused += self.eval_seconds
        if self.auto and (state.max_steps is None or state.max_steps > state.step):
            self._fit(state)
        return val

    def _fit(self, state: TrainState) -> None:
        """The main process decides (its figure is summed with the others' zeros); -1 means no change. Writes
        state.max_steps."""
        planned, total, per_step, step = state.max_steps, 0.0, 0.0, state.step
        if self.accelerator.is_main_process:
            total = -1.0
            timed = self.timed_from is not None and step > self.timed_from[0]
            if timed and not self.spent():
                first_step, first_time = self.timed_from
                per_step = (time.monotonic() - first_time - self.paused) / (step - first_step)
                left = self.SAFETY * 60 * self.minutes - (time.monotonic() - self.started)
                # steps s with s * per_step + (s / eval_every + 1) * eval_seconds <= left
                fits = (left - self.eval_seconds) / (per_step + self.eval_seconds / self.eval_every)
                total = float(step + max(0, int(fits)))
                grows = planned is not None and total >= self.GROW * planned and step < planned / 2
                if planned is not None and total >= planned and not grows:
                    total = -1.0
        total = torch.tensor(total, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, reduction="sum")  # the main process's figure, everywhere
        if total.item() < 0:
            return
        state.max_steps = int(total.item())
        self.log({"step": step, "max_steps": state.max_steps, "seconds_per_step": per_step, "revised": planned})
        verb = "fixed at" if planned is None else f"revised from {planned:,} to"
        self.say(
            f"train.max_steps=auto {verb} {state.max_steps:,} steps ({per_step * 1000:.1f} ms per step, "
            f"{self.eval_seconds:.1f} s per evaluation, {self.minutes:g} minutes)"
        )
