"""`python bench/gpu_smoke.py OUT_DIR [--dry-run]`: the GPU check's smoke stage, in one process (one torch import,
one CUDA start): 20-step runs of trainer.train with weight drop, locked dropout and grad_accum=2, and a stop and
resume that must end bitwise equal to an uninterrupted run. OUT_DIR/smoke.json is rewritten after every run, so a
stage killed at its budget still says which runs passed."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

# cuBLAS picks its reduction order by workspace unless told: the documented setting for reproducible cuDNN RNNs
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402 (after the environment: cuBLAS reads it when CUDA starts)

from trainer.checkpoint import load_checkpoint  # noqa: E402
from trainer.train import main as train  # noqa: E402

STEPS = 20  # the 20-step runs; the resumed run stops at half
# A shape that takes seconds on a GPU, and the dry run's that takes seconds on a CPU
SHAPE = ["model.embed=64", "model.hidden=256", "model.layers=2", "train.batch_size=32", "train.seq_len=64"]
DRY_SHAPE = ["model.embed=16", "model.hidden=32", "model.layers=2", "train.batch_size=8", "train.seq_len=16"]
COMMON = [
    "data.path=tests/data/english.txt",  # in the repository: no network, nothing to download
    f"train.decay_steps={STEPS}",  # the same schedule for the run stopped at half as for the whole one
    "train.warmup_steps=5",
    "train.eval_every=10",
    "train.save_every=10",
    "train.log_every=10",
    "train.max_minutes=null",
]
RUNS = {  # what each smoke run exercises on the GPU
    "weight_drop": ["model.weight_drop=0.2"],
    "locked_dropout": ["model.locked_dropout=true"],
    "grad_accum": ["train.grad_accum=2"],
}


def one_run(out: Path, overrides: list[str], steps: int) -> dict:
    """trainer.train to `steps` in out; its exit code, step and validation loss."""
    code = train([*overrides, f"train.max_steps={steps}", f"out_dir={out}"])
    ckpt = load_checkpoint(out / "ckpt.pt") if (out / "ckpt.pt").exists() else None
    val = None if ckpt is None else ckpt["val_loss"]
    finite = val is not None and math.isfinite(val)
    return {"exit": code, "step": None if ckpt is None else ckpt["step"], "val_loss": val, "finite": finite}


def resume(out: Path, shape: list[str]) -> dict:
    """Run A to STEPS straight; run B to STEPS/2, then rerun to STEPS (it resumes from its checkpoint). B must
    have resumed at STEPS/2 (a fresh start would be bitwise equal too) and end with A's weights, bitwise."""
    overrides = [*COMMON, *shape, "model.dropout=0.2", "model.weight_drop=0.2"]  # masks keyed by step: exact
    straight = one_run(out / "straight", overrides, STEPS)
    half = one_run(out / "resumed", overrides, STEPS // 2)
    resumed = one_run(out / "resumed", overrides, STEPS)
    starts = [e for e in events(out / "resumed") if e.get("start")]
    a = load_checkpoint(out / "straight" / "ckpt.pt")["model"]
    b = load_checkpoint(out / "resumed" / "ckpt.pt")["model"]
    bitwise = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    diff = max(((a[k].float() - b[k].float()).abs().max().item() for k in a if k in b), default=None)
    return {
        "exit": straight["exit"] or half["exit"] or resumed["exit"],
        "resumed_from": [e["resumed_from"] for e in starts],
        "bitwise": bitwise,
        "max_abs_diff": diff,
        "ok": bitwise and [e["resumed_from"] for e in starts] == [None, STEPS // 2],
    }


def events(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main() -> int:
    parser = argparse.ArgumentParser(description="The GPU check's smoke runs, in one process.")
    parser.add_argument("out_dir")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    args = parser.parse_args()
    out = Path(args.out_dir)
    for name in [*RUNS, "straight", "resumed"]:
        shutil.rmtree(out / name, ignore_errors=True)  # a rerun into the same OUT_DIR must not resume old runs
    out.mkdir(parents=True, exist_ok=True)
    shape = DRY_SHAPE if args.dry_run else SHAPE
    figures: dict = {"device": "cuda" if torch.cuda.is_available() else "cpu"}
    for name, extra in RUNS.items():
        run = one_run(out / name, [*COMMON, *shape, *extra], STEPS)
        figures[name] = run | {"ok": run["exit"] == 0 and run["step"] == STEPS and run["finite"]}
        (out / "smoke.json").write_text(json.dumps(figures, indent=2))
    figures["resume"] = resume(out, shape)
    (out / "smoke.json").write_text(json.dumps(figures, indent=2))
    return 0 if all(run["ok"] for run in figures.values() if isinstance(run, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
