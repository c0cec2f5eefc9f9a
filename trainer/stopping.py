"""The two things that end a run before its last step: a signal (`StopFlags`: SIGTERM or SIGINT finish the step,
save and exit) and the wall-clock budget (`Budget`: train.max_minutes, and train.max_steps=auto's total fitted to
it). The loop asks them after each step (trainer/step.py `agree` shares their verdicts between processes)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import torch

from trainer.config import Config
from trainer.state import TrainState


class StopFlags:
    """SIGTERM / SIGINT ask the loop to finish the current step, save and exit."""

    def __init__(self):
        self.signal_name: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name


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

    def replan(self, state: TrainState, eval_seconds: float) -> None:
        """After an evaluation that took eval_seconds: with train.max_steps=auto, the total is fixed (the first
        time) or revised if the steps so far say it would overrun (or, early, that more fit). Every process calls
        this together."""
        self.eval_seconds = eval_seconds
        self.paused += eval_seconds
        if self.auto and (state.max_steps is None or state.max_steps > state.step):
            self._fit(state)

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
