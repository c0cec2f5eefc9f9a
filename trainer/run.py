"""One training run: the parts it is made of, what changes as it trains, and the one pair that writes that
state to a checkpoint and reads it back.

A process of an N-process run owns streams [first, last) of the B global streams and their carried LSTM
state (h, c); everything else is the same on every process. `Run.start` sets a run up, from scratch or from
out_dir/ckpt.pt; `Run.state_dict` and `Run.load_state_dict` are the whole of what a checkpoint holds and
what resuming restores, side by side, so exact resume is easy to check by reading.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from trainer.checkpoint import FORMAT, Checkpoint, save_checkpoint
from trainer.config import Config, UserError, check_processes, save_config
from trainer.data import Corpus, EvalStreams, TrainStreams, split
from trainer.evaluate import choose_prime, evaluate_loss, sample_text
from trainer.files import remove_stale_temps
from trainer.model import CharLSTM, build_model
from trainer.precision import Precision, make_accelerator
from trainer.regularize import WeightAverage
from trainer.resume import fine_tuning, load_here, read_resume_checkpoint, same_text_everywhere, together

LN2 = math.log(2.0)


class TrainingError(Exception):
    """Training cannot go on (diverged, cannot save); printed as one line."""


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
    model: torch.nn.Module  # what trains: DDP-wrapped on several processes
    bare: CharLSTM  # the same weights, unwrapped
    average: WeightAverage | None  # train.ema_decay: what gets evaluated, saved as `model` and exported
    optimizer: torch.optim.Optimizer
    paths: RunPaths
    first: int  # this process's streams are [first, last)
    last: int
    # ---- changing: all of it is in the checkpoint
    step: int = 0  # optimizer steps done
    best_val: float = math.inf
    h: Tensor | None = None  # (L, b, H) carried state of this process's streams
    c: Tensor | None = None
    bad_steps: int = 0  # non-finite steps in a row (never saved: a save follows only good steps)
    max_steps: int | None = None  # the total; None until train.max_steps=auto has timed the first steps
    resumed_from: int | None = None  # the step of the checkpoint this process started from
    train_seconds: float = 0.0  # wall-clock seconds of training steps so far, evaluations and saves not counted
    lock: object = None  # the main process's open out_dir/.lock, locked while the run lives
    sample_prime: str = "\n"  # what the samples at evaluations start from (train.sample_prime)
    last_sample: str = ""  # the text sampled at the last evaluation (main process)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def evaluated(self) -> CharLSTM:
        """The weights that get evaluated, saved as `model` and exported."""
        return self.average.model if self.average is not None else self.bare

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
        corpus = same_text_everywhere(loaded, cfg, accelerator)  # each process's own copy, checked against main's
        corpus, init = fine_tuning(cfg, corpus, accelerator)
        train_ids, val_ids = split(corpus.ids, cfg.data.val_fraction)
        streams = TrainStreams(train_ids, t.batch_size, t.seq_len)  # bad sizes end here, before out_dir exists
        evals = EvalStreams(val_ids, t.batch_size, t.seq_len, t.eval_chars)
        sample_prime = choose_prime(t.sample_prime, corpus, val_ids)
        paths = RunPaths(Path(cfg.out_dir))
        lock = together(accelerator, lambda: lock_out_dir(paths.out_dir) if accelerator.is_main_process else None)
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
            model=wrapped,
            bare=accelerator.unwrap_model(wrapped),
            average=average,
            optimizer=optimizer,
            paths=paths,
            first=rank * local_batch,
            last=(rank + 1) * local_batch,
            max_steps=t.max_steps if isinstance(t.max_steps, int) else None,
            lock=lock,
            sample_prime=sample_prime,
        )
        run.h, run.c = run.bare.zero_state(local_batch, accelerator.device)
        if ckpt is not None:
            run.load_state_dict(ckpt)
        together(accelerator, run._prepare_out_dir)
        if trackers:  # the resolved config, flat, as the trackers' hyperparameters
            flat = flatten(cfg.to_dict())
            accelerator.init_trackers("charlstm", config={k: v if v is not None else "none" for k, v in flat.items()})
        return run

    def state_dict(self, val_loss: float | None) -> Checkpoint:
        """The checkpoint of the run as it is now; val_loss is that of `evaluated` when a save follows an
        evaluation. Collective: every process takes part (the streams' state is gathered)."""
        gather = self.accelerator.gather  # (b, L, H) of each process -> (B, L, H) in stream order
        ckpt: Checkpoint = {
            "format": FORMAT,
            "model": self.evaluated.state_dict(),
            "vocab": self.corpus.vocab,
            "normalize": self.cfg.data.normalize,
            "config": self.cfg.to_dict(),
            "step": self.step,
            "val_loss": val_loss,
            "optimizer": self.optimizer.state_dict(),
            "best_val_loss": self.best_val,
            "train_seconds": self.train_seconds,
            "corpus_sha256": self.corpus.sha256,
            "streams": {
                "h": gather(self.h.transpose(0, 1).contiguous()).cpu(),
                "c": gather(self.c.transpose(0, 1).contiguous()).cpu(),
            },
        }
        if self.max_steps is not None:
            ckpt["max_steps"] = self.max_steps
        if self.average is not None:
            ckpt["train_weights"] = self.bare.state_dict()
        return ckpt

    def load_state_dict(self, ckpt: Checkpoint) -> None:
        """Resume from a checkpoint that check_resumable accepted, on any number of processes."""
        self.bare.load_state_dict(ckpt.get("train_weights", ckpt["model"]))
        if self.average is not None:  # a checkpoint without the average starts it from the weights
            self.average.model.load_state_dict(ckpt["model"] if "train_weights" in ckpt else self.bare.state_dict())
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = self.resumed_from = ckpt["step"]
        self.best_val = ckpt.get("best_val_loss", math.inf)
        self.train_seconds = ckpt.get("train_seconds", 0.0)
        if self.cfg.train.max_steps == "auto":  # keep the total fixed when the run began; an explicit one wins
            self.max_steps = ckpt.get("max_steps")
        for name in ("h", "c"):  # (B, L, H) of all streams -> (L, b, H) of this process's
            mine = ckpt["streams"][name][self.first : self.last].transpose(0, 1).contiguous()
            setattr(self, name, mine.to(self.device))

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
        if not all(torch.isfinite(p).all() for p in self.bare.parameters()):  # the same on every process
            raise TrainingError("the weights are not finite; refusing to write a checkpoint")
        if not self.is_main:
            return
        try:
            save_checkpoint(path, ckpt)
        except OSError as e:  # disk full, folder removed...: the previous file is still whole
            raise TrainingError(f"could not write {path}: {e.strerror or e}; the previous checkpoint is kept") from None

    def evaluate(self) -> float:
        """The validation loss of `evaluated`, logged with a sample of its text; a new best is saved as best.pt."""
        clock = time.monotonic()
        val, chars = evaluate_loss(self.evaluated, self.evals, self.first, self.last, self.accelerator)
        event = {"step": self.step, "val_loss": val, "val_bpc": val / LN2, "val_chars": chars}
        event |= {"val_seconds": time.monotonic() - clock, "train_seconds": self.train_seconds}
        self.last_sample = ""
        if self.is_main and self.cfg.train.sample_chars > 0:
            clock = time.monotonic()
            self.last_sample = sample_text(self.evaluated, self.corpus.vocab, self.sample_prime, self.cfg.train)
            event |= {"sample": self.last_sample, "sample_seconds": time.monotonic() - clock}
        self.log(event)
        if val < self.best_val:
            self.best_val = val
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


# ---------------------------------------------------------------- helpers of Run.start and Run.evaluate


def build_models(
    cfg: Config, vocab_size: int, precision: Precision, init: Checkpoint | None
) -> tuple[CharLSTM, WeightAverage | None]:
    """The model, seeded (or from train.init_from's weights), and its weight average when train.ema_decay."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(vocab_size, cfg.model, precision.fp32_lstm)
    if init is not None:
        load_init_weights(model, init, cfg.train.init_from)
    average = None
    if cfg.train.ema_decay > 0:
        average = WeightAverage(build_model(vocab_size, cfg.model, precision.fp32_lstm), cfg.train.ema_decay)
        average.model.load_state_dict(model.state_dict())
    return model, average


def load_init_weights(model: CharLSTM, init: Checkpoint, path: str) -> None:
    """The init checkpoint's weights (`model`: what it evaluated and exported) into a freshly initialized model
    whose vocabulary may be longer: the rows of the added characters (embedding, head weight and bias) keep
    the fresh model's initialization, like a new model's; every other weight is the checkpoint's."""
    own = model.state_dict()
    rows = len(init["vocab"])
    for key, value in init["model"].items():
        if key not in own:
            raise UserError(f"train.init_from {path}: its weights do not fit this model ({key})")
        if key in ("embed.weight", "head.weight", "head.bias"):
            own[key][:rows] = value
        else:
            own[key].copy_(value)
    model.load_state_dict(own)


def available_trackers(log_with: str) -> list[str]:
    """The trackers of train.log_with that can run here; for each one that cannot, one line says why."""
    import importlib.util

    wanted = {"none": [], "all": ["tensorboard", "wandb"]}.get(log_with, [log_with])
    ready = []
    for name in wanted:
        if importlib.util.find_spec(name) is None:
            extra = "pip install 'charlstm[tensorboard]'" if name == "tensorboard" else "pip install wandb"
            why = f"{name} is not installed ({extra})"
        elif name == "wandb" and not wandb_logged_in():
            why = "wandb is not logged in (wandb login)"
        else:
            ready.append(name)
            continue
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"charlstm: train.log_with={log_with}: {why}; metrics.jsonl only", file=sys.stderr)
    return ready


def wandb_logged_in() -> bool:
    import wandb

    return bool(os.environ.get("WANDB_API_KEY") or wandb.api.api_key)


def flatten(values: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 3e-3}} -> {"train.lr": 3e-3}"""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def lock_out_dir(out_dir: Path):
    """Create out_dir and take it for this run (one run at a time): its open .lock file, locked while the run
    lives. UserError when it cannot be written or another run holds it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir {str(out_dir)!r} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / ".lock", "a+")  # noqa: SIM115 (held for the whole run)
        holder = take_lock(lock)
    except OSError as e:
        raise UserError(f"out_dir {str(out_dir)!r} cannot be written: {e.strerror or e}") from None
    if holder is not None:
        lock.close()
        raise UserError(
            f"out_dir {str(out_dir)!r} is in use by another run"
            + (f" (process {holder})" if holder else "")
            + ": wait for it to end, or use another out_dir"
        )
    return lock


def take_lock(file) -> str | None:
    """Lock an out_dir's .lock file for this process (flock: the OS drops it when the process ends, even by
    kill -9, so no stale lock survives). None when taken; else the pid written by the run that holds it."""
    import fcntl

    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        return file.read().strip()
    file.seek(0)
    file.truncate()
    file.write(str(os.getpid()))
    file.flush()
    return None


def make_optimizer(model: CharLSTM, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on the matrices only (not on biases nor on the embedding)."""
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    others = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("embed")]
    groups = [
        {"params": matrices, "weight_decay": cfg.train.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"  # one kernel for all parameters on GPU
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, cfg.train.beta2), fused=fused or None)
