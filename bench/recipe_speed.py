"""The 10-minute recipe's step at several widths and batches: chars/s side by side, in the precision that
`auto` picks on this machine (run it under ONEDNN_MAX_CPU_ISA=AVX2 for a CPU without native bf16).

In a fixed budget the width trades against the number of steps; this is the speed half of that trade (the
docs/benchmarks.md's recipe tables are the other). Every contender is configs/shakespeare.yaml with its shape
overridden, in a fresh process, in alternating rounds; the figure is the median over the measured steps
of all rounds (the first steps of each run are warm-up and not counted).

    python bench/recipe_speed.py [--rounds 2] [--steps 30]
"""

from __future__ import annotations

import argparse

from common import median, report, train_chars_per_s

WARMUP = 4  # log events (one every 5 steps) of warm-up: the first 20 steps
SHAPES = {  # contender -> overrides of configs/shakespeare.yaml
    "2 x 512, 16 streams": ["model.hidden=512"],
    "2 x 384, 16 streams": ["model.hidden=384"],
    "2 x 320, 32 streams": ["model.hidden=320", "train.batch_size=32"],
    "2 x 256, 16 streams": ["model.hidden=256"],
    "2 x 256, 32 streams": ["model.hidden=256", "train.batch_size=32"],
}


def chars_per_s(steps: int, overrides: list[str]) -> list[float]:
    fixed = ["train.max_minutes=null", "train.eval_every=100000", "train.save_every=100000", "train.log_every=5"]
    return train_chars_per_s("configs/shakespeare.yaml", [f"train.max_steps={steps}", *fixed, *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="measured steps per run (after 20 warm-up steps)")
    args = parser.parse_args()
    speeds: dict[str, list[float]] = {name: [] for name in SHAPES}
    for round_ in range(args.rounds):
        for name, overrides in SHAPES.items():
            speeds[name] += chars_per_s(5 * WARMUP + args.steps, overrides)[WARMUP:]
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{k} {median(v):,.0f}" for k, v in speeds.items()))
    title = "Training chars/s of configs/shakespeare.yaml's step at other shapes"
    report(title, speeds, "2 x 512, 16 streams", against="vs 2 x 512")


if __name__ == "__main__":
    main()
