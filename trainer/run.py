"""One training run: the parts it is made of (`Run`), its train state (`TrainState`, trainer/state.py), and the
one pair that writes both to a checkpoint and reads them back.

`Run.start` sets a run up, from scratch or from out_dir/ckpt.pt; `Run.state_dict` and `Run.load_state_dict`
are the whole of what a checkpoint holds and what resuming restores, side by side, so exact resume is easy to
check by reading.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.build import build_models, make_optimizer
from trainer.checkpoint import FORMAT, Checkpoint, save_checkpoint
from trainer.config import Config, check_processes, save_config
from trainer.data import Corpus, EvalStreams, TrainStreams, split
from trainer.dist.group import all_or_none
from trainer.dist.peer_faults import check_peers
from trainer.dist.precision import Precision, make_accelerator
from trainer.errors import TrainingError, UserError
from trainer.evaluate import choose_prime, evaluate_loss, prediction_fault, sample_text
from trainer.feeder import WindowFeeder
from trainer.files import lock_out_dir, remove_stale_temps
from trainer.model import CharLSTM
from trainer.regularize import WeightAverage
from trainer.resume import fine_tuning, load_here, read_resume_checkpoint, same_text_everywhere
from trainer.state import TrainState
from trainer.trackers import available_trackers, flatten

LN2 = math.log(2.0)


@dataclass(frozen=True)
class RunPaths:
    out_dir: Path

    @property
    def ckpt(self) -> Path:  # the latest state, what a rerun resumes from
        return self.out_dir / "ckpt.pt"

    @property
    def best(self) -> Path:  # the weights with the best validation loss so far
        return self.out_dir / "best.pt"

    @property
    def metrics(self) -> Path:  # one JSON object per event
        return self.out_dir / "metrics.jsonl"


@dataclass(eq=False)
class Run:
    # ---- fixed for the run
    cfg: Config
    accelerator: object  # accelerate.Accelerator (not imported at module level: importing must stay cheap)
    precision: Precision
    corpus: Corpus
    streams: TrainStreams  # the training split as B streams
    evals: EvalStreams  # the validation split as B streams
    feeder: WindowFeeder  # this process's training windows on the device, one step prepared ahead
    model: torch.nn.Module  # what trains: DDP-wrapped on several processes
    unwrapped: CharLSTM  # the same weights, unwrapped
    average: WeightAverage | None  # train.ema_decay: what gets evaluated, saved as `model` and exported
    optimizer: torch.optim.Optimizer
    paths: RunPaths
    stream_start: int  # this process's streams are [stream_start, stream_stop)
    stream_stop: int
    lock: object = None  # the main process's open out_dir/.lock, locked while the run lives
    sample_prime: str = "\n"  # what the samples at evaluations start from (train.sample_prime)
    # ---- changing
    state: TrainState = field(default_factory=TrainState)  # step, h, c, best_val, the plan, counters: saved
    last_sample: str = ""  # the text sampled at the last evaluation (main process; not saved)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def output_model(self) -> CharLSTM:
        """The weights that get evaluated, saved as `model` and exported."""
        return self.average.model if self.average is not None else self.unwrapped

    # ------------------------------------------------------------ setup and resume

    @classmethod
    def start(cls, cfg: Config) -> Run:
        """Everything a run needs, from scratch or resumed from out_dir/ckpt.pt; UserError on bad input."""
        trackers = available_trackers(cfg.train.log_with)
        loaded = load_here(cfg)  # before the process group: no collective waits for a long first encode
        accelerator, precision = make_accelerator(cfg, trackers)
        processes, rank = accelerator.num_processes, accelerator.process_index
        t = cfg.train
        local_batch = check_processes(cfg, processes)
        start, stop = rank * local_batch, (rank + 1) * local_batch  # this process's streams
        corpus = same_text_everywhere(loaded, cfg, accelerator)  # each process's own copy, checked against main's
        corpus, init = fine_tuning(cfg, corpus, accelerator)
        train_ids, val_ids = split(corpus.ids, cfg.data.val_fraction)
        streams = TrainStreams(train_ids, t.batch_size, t.seq_len)  # bad sizes end here, before out_dir exists
        evals = EvalStreams(val_ids, t.batch_size, t.seq_len, t.eval_chars)
        sample_prime = choose_prime(t.sample_prime, corpus, val_ids)
        paths = RunPaths(Path(cfg.out_dir))
        lock = all_or_none(accelerator, lambda: lock_out_dir(paths.out_dir) if accelerator.is_main_process else None)
        ckpt = read_resume_checkpoint(paths.ckpt, cfg, corpus, accelerator)  # the main process reads it

        model, average = build_models(cfg, len(corpus.vocab), precision, init if ckpt is None else None)
        model.to(accelerator.device)
        if average is not None:
            average.model.to(accelerator.device)
        optimizer = make_optimizer(model, cfg, accelerator.device)
        wrapped, optimizer = accelerator.prepare(model, optimizer)
        run = cls(
            cfg=cfg,
            accelerator=accelerator,
            precision=precision,
            corpus=corpus,
            streams=streams,
            evals=evals,
            feeder=WindowFeeder(streams, cfg, start, stop, len(corpus.vocab), accelerator.device),
            model=wrapped,
            unwrapped=accelerator.unwrap_model(wrapped),
            average=average,
            optimizer=optimizer,
            paths=paths,
            stream_start=start,
            stream_stop=stop,
            lock=lock,
            sample_prime=sample_prime,
        )
        run.state.max_steps = t.max_steps if isinstance(t.max_steps, int) else None
        run.state.h, run.state.c = run.unwrapped.zero_state(local_batch, accelerator.device)
        if ckpt is not None:
            run.load_state_dict(ckpt)
        all_or_none(accelerator, run._prepare_out_dir)
        if trackers:  # the resolved config, flat, as the trackers' hyperparameters
            flat = flatten(cfg.to_dict())
            accelerator.init_trackers("charlstm", config={k: v if v is not None else "none" for k, v in flat.items()})
        return run

    def state_dict(self, val_loss: float | None) -> Checkpoint:
        """The checkpoint of the run as it is now; val_loss is that of `output_model` when a save follows an
        evaluation. Collective: every process takes part (the streams' state is gathered)."""
        state = self.state.state_dict(self.accelerator.gather)
        ckpt: Checkpoint = {
            "format": FORMAT,
            "model": self.output_model.state_dict(),
            "vocab": self.corpus.vocab,
            "normalize": self.cfg.data.normalize,
            "config": self.cfg.to_dict(),
            "step": state.pop("step"),
            "val_loss": val_loss,
            "optimizer": self.optimizer.state_dict(),
            "best_val_loss": state.pop("best_val_loss"),
            "train_seconds": state.pop("train_seconds"),
            "corpus_sha256": self.corpus.sha256,
            **state,  # streams, and max_steps once there is a total
        }
        if self.average is not None:
            ckpt["train_weights"] = self.unwrapped.state_dict()
        return ckpt

    def load_state_dict(self, ckpt: Checkpoint) -> None:
        """Resume from a checkpoint that check_resumable accepted, on any number of processes."""
        self.unwrapped.load_state_dict(ckpt.get("train_weights", ckpt["model"]))
        if self.average is not None:  # a checkpoint without the average starts it from the weights
            self.average.model.load_state_dict(
                ckpt["model"] if "train_weights" in ckpt else self.unwrapped.state_dict()
            )
        self.optimizer.load_state_dict(ckpt["optimizer"])
        keep_plan = self.cfg.train.max_steps == "auto"
        self.state.load_state_dict(ckpt, self.stream_start, self.stream_stop, self.device, keep_plan)

    def _prepare_out_dir(self) -> None:
        """Clean out_dir up and write config.yaml (main process), once the checkpoint in it was accepted."""
        if not self.is_main:
            return
        try:
            remove_stale_temps(self.paths.out_dir)  # saves cut short by kill -9; the files beside them are whole
            save_config(self.cfg, self.paths.out_dir / "config.yaml")
        except OSError as e:
            raise UserError(f"out_dir {str(self.paths.out_dir)!r} cannot be written: {e.strerror or e}") from None

    # ------------------------------------------------------------ saving, evaluating, logging

    def save(self, path: Path, val_loss: float | None) -> None:
        ckpt = self.state_dict(val_loss)  # collective: every process takes part
        # state_dict's .cpu() waited for the gather; one that NCCL aborted returned garbage, never to be written
        check_peers(self.accelerator)
        if not all(torch.isfinite(p).all() for p in self.unwrapped.parameters()):  # the same on every process
            raise TrainingError("the weights are not finite; refusing to write a checkpoint")
        if not self.is_main:
            return
        try:
            save_checkpoint(path, ckpt)
        except OSError as e:  # disk full, folder removed...: the previous file is still whole
            raise TrainingError(f"could not write {path}: {e.strerror or e}; the previous checkpoint is kept") from None

    def evaluate(self) -> float:
        """The validation loss of `output_model`, logged with a sample of its text; a new best is saved as best.pt.
        TrainingError, on every process, when its predictions are not finite. Collective."""
        clock = time.monotonic()
        val, chars = evaluate_loss(self.output_model, self.evals, self.stream_start, self.stream_stop, self.accelerator)
        check_peers(self.accelerator)  # a loss reduced by an aborted NCCL collective is garbage: not logged, not best
        event = {"step": self.state.step, "val_loss": val, "val_bpc": val / LN2, "val_chars": chars}
        event |= {"val_seconds": time.monotonic() - clock, "train_seconds": self.state.train_seconds}
        sample: str | None = ""
        sampled = self.cfg.train.sample_chars > 0
        if self.is_main and sampled:
            clock = time.monotonic()
            sample = sample_text(self.output_model, self.corpus.vocab, self.sample_prime, self.cfg.train)
            event |= {"sample": sample, "sample_seconds": time.monotonic() - clock}
        fault = prediction_fault(val, sample, self.accelerator, sampled)
        if fault is not None:  # before anything is logged or saved: such weights would resume and export broken
            raise TrainingError(
                f"the model's predictions are not finite at step {self.state.step} ({fault}): training diverged; "
                f"lower train.lr or use train.mixed_precision=no; nothing from step {self.state.step} was saved"
            )
        self.last_sample = sample
        self.log(event)
        if val < self.state.best_val:
            self.state.best_val = val
            self.save(self.paths.best, val)
        return val

    def log(self, event: dict) -> None:
        """Append one event to metrics.jsonl (main process only), the source of truth; its numbers also go to
        the trackers of train.log_with."""
        if self.is_main:
            with open(self.paths.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")
        if self.accelerator.trackers:
            numbers = {k: v for k, v in event.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            numbers.pop("step", None)
            if numbers:
                self.accelerator.log(numbers, step=event["step"])

    def say(self, line: str) -> None:
        """One line for the user on stderr, from the main process."""
        if self.is_main:
            print(f"charlstm: {line}", file=sys.stderr)
