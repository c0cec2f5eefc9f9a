"""One training step as named parts: the learning rate, the loss and its gradients, the processes' verdict,
and the update. What ends a run early (a signal, the clock) is trainer/stopping.py; the verdict shares it."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainer.config import Config
from trainer.dist.host_sync import host_read, to_device
from trainer.dist.peer_faults import check_peers
from trainer.errors import TrainingError
from trainer.feeder import Window
from trainer.regularize import WeightAverage, activation_penalty, dropout_masks, weight_masks
from trainer.state import TrainState
from trainer.stopping import Budget, StopFlags

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
    state: TrainState, window: Window, *, cfg: Config, model: torch.nn.Module, accelerator, start: int, stop: int
) -> torch.Tensor:
    """Forward and backward of this step's window (trainer/feeder.py: on the device, noised, its resets
    drawn) over this process's streams [start, stop), in train.grad_accum micro-batches. Returns the mean
    cross-entropy (the reported loss), still on the device; writes state.h and state.c (the carried state, one
    window on), nothing else."""
    step, device = state.step, accelerator.device
    t = cfg.train
    if window.epoch_start:
        state.h, state.c = torch.zeros_like(state.h), torch.zeros_like(state.c)
    elif window.keep is not None:  # (1, b, 1): 0 for the streams that start this window from a zero state
        state.h, state.c = state.h * window.keep, state.c * window.keep
    masks = dropout_masks(cfg, step, start, stop, device)  # (L, b, T, H) bool or None
    w_masks = weight_masks(cfg, step, device)  # (L, 4H, H) or None
    penalized = t.activation_reg > 0 or t.temporal_reg > 0
    micro = (stop - start) // t.grad_accum
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
    unwrapped: torch.nn.Module,
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
            average.update(unwrapped, state.step)
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
