"""Train a character LSTM: `accelerate launch trainer/train.py --config FILE [key.sub=value ...]`.

`python trainer/train.py ...` and `python -m trainer.train ...` do the same in one process.

The global batch is B contiguous character streams (trainer/data/streams.py). Process r of N owns streams
[r*B/N, (r+1)*B/N) and carries their LSTM state from window to window (truncated BPTT); DDP averages
the gradients, so N processes compute what one computes. Rerunning on an out_dir holding ckpt.pt resumes
from it, on any number of processes. The parts: trainer/run.py (the run and its checkpoint), trainer/state.py
(what changes as it trains), trainer/step.py (one step), trainer/stopping.py (signals and the clock),
trainer/regularize.py (everything keyed by seed, step and stream); docs/architecture.md shows them all.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python trainer/train.py` / `accelerate launch trainer/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from trainer.config import Config, load_config
from trainer.config.docs import help_text
from trainer.dist.group import node_name
from trainer.dist.peer_faults import PeerError
from trainer.errors import TrainingError, UserError
from trainer.launch.exit_status import USER_ERROR_FILE, mark_done
from trainer.plot import plot_losses
from trainer.run import LN2, Run
from trainer.step import Verdict, agree, apply_update, compute_gradients, lr_at
from trainer.stopping import Budget, StopFlags


def train(cfg: Config) -> int:
    run = Run.start(cfg)
    t = cfg.train
    announce(run)
    state = run.state  # what the step functions change: step, h, c, best_val, the plan, counters
    stop, budget, meter = StopFlags(), Budget(cfg, run.accelerator, run.log, run.say), Meter(run)
    stop.install()
    stopped_by, val_loss = None, None
    try:
        while state.max_steps is None or state.step < state.max_steps:
            step_loss, verdict = take_step(run, stop, budget)
            meter.count(step_loss, verdict.non_finite)
            if verdict.plan_now:
                evaluate(run, budget)  # timed, then train.max_steps=auto gets its total
            if verdict.signalled:
                stopped_by = stop.signal_name or "signal"
                run.save(run.paths.ckpt, None)
                break
            final = state.step == state.max_steps or verdict.out_of_time
            val_loss = evaluate(run, budget) if state.step % t.eval_every == 0 or final else None
            if val_loss is not None:
                meter.write(f"step {state.step}: val {val_loss:.4f} nats ({val_loss / LN2:.4f} bpc)")
                if run.last_sample:
                    meter.write(f"--- sample: {run.sample_prime}{run.last_sample}\n---")
            if state.step % t.save_every == 0 or final:
                run.save(run.paths.ckpt, val_loss)
            meter.restart_clock()
            if verdict.out_of_time:
                stopped_by = f"train.max_minutes={t.max_minutes}"
                break
    finally:
        meter.close()
        run.feeder.close()
    mark_done()  # ckpt.pt holds the run: a failure from here on is not a reason to run it again
    # All ranks tear the process group down together: a rank that exits while another still writes its
    # checkpoint can abort in gloo's teardown ("terminate called without an active exception"). The main
    # process plots and reports after that, so the other machines need not wait for it.
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    report(run, stopped_by, val_loss)
    return 0


def evaluate(run: Run, budget: Budget) -> float:
    """run.evaluate() (collective), timed for the budget, which may then fix or revise the total."""
    started = time.monotonic()
    val_loss = run.evaluate()
    budget.replan(run.state, time.monotonic() - started)
    return val_loss


def take_step(run: Run, stop: StopFlags, budget: Budget) -> tuple[torch.Tensor, Verdict]:
    """One optimizer step on run.state: the learning rate, the gradients, the processes' verdict, the update.
    Returns the step's loss and the verdict."""
    state, cfg, mode = run.state, run.cfg, run.precision.mode
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(state.step, cfg, state.max_steps)
    window = run.feeder.window(state.step)  # on the device; the next one is being prepared
    step_loss = compute_gradients(
        state,
        window,
        cfg=cfg,
        model=run.model,
        accelerator=run.accelerator,
        start=run.stream_start,
        stop=run.stream_stop,
    )
    verdict = agree(
        step_loss, stop, budget, state, cfg=cfg, model=run.model, accelerator=run.accelerator, precision_mode=mode
    )
    apply_update(
        verdict,
        state,
        optimizer=run.optimizer,
        precision_mode=mode,
        average=run.average,
        unwrapped=run.unwrapped,
        log=run.log,
    )
    return step_loss, verdict


def announce(run: Run) -> None:
    """The run's first lines on stderr, and a start event in metrics.jsonl (where a resumed run began)."""
    cfg, corpus = run.cfg, run.corpus
    params = sum(p.numel() for p in run.unwrapped.parameters())
    processes = run.accelerator.num_processes
    threads = torch.get_num_threads()  # per process; on a CPU, N processes share the machine's cores
    resumed = f", resumed at step {run.state.step}" if run.state.resumed_from is not None else ""
    run.say(f"precision {cfg.train.mixed_precision} -> {run.precision.mode} ({run.precision.reason})")
    run.say(
        f"{len(corpus.ids):,} chars, vocab {len(corpus.vocab)}, {params / 1e6:.2f}M params, {processes} "
        f"process(es) on {run.device.type}"
        + (f" ({threads} thread(s) each)" if run.device.type == "cpu" else "")
        + f", {run.streams.windows_per_epoch} windows/epoch{resumed}"
    )
    run.log(
        {"step": run.state.step, "start": True, "resumed_from": run.state.resumed_from, "processes": processes}
        | {"threads": threads, "precision": run.precision.mode, "max_steps": run.state.max_steps}
        | {"init_from": cfg.train.init_from}
    )


class Meter:
    """The progress bar, and the train loss and chars/s logged every train.log_every steps. Its clock skips
    evaluations and saves, so run.state.train_seconds and chars/s measure training alone."""

    def __init__(self, run: Run):
        from tqdm import tqdm

        self.run = run
        self.bar = tqdm(
            total=run.state.max_steps,
            initial=run.state.step,
            disable=not run.is_main,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        self.loss_sum, self.loss_count = torch.zeros((), device=run.device), 0
        self.clock = time.monotonic()
        self.logged = (run.state.step, run.state.train_seconds)  # (step, train_seconds) at the last log

    def count(self, step_loss: torch.Tensor, skipped: bool) -> None:
        run, state, t = self.run, self.run.state, self.run.cfg.train
        now = time.monotonic()
        state.train_seconds += now - self.clock
        self.clock = now
        if not skipped:
            self.loss_sum += step_loss
            self.loss_count += 1
        if self.bar.total != state.max_steps:  # train.max_steps=auto has just fixed the total
            self.bar.total = state.max_steps
        self.bar.update(1)
        if state.step % t.log_every and state.step != state.max_steps:
            return
        mean_loss = run.accelerator.reduce(self.loss_sum, reduction="mean").item() / max(1, self.loss_count)
        steps, seconds = state.step - self.logged[0], state.train_seconds - self.logged[1]
        chars_per_s = steps * t.batch_size * t.seq_len / max(1e-9, seconds)
        lr = lr_at(state.step - 1, run.cfg, state.max_steps)
        run.log({"step": state.step, "train_loss": mean_loss, "lr": lr, "chars_per_s": chars_per_s})
        self.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", cps=f"{chars_per_s:,.0f}")
        self.loss_sum, self.loss_count = torch.zeros((), device=run.device), 0
        self.logged = (state.step, state.train_seconds)

    def restart_clock(self) -> None:
        """Leave the time since the last step (an evaluation, a save) out of the training clock."""
        self.clock = time.monotonic()

    def write(self, line: str) -> None:
        if self.run.is_main:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def report(run: Run, stopped_by: str | None, val_loss: float | None) -> None:
    """The loss plot and the last line on stdout."""
    if not run.is_main:
        return
    state = run.state
    if run.paths.metrics.exists():
        plot_losses(run.paths.metrics, run.paths.out_dir / "loss.png")
    ckpt = run.paths.ckpt
    if stopped_by and stopped_by.startswith("SIG"):
        print(f"charlstm: stopped by {stopped_by} after step {state.step}; saved {ckpt} (rerun to resume)")
    elif val_loss is not None:
        print(
            f"charlstm: step {state.step}: val {val_loss:.4f} nats ({val_loss / LN2:.4f} bpc), "
            f"best {state.best_val:.4f}; saved {ckpt}" + (f" (stopped by {stopped_by})" if stopped_by else "")
        )
    else:
        print(f"charlstm: nothing to do, {ckpt} is at step {state.step} = train.max_steps")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="trainer.train",
        description="Train a character-level LSTM. Rerun the same command on the same out_dir to resume.",
        epilog="config keys (YAML, or key.sub=value overrides):\n" + help_text() + "\n\nexample: "
        "python -m trainer.train --config configs/tiny.yaml train.max_steps=40 out_dir=runs/x",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (configs/tiny.yaml, configs/shakespeare.yaml, ...)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 model.hidden=256")
    return parser.parse_args(argv)


def collective_failure(error: BaseException, timeout: float) -> str | None:
    """One line for an error of the process group (another process hung, was stopped or vanished), or None
    for any other error. gloo raises it in the process that waited; on NCCL, trainer/dist/peer_faults.py raises
    PeerError once the watchdog has found it (the watchdog then leaves the process alive:
    TORCH_NCCL_ASYNC_ERROR_HANDLING=2)."""
    text = str(error).strip()
    if isinstance(error, PeerError):
        detail, timed_out = text, error.timed_out
    elif isinstance(error, torch.distributed.DistError) or (isinstance(error, RuntimeError) and "gloo" in text):
        first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]) if text else type(error).__name__  # no path
        detail = first.split(". ")[0][:160]
        # gloo: "Timed out waiting 300000ms for recv operation to complete"; NCCL, where a wait raises: "Watchdog
        # caught collective operation timeout: WorkNCCL(...) ran for 300000 milliseconds before timing out"
        timed_out = "timed out waiting" in text.lower() or "collective operation timeout" in text.lower()
    else:
        return None
    if timed_out:
        why = f"waited train.collective_timeout={timeout:g} s for another process in a collective"
    else:
        why = "lost another process in a collective"
    return (
        f"{node_name()}: {why}: a peer hung, was stopped, died or lost its network ({detail}); "
        "the last checkpoint is kept: rerun to resume"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timeout = Config().train.collective_timeout
    try:
        cfg = load_config(args.config, args.overrides)
        timeout = cfg.train.collective_timeout
        return train(cfg)
    except (UserError, TrainingError) as e:
        return report_error(e)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""  # a log or the cache; checkpoints say more
        return report_error(
            UserError(
                f"no space left on the device{where}; the earlier checkpoints are intact: free "
                "some space and rerun to resume"
            )
        )
    except KeyboardInterrupt:
        if first_on_machine():
            print("charlstm: interrupted before training started; nothing saved", file=sys.stderr)
        return 130
    except RuntimeError as e:  # every process that saw the fault says so: the peer at fault may be the main one
        line = collective_failure(e, timeout)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1


def first_on_machine() -> bool:
    """On N processes, one of each machine reports an error: every machine's log says why it stopped."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def report_error(error: UserError | TrainingError) -> int:
    """One line, and the exit status: 2 for the user's error, 1 for a training error. The launcher restarts
    neither: resumed from the last checkpoint, a run that diverged or could not save would most likely fail the
    same way, so both write the marker that trainer/launch/exit_status.py turns into exit 2 and no restart."""
    if first_on_machine():
        print(f"error: {error}", file=sys.stderr)
    if os.environ.get(USER_ERROR_FILE):
        Path(os.environ[USER_ERROR_FILE]).write_text(f"{error}\n")  # for trainer/launch/exit_status.py: no restart
    return 2 if isinstance(error, UserError) else 1


if __name__ == "__main__":
    sys.exit(main())
