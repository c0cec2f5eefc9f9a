"""Everything this project needs to know from a GPU machine, in one call (bench/gpu_check.sh OUT_DIR).

For a bare machine with an NVIDIA GPU where python3 already has torch, accelerate, onnx and onnxruntime and
there is no network: no installs, under 8 minutes. Stages, each logged to OUT_DIR/gpu_check.log, figures
into OUT_DIR/gpu_check.json:
  env        GPU, torch, CUDA, cuDNN, bf16 support, what `auto` precision picks
  tests      the CUDA-only tests (pytest -m cuda), when pytest is there
  speed      training chars/s, 2 x 512, batch 128 x 100, in fp32/TF32, bf16 and fp16, the seed's method alongside
  recipe     configs/shakespeare.yaml for 3 minutes, its validation loss
  big        the configs/big.yaml shape for 60 s
  export     the recipe's checkpoint to ONNX, verified on the CPU runtime, and scored
--dry-run runs every stage on the CPU at tiny sizes (a test does, so this script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import SPEED_SHAPE  # the shape of bench/train_speed.py, so the GPU's figures compare

ROOT = Path(__file__).resolve().parent.parent
TINY_SHAPE = ["model.embed=16", "model.hidden=32", "train.batch_size=8", "train.seq_len=16"]


class Check:
    def __init__(self, out: Path, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.log_file = open(out / "gpu_check.log", "a", encoding="utf-8")  # noqa: SIM115 (open for the run)
        self.figures: dict = {"dry_run": dry_run, "stages": {}}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if dry_run:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, whatever the machine has

    def log(self, text: str) -> None:
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        """python3 ARGS in the repository, its output in the log; a failure is logged, not raised."""
        self.log(f"$ python3 {' '.join(args)}")
        try:
            result = subprocess.run(
                [sys.executable, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            self.log(f"timed out after {timeout:.0f} s")
            return subprocess.CompletedProcess(args, 124, "", "")
        self.log_file.write(result.stdout[-20_000:] + result.stderr[-20_000:])
        if result.returncode != 0:
            self.log(f"exit {result.returncode}: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        return result

    def stage(self, name: str, function) -> None:
        self.log(f"\n== {name}")
        started = time.monotonic()
        try:
            figures = function()
            status = "ok" if figures.get("exit", 0) == 0 else "failed"
        except Exception as e:  # one stage's failure must not cost the others their device time
            figures, status = {"error": f"{type(e).__name__}: {e}"}, "failed"
        self.figures["stages"][name] = {"status": status, "seconds": round(time.monotonic() - started, 1), **figures}
        self.log(f"{name}: {status} {json.dumps(figures)}")
        (self.out / "gpu_check.json").write_text(json.dumps(self.figures, indent=2))

    def corpus(self) -> str:
        """Tiny Shakespeare if the cache has it (no network here), else the Python standard library."""
        spec = os.environ.get("CORPUS", "tests/data/english.txt" if self.dry_run else "tinyshakespeare")
        probe = self.run(["-m", "trainer.data", spec], timeout=120)
        return spec if probe.returncode == 0 else "builtin:python-stdlib"

    # ------------------------------------------------------------ stages

    def environment(self) -> dict:
        code = (
            "import json, torch, accelerate, onnxruntime\n"
            "from trainer.precision import choose_precision, device_type\n"
            "cuda = torch.cuda.is_available()\n"
            "print(json.dumps({'torch': torch.__version__, 'accelerate': accelerate.__version__,\n"
            " 'onnxruntime': onnxruntime.__version__, 'cuda': torch.version.cuda if cuda else None,\n"
            " 'cudnn': torch.backends.cudnn.version() if cuda else None,\n"
            " 'gpu': torch.cuda.get_device_name(0) if cuda else None,\n"
            " 'gpus': torch.cuda.device_count(), 'bf16': torch.cuda.is_bf16_supported() if cuda else None,\n"
            " 'auto_precision': choose_precision('auto', device_type()).mode}))\n"
        )
        result = self.run(["-c", code], timeout=120)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        figures["python"] = platform.python_version()
        return figures

    def tests(self) -> dict:
        if self.run(["-c", "import pytest"], timeout=60).returncode != 0:
            return {"skipped": "pytest is not installed here"}
        # the CUDA tests are all in tests/test_cuda.py (marker `cuda`): collecting the rest would only cost time
        result = self.run(
            ["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"], timeout=240
        )
        summary = (result.stdout.strip().splitlines() or [""])[-1]
        return {"summary": summary, "exit": result.returncode}

    def speed(self, corpus: str) -> dict:
        steps = 3 if self.dry_run else 300
        shape = [*SPEED_SHAPE, "train.log_every=10", *(TINY_SHAPE if self.dry_run else [])]
        figures: dict = {"exit": 0}  # the first failure's exit code: one contender failing fails the stage
        batch = ["8"] if self.dry_run else []  # the dry run checks that it runs, not how fast
        seed = self.run(["bench/seed_charrnn.py", "train", str(steps), self.resolved(corpus), *batch], timeout=150)
        if seed.returncode == 0:
            speeds = json.loads(seed.stdout.strip().splitlines()[-1])["chars_per_s"]
            figures["seed fp32"] = _median(speeds[len(speeds) // 5 :])
        figures["exit"] = figures["exit"] or seed.returncode
        precisions = ["no"] if self.dry_run else ["no", "bf16", "fp16"]
        for precision in precisions:
            out = self.out / f"speed_{precision}"
            args = [*shape, f"train.max_steps={steps}", f"train.mixed_precision={precision}", f"data.path={corpus}"]
            result = self.run(["-m", "trainer.train", *args, f"out_dir={out}"], timeout=150)
            if result.returncode == 0:
                speeds = [e["chars_per_s"] for e in _events(out) if "chars_per_s" in e]
                figures[f"charlstm {'fp32/TF32' if precision == 'no' else precision}"] = _median(speeds[1:] or speeds)
            figures["exit"] = figures["exit"] or result.returncode
        return figures

    def recipe(self, corpus: str) -> dict:
        out = self.out / "shakespeare"
        budget = ["train.max_minutes=0.06", *TINY_SHAPE] if self.dry_run else ["train.max_minutes=3"]
        args = ["--config", "configs/shakespeare.yaml", *budget, f"data.path={corpus}", f"out_dir={out}"]
        result = self.run(["-m", "trainer.train", *args], timeout=300)
        events = _events(out)
        val = [e["val_loss"] for e in events if "val_loss" in e]
        planned = [e["max_steps"] for e in events if "max_steps" in e and e.get("start") is None]
        return {"exit": result.returncode, "val_loss": val[-1] if val else None, "best": min(val, default=None)} | {
            "max_steps": planned[-1] if planned else None,
            "chars_per_s": _median([e["chars_per_s"] for e in events if "chars_per_s" in e]),
        }

    def big(self, corpus: str) -> dict:
        out = self.out / "big"
        budget = ["train.max_minutes=0.05", *TINY_SHAPE, "model.layers=2"] if self.dry_run else ["train.max_minutes=1"]
        args = ["--config", "configs/big.yaml", "train.max_steps=auto", "train.eval_every=1000000", *budget]
        result = self.run(["-m", "trainer.train", *args, f"data.path={corpus}", f"out_dir={out}"], timeout=150)
        events = _events(out)
        return {
            "exit": result.returncode,
            "chars_per_s": _median([e["chars_per_s"] for e in events if "chars_per_s" in e]),
        }

    def export(self) -> dict:
        ckpt = self.out / "shakespeare" / "best.pt"
        result = self.run(["-m", "export.onnx", str(ckpt)], timeout=240)
        figures: dict = {"exit": result.returncode, "report": result.stdout.strip().splitlines()}
        if result.returncode == 0:
            sample = self.run(
                [
                    "-m",
                    "serve.sample",
                    str(ckpt.with_suffix(".onnx")),
                    "--prime",
                    "ROMEO:",
                    "--length",
                    "200",
                    "--top-k",
                    "5",
                    "--seed",
                    "0",
                    "--device",
                    "cpu",
                ],
                timeout=120,
            )
            figures["sample"] = sample.stdout
        return figures

    def resolved(self, corpus: str) -> str:
        code = f"from trainer.data import resolve_corpus; print(resolve_corpus({corpus!r}))"
        return self.run(["-c", code], timeout=300).stdout.strip()


def _events(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _median(values: list[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def main() -> int:
    parser = argparse.ArgumentParser(description="The GPU check: every stage, one call, figures as JSON.")
    parser.add_argument("out_dir", help="where the log and gpu_check.json go")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.dry_run)
    check.stage("env", check.environment)
    check.stage("tests", check.tests)
    corpus = check.corpus()
    check.figures["corpus"] = corpus
    check.stage("speed", lambda: check.speed(corpus))
    check.stage("recipe", lambda: check.recipe(corpus))
    check.stage("big", lambda: check.big(corpus))
    check.stage("export", check.export)
    failed = [name for name, stage in check.figures["stages"].items() if stage["status"] != "ok"]
    check.log(
        f"\ngpu_check: {len(check.figures['stages']) - len(failed)} stages ok"
        + (f", failed: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
