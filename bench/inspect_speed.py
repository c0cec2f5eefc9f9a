"""Inspection against sampling, side by side on the same model: characters per second of `serve.inspect`
(reading a text: surprise, top 5, every cell's correlation sums, gate saturation recomputed and checked) and of
the batch-1 sampler (`Sampler.generate`, top-k 5), in alternating rounds in one process; medians reported.

    python bench/inspect_speed.py MODEL.onnx TEXT_FILE [--chars 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

from common import ROOT  # noqa: F401 (puts the repository on the import path)

from serve.inspect import InspectModel, inspect_text
from serve.sampler import Sampler


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("text", type=Path)
    parser.add_argument("--chars", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    text = args.text.read_text(encoding="utf-8")[: args.chars]
    sampler = Sampler(args.model, device="cpu")
    sampler.generate("The", 50, top_k=5, seed=0)  # warm-up
    inspector = InspectModel(args.model)  # loaded once, as the sampler is: the rates compare reading, not loading
    inspect_text(inspector, text[:200], unknown="skip")
    rates = {"sample": [], "inspect": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        sampler.generate("T", args.chars, top_k=5, seed=0)
        rates["sample"].append(args.chars / (time.perf_counter() - start))
        start = time.perf_counter()
        inspect_text(inspector, text, unknown="skip")
        rates["inspect"].append(len(text) / (time.perf_counter() - start))
    sample, inspect = statistics.median(rates["sample"]), statistics.median(rates["inspect"])
    print(f"machine: {cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores; model {args.model}")
    print(f"sampler, batch 1, top-k 5: {sample:,.0f} chars/s (median of {args.rounds})")
    print(f"inspection:                {inspect:,.0f} chars/s ({inspect / sample:.0%} of the sampler)")


if __name__ == "__main__":
    main()
