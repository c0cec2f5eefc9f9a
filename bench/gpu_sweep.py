"""`python bench/gpu_sweep.py OUT.json --budget S [--dry-run]`: the GPU check's sweep, in one process.

For each (shape, per-GPU batch, precision): training steps of trainer.model.build_model's network (forward over
T, cross-entropy, backward, clip, fused AdamW) on random tokens, and per cell chars/s, peak memory and the GPU's
busy fraction (kernel time from torch.profiler over a few steps / the steps' wall time). Precisions: `tf32` (fp32
weights, TF32 allowed in cuDNN and matmuls), `fp16` (autocast fp16 with loss scaling: cuDNN's LSTM in fp16) and
`bf16` (the weights themselves in bfloat16; "unsupported" where cuDNN's LSTM refuses them). A cell that runs out
of memory or fails is recorded and the sweep goes on; it stops starting cells when its budget would not hold the
next one. OUT.json is rewritten after every cell, so a sweep killed at its stage's end still leaves its figures.
Before the grid: the trainer's own step beside this bare step (bench/gpu_trainer_step.py), as `trainer_step`.
--dry-run: the same code on the CPU at tiny sizes, fp32 only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.config import ModelConfig  # noqa: E402 (after the path setup: run as a script)
from trainer.model import build_model  # noqa: E402

VOCAB = 96  # a corpus of printable ASCII: the head's width, which matters little beside the LSTM
# The shapes: the seed's 2 x 512 at T=100 (bench/common.py's SPEED_SHAPE) and configs/big.yaml's 3 x 1024 at T=256
SHAPES = {
    "3x1024_T256": {"embed": 128, "hidden": 1024, "layers": 3, "seq_len": 256},
    "2x512_T100": {"embed": 64, "hidden": 512, "layers": 2, "seq_len": 100},
}
DRY_SHAPES = {
    "3x24_T8": {"embed": 8, "hidden": 24, "layers": 3, "seq_len": 8},
    "2x16_T8": {"embed": 8, "hidden": 16, "layers": 2, "seq_len": 8},
}
# Most information first: every shape and precision at big.yaml's per-GPU batch (64), then at the far ends
# (256, 512), then 128; a sweep cut short still compares precisions and shapes.
BATCHES, DRY_BATCHES = [64, 256, 512, 128], [2, 4]
PRECISIONS, DRY_PRECISIONS = ["tf32", "fp16", "bf16"], ["fp32"]
WARMUP, TIMED, PROFILED = 3, 8, 3  # steps per cell: cuDNN's plan and the allocator settle in the warm-up
DRY_STEPS = (1, 2, 1)


def cells(dry_run: bool) -> list[tuple[str, dict, int, str]]:
    shapes, batches = (DRY_SHAPES, DRY_BATCHES) if dry_run else (SHAPES, BATCHES)
    precisions = DRY_PRECISIONS if dry_run else PRECISIONS
    return [(name, shape, b, p) for b in batches for name, shape in shapes.items() for p in precisions]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(shape: dict, batch: int, precision: str, device: torch.device):
    """One training step's closure over a fresh model; its parameter count."""
    torch.manual_seed(0)
    cfg = ModelConfig(embed=shape["embed"], hidden=shape["hidden"], layers=shape["layers"], dropout=0.2)
    model = build_model(VOCAB, cfg).to(device)
    if precision == "bf16":
        model = model.to(torch.bfloat16)  # the weights in bf16: what cuDNN's LSTM runs without autocast
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    fp16 = precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)  # loss scaling: fp16 gradients underflow without it
    tokens = torch.randint(0, VOCAB, (batch, shape["seq_len"] + 1), device=device)  # (B, T+1): inputs and targets

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            logits, _ = model(tokens[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # the trainer's default clip
        scaler.step(optimizer)
        scaler.update()

    return step, sum(p.numel() for p in model.parameters())


def kernel_seconds(step, steps: int, device: torch.device) -> float | None:
    """GPU time of `steps` steps: the union of the profiled device events (kernels, copies). None on a CPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    spans = sorted(
        (e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
    )
    return union_us(spans) / 1e6 if spans else None


def union_us(spans: list[tuple[float, float]]) -> float:
    """The length of the union of sorted (start, end) intervals: overlapping kernels count once."""
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def time_step(step, chars: int, device: torch.device, warmup: int, timed: int, profiled: int) -> dict:
    """chars/s and busy fraction of step(), which trains on `chars` characters. The wall time per step comes
    from unprofiled steps (the profiler slows the CPU side)."""
    for _ in range(warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(timed):
        step()
    sync(device)
    per_step = (time.perf_counter() - started) / timed
    kernels = kernel_seconds(step, profiled, device)
    return {
        "seconds_per_step": round(per_step, 5),
        "chars_per_s": round(chars / per_step),
        "busy": None if kernels is None else round(min(1.0, kernels / profiled / per_step), 3),
    }


def measure(shape: dict, batch: int, precision: str, device: torch.device, dry_run: bool) -> dict:
    """One cell's figures."""
    steps = DRY_STEPS if dry_run else (WARMUP, TIMED, PROFILED)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step, params = make_step(shape, batch, precision, device)
    timing = time_step(step, batch * shape["seq_len"], device, *steps)
    return {
        "status": "ok",
        "params": params,
        **timing,
        "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
    }


def run_cell(name: str, shape: dict, batch: int, precision: str, device: torch.device, dry_run: bool) -> dict:
    """measure(), with a failure recorded: out of memory, bf16 weights cuDNN refuses, any other error."""
    cell = {"shape": name, "batch": batch, "seq_len": shape["seq_len"], "precision": precision}
    started = time.monotonic()
    try:
        cell |= measure(shape, batch, precision, device, dry_run)
    except torch.cuda.OutOfMemoryError:
        cell["status"] = "oom"
    except RuntimeError as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        cell |= {"status": "unsupported" if precision == "bf16" else "error", "why": why}
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the next cell's peak memory is its own
    cell["cell_seconds"] = round(time.monotonic() - started, 2)
    return cell


def trainer_step(device: torch.device, dry_run: bool) -> dict:
    """bench/gpu_trainer_step.py's comparison, or the error that stopped it (the grid still runs)."""
    import gpu_trainer_step

    try:
        return gpu_trainer_step.compare(device, dry_run)
    except Exception as e:  # noqa: BLE001 (a figure missing is recorded, not a reason to lose the sweep)
        return {"status": "error", "why": (str(e).strip().splitlines() or [type(e).__name__])[0][:300]}


def main() -> int:
    parser = argparse.ArgumentParser(description="The GPU check's sweep: chars/s, memory and busy fraction.")
    parser.add_argument("out", help="the JSON file, rewritten after every cell")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds; no cell starts that would not fit")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes, fp32 only")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # "TF32" cells: the head's matmuls in TF32 as well as cuDNN's
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # fixed shapes per cell: let cuDNN pick its fastest algorithm
    figures: dict = {"device": str(device), "cells": [], "stopped": None}
    figures["trainer_step"] = trainer_step(device, args.dry_run)  # first: the figure the step work is judged by
    Path(args.out).write_text(json.dumps(figures, indent=2))
    longest = 0.0  # the slowest cell so far: a cell is started only if that much time is left
    for name, shape, batch, precision in cells(args.dry_run):
        if time.monotonic() + 1.5 * longest > deadline:
            figures["cells"].append({"shape": name, "batch": batch, "precision": precision, "status": "skipped"})
            figures["stopped"] = "the sweep's budget"
            continue
        cell = run_cell(name, shape, batch, precision, device, args.dry_run)
        longest = max(longest, cell["cell_seconds"])
        figures["cells"].append(cell)
        print(json.dumps(cell), flush=True)
        Path(args.out).write_text(json.dumps(figures, indent=2))
    Path(args.out).write_text(json.dumps(figures, indent=2))
    failed = figures["trainer_step"].get("status") == "error"
    return 1 if failed or any(cell["status"] == "error" for cell in figures["cells"]) else 0


if __name__ == "__main__":
    sys.exit(main())
