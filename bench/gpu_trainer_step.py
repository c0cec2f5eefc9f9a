"""The trainer's own step beside the sweep's bare step, at one shape, batch and precision (TF32), in the sweep's
process: chars/s and busy fraction of each, and their ratio. The bare step (gpu_sweep.make_step) is forward,
loss, backward, clip and fused AdamW on tokens already on the device; the trainer's (trainer.train.take_step)
adds what a real run does on the host: the window read and copied (pinned, prefetched), the keyed dropout masks,
the resets, the verdict and its one read of the device. On a GPU the ratio says what that host work costs; the
busy fraction says whether the device still waits for the host.
"""

from __future__ import annotations

import os
import random
import string
import tempfile
from pathlib import Path

import gpu_sweep
import torch

from trainer.config import load_config

SHAPE, BATCH = "2x512_T100", 128  # where host overhead shows most: a small model at a moderate batch
DRY_SHAPE, DRY_BATCH = "2x16_T8", 4


def make_trainer_step(shape: dict, batch: int, workdir: Path):
    """take_step over a Run on a random text of printable characters (enough for a few windows per stream)."""
    from trainer.run import Run
    from trainer.step import Budget, StopFlags
    from trainer.train import take_step

    os.environ["CHARLSTM_CACHE_DIR"] = str(workdir / "cache")  # the id cache stays in the check's folder
    text = workdir / "random.txt"
    chars = string.ascii_letters + string.digits + string.punctuation + " \n"
    rng = random.Random(0)
    text.write_text("".join(rng.choice(chars) for _ in range(batch * shape["seq_len"] * 8)))
    overrides = [
        f"data.path={text}",
        f"out_dir={workdir / 'run'}",
        f"model.embed={shape['embed']}",
        f"model.hidden={shape['hidden']}",
        f"model.layers={shape['layers']}",
        "model.dropout=0.2",  # as the bare step's
        f"train.batch_size={batch}",
        f"train.seq_len={shape['seq_len']}",
        "train.mixed_precision=no",  # fp32 weights; TF32 in cuDNN and matmuls, as the sweep's tf32 cells
        "train.max_steps=100000",
        "train.max_minutes=null",
        "train.ema_decay=0",
        "train.sample_chars=0",
    ]
    run = Run.start(load_config(None, overrides))
    stop, budget = StopFlags(), Budget(run.cfg, run.accelerator, run.log, run.say)
    return (lambda: take_step(run, stop, budget)), run


def compare(device: torch.device, dry_run: bool) -> dict:
    """Both steps timed as the sweep times a cell; `trainer_vs_bare` is the ratio of their chars/s."""
    name, batch = (DRY_SHAPE, DRY_BATCH) if dry_run else (SHAPE, BATCH)
    shape = (gpu_sweep.DRY_SHAPES if dry_run else gpu_sweep.SHAPES)[name]
    steps = gpu_sweep.DRY_STEPS if dry_run else (gpu_sweep.WARMUP, gpu_sweep.TIMED, gpu_sweep.PROFILED)
    figures: dict = {"shape": name, "batch": batch, "precision": "tf32"}
    bare, _ = gpu_sweep.make_step(shape, batch, "tf32", device)
    figures["bare"] = gpu_sweep.time_step(bare, batch * shape["seq_len"], device, *steps)
    with tempfile.TemporaryDirectory(prefix="charlstm-step-") as folder:
        step, run = make_trainer_step(shape, batch, Path(folder))
        try:
            figures["trainer"] = gpu_sweep.time_step(step, batch * shape["seq_len"], device, *steps)
        finally:
            run.feeder.close()
    figures["trainer_vs_bare"] = round(figures["trainer"]["chars_per_s"] / figures["bare"]["chars_per_s"], 3)
    return figures
