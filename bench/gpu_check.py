"""Everything this project needs to know from a GPU machine, in one call (bench/gpu_check.sh OUT_DIR).

For a bare machine with an NVIDIA GPU where python3 already has the packages of PACKAGES and there is no network:
nothing installed, at most 7 minutes. The stages, in order, each under its budget in STAGES (a child still running
at its stage's end is killed with its process group, the stage is failed with what it had, and the next one runs):
  env     GPU, driver, CUDA, cuDNN, NCCL, the TF32 flags, which packages import (a missing one fails the stage)
  tests   the CUDA-only tests (pytest -m cuda); a missing pytest is a failure, not a skip
  export  a 30-step GPU run exported to ONNX, verified on the CPU runtime, sampled with --device cpu
  sweep   the trainer's step beside the bare one (bench/gpu_trainer_step.py), then 2 x 512 at T=100 and
          3 x 1024 at T=256, per-GPU batch 64..512, TF32 / fp16 / bf16 (bench/gpu_sweep.py)
  smoke   20-step runs: weight drop, locked dropout, grad_accum=2, a bitwise stop and resume (bench/gpu_smoke.py)
  recipe  configs/shakespeare.yaml cut to 60 s
Log: OUT_DIR/gpu_check.log; every figure: OUT_DIR/gpu_check.json (rewritten after each stage).
--dry-run runs every stage on the CPU at tiny sizes (a test does, so this script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from gpu_runner import Runner, events, median, read_json

# Seconds per stage, in the order they run. Their sum (380) leaves 40 s of the 7 minutes for starting Python and
# killing what overran; gpu_check.sh cuts the whole check at 420 s, and TOTAL_S stops the stages before that.
STAGES = {
    "env": 20,  # one Python start, a torch import, nvidia-smi
    "tests": 60,  # tests/test_cuda.py: three 40-step trainings and a few forwards
    "export": 40,  # a 30-step run, the export and its 500-character check, a 200-character sample
    "sweep": 120,  # 24 cells of about 3 s, and CUDA's start
    "smoke": 60,  # six 20-step runs in one process
    "recipe": 80,  # 60 s of training, its start and its final evaluation
}
TOTAL_S = 400  # the whole check's deadline inside Python, under the shell's 420
SHELL_TIMEOUT_S = 420  # what gpu_check.sh passes to `timeout` (a test checks the two agree)
# The packages the image is said to hold, as NAME=MODULE for bench/gpu_env.py
PACKAGES = {
    "torch": "torch",
    "accelerate": "accelerate",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "matplotlib": "matplotlib",
    "pytest": "pytest",
}
TINY_SHAPE = ["model.embed=16", "model.hidden=32", "train.batch_size=8", "train.seq_len=16"]
EXPORT_SHAPE = ["model.embed=32", "model.hidden=128", "train.batch_size=16", "train.seq_len=64"]
TEXT = "tests/data/english.txt"  # in the repository: the export and smoke stages need no corpus from outside


class Check(Runner):
    def environment(self) -> dict:
        pairs = [f"{name}={module}" for name, module in PACKAGES.items()]
        result = self.run(["bench/gpu_env.py", *pairs, *(["--dry-run"] if self.dry_run else [])])
        figures = json.loads((result.stdout.strip().splitlines() or ["{}"])[-1])
        self.figures["corpus"] = figures.get("corpus", TEXT)
        return {"exit": result.returncode, **figures}

    def tests(self) -> dict:
        if "pytest" in self.figures["stages"].get("env", {}).get("missing", []):
            return {"failed": True, "error": "pytest is missing: the CUDA tests cannot run"}
        # the CUDA tests are all in tests/test_cuda.py (marker `cuda`): collecting the rest would only cost time
        result = self.run(["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"])
        summary = (result.stdout.strip().splitlines() or [""])[-1]
        return {"summary": summary, "exit": result.returncode}

    def export(self) -> dict:
        out = self.out / "export"
        shape = TINY_SHAPE if self.dry_run else EXPORT_SHAPE
        args = [*shape, "train.max_steps=30", "train.eval_every=30", "train.max_minutes=null", f"data.path={TEXT}"]
        trained = self.run(["-m", "trainer.train", *args, f"out_dir={out}"])
        if trained.returncode != 0:
            return {"exit": trained.returncode, "error": "the 30-step run failed"}
        precision = next((e["precision"] for e in events(out) if e.get("start")), None)
        result = self.run(["-m", "export.onnx", str(out / "ckpt.pt")])
        report = result.stdout.strip().splitlines()
        figures = {"exit": result.returncode, "trained_in": precision, "report": report}
        figures["identical"] = any("greedy 500 chars: identical" in line for line in report)
        if result.returncode == 0:
            sample = ["-m", "serve.sample", str(out / "ckpt.onnx"), "--prime", "The ", "--length", "200"]
            sampled = self.run([*sample, "--top-k", "5", "--seed", "0", "--device", "cpu"])
            figures |= {"sample": sampled.stdout, "exit": sampled.returncode}
        figures["failed"] = not figures["identical"]
        return figures

    def sweep(self) -> dict:
        path = self.out / "sweep.json"
        budget = max(1.0, self.remaining() - 10)  # 10 s for the process's start and its last write
        args = ["bench/gpu_sweep.py", str(path), "--budget", f"{budget:.0f}"]
        result = self.run([*args, *(["--dry-run"] if self.dry_run else [])])
        figures = read_json(path)
        ran = [cell for cell in figures.get("cells", []) if cell["status"] == "ok"]
        return {"exit": result.returncode, "cells_ok": len(ran), **figures, "failed": not ran}

    def smoke(self) -> dict:
        result = self.run(["bench/gpu_smoke.py", str(self.out / "smoke"), *(["--dry-run"] if self.dry_run else [])])
        return {"exit": result.returncode, **read_json(self.out / "smoke" / "smoke.json")}

    def recipe(self) -> dict:
        out = self.out / "shakespeare"
        budget = ["train.max_minutes=0.05", *TINY_SHAPE] if self.dry_run else ["train.max_minutes=1"]
        corpus = self.figures.get("corpus", TEXT)
        args = ["--config", "configs/shakespeare.yaml", *budget, f"data.path={corpus}", f"out_dir={out}"]
        result = self.run(["-m", "trainer.train", *args])
        run = events(out)
        val = [e["val_loss"] for e in run if "val_loss" in e]
        planned = [e["max_steps"] for e in run if "max_steps" in e and e.get("start") is None]
        return {"exit": result.returncode, "corpus": corpus, "val_loss": val[-1] if val else None} | {
            "best": min(val, default=None),
            "max_steps": planned[-1] if planned else None,
            "chars_per_s": median([e["chars_per_s"] for e in run if "chars_per_s" in e]),
        }


def run_all(check: Check) -> list[str]:
    """Every stage of STAGES in order; the names of those that failed."""
    for name in STAGES:
        check.stage(name, getattr(check, "environment" if name == "env" else name))
    return [name for name, stage in check.figures["stages"].items() if stage["status"] != "ok"]


def main() -> int:
    parser = argparse.ArgumentParser(description="The GPU check: every stage, one call, figures as JSON.")
    parser.add_argument("out_dir", help="where the log and gpu_check.json go")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.dry_run, dict(STAGES), TOTAL_S)
    signal.signal(signal.SIGTERM, check.on_sigterm)  # the shell's timeout: take the running child's group along
    failed = run_all(check)
    ok = len(check.figures["stages"]) - len(failed)
    check.log(f"\ngpu_check: {ok} stages ok" + (f", failed: {failed}" if failed else ""))
    check.log(f"{check.figures['total_seconds']:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
