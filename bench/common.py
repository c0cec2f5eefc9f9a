"""Helpers shared by the benchmarks: run contenders in fresh processes, alternating, and take medians."""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.data import resolve_corpus  # noqa: E402 (after the path setup: the benchmarks run as scripts)
from trainer.errors import UserError  # noqa: E402

# The training shape of the speed benchmarks (bench/train_speed.py, and the GPU check's speed stage): the seed's
# 2 x 512 LSTM at batch 128 x sequence 100, dropout 0.5, clip 5, Adam 1e-3, nothing it lacks (no AR/TAR, no
# average), no evaluations or saves inside the measured steps.
SPEED_SHAPE = [
    "model.embed=64",
    "model.hidden=512",
    "model.layers=2",
    "model.dropout=0.5",
    "train.batch_size=128",
    "train.seq_len=100",
    "train.lr=0.001",
    "train.grad_clip=5",
    "train.warmup_steps=0",
    "train.ema_decay=0",
    "train.activation_reg=0",
    "train.temporal_reg=0",
    "train.eval_every=100000",
    "train.save_every=100000",
    "data.val_fraction=0.01",
    "train.max_minutes=null",
]


@functools.cache
def corpus() -> Path:
    """The benchmarks' text: Tiny Shakespeare, resolved the trainer's way (downloaded once into the user cache
    and checked by sha256); CHARLSTM_BENCH_CORPUS names another data.path (a file, or builtin:python-stdlib)."""
    name = os.environ.get("CHARLSTM_BENCH_CORPUS", "tinyshakespeare")
    try:
        return resolve_corpus(name)
    except UserError as e:  # no network, a bad path: one line that says how to point the benchmarks at a text
        raise SystemExit(
            f"error: the benchmarks' text ({name}): {e}; set CHARLSTM_BENCH_CORPUS to a text file (or "
            "builtin:python-docs) to run without the network"
        ) from None


def machine() -> str:
    """The CPU as the benchmarks name it: its model, cores, and what oneDNN can use of it."""
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = (
        "AMX"
        if "amx_bf16" in flags
        else "AVX-512 BF16"
        if "avx512_bf16" in flags
        else "AVX2"
        if "avx2" in flags
        else ""
    )
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    features = f" ({isa}{f'; ONEDNN_MAX_CPU_ISA={capped}' if capped else ''})" if isa else ""
    return f"{cpu}{features}, {os.cpu_count()} cores, {platform.system()}"


def run_json(args: list[str], env: dict | None = None) -> dict:
    """Run `python ARGS` in a fresh process and parse the last stdout line as JSON."""
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(args)}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_chars_per_s(config: str | None, overrides: list[str]) -> list[float]:
    """Train CONFIG (None: the defaults) with OVERRIDES in a fresh process, into a temporary out_dir: the chars/s
    of each log event."""
    import tempfile

    config_args = ["--config", config] if config else []
    with tempfile.TemporaryDirectory() as out:
        code = (
            "import json; from trainer.train import main; "
            f"main([*{config_args!r}, 'data.path={corpus()}', 'out_dir={out}', *{overrides!r}]); "
            f"print(json.dumps([json.loads(l)['chars_per_s'] for l in open('{out}/metrics.jsonl') "
            "if 'chars_per_s' in l]))"
        )
        return run_json(["-c", code])


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[tuple], headers: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def report(title: str, speeds: dict[str, list[float]], reference: str, against: str = "vs seed") -> None:
    """Medians, ratios against `reference` (the first column of the tables in docs/benchmarks.md), and a JSON line."""
    base = median(speeds[reference])
    rows = [(name, f"{median(v):,.0f}", f"{median(v) / base:.2f}x") for name, v in speeds.items()]
    print(f"\n{title}, on {machine()}")
    print(table(rows, ("contender", "chars/s (median)", against)))
    print(json.dumps({k: median(v) for k, v in speeds.items()}))
