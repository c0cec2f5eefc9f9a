"""Training chars/s: our trainer (fp32, bf16, bf16 with locked dropout, bf16 with weight drop) against the seed's
method, side by side.

2 x 512 LSTM, batch 128 x sequence 100, dropout 0.5, clip 5, on Tiny Shakespeare. Each contender runs in
a fresh process, in alternating rounds; the figure is the median over the measured steps of all rounds
(the first steps of each run are warm-up and not counted).

    python bench/train_speed.py [--rounds 3] [--steps 8]
"""

from __future__ import annotations

import argparse

from common import SPEED_SHAPE, corpus, median, report, run_json, train_chars_per_s

WARMUP = 2


def ours(steps: int, precision: str, *extra: str) -> list[float]:
    overrides = [*SPEED_SHAPE, "train.log_every=1", f"train.max_steps={steps}", f"train.mixed_precision={precision}"]
    return train_chars_per_s(None, [*overrides, *extra])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per run (after 2 warm-up steps)")
    args = parser.parse_args()
    speeds: dict[str, list[float]] = {
        "seed (one-hot, fp32)": [],
        "charlstm fp32": [],
        "charlstm bf16": [],
        "charlstm bf16, locked dropout": [],
        "charlstm bf16, weight drop 0.1": [],
    }
    for round_ in range(args.rounds):
        speeds["seed (one-hot, fp32)"] += run_json(
            ["bench/seed_charrnn.py", "train", str(args.steps + WARMUP), str(corpus())]
        )["chars_per_s"][WARMUP:]
        speeds["charlstm fp32"] += ours(args.steps + WARMUP, "no")[WARMUP:]
        speeds["charlstm bf16"] += ours(args.steps + WARMUP, "bf16")[WARMUP:]
        locked = ours(args.steps + WARMUP, "bf16", "model.locked_dropout=true")
        speeds["charlstm bf16, locked dropout"] += locked[WARMUP:]
        dropped = ours(args.steps + WARMUP, "bf16", "model.weight_drop=0.1")
        speeds["charlstm bf16, weight drop 0.1"] += dropped[WARMUP:]
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{k} {median(v):,.0f}" for k, v in speeds.items()))
    report("Training chars/s, 2x512, batch 128 x 100", speeds, "seed (one-hot, fp32)")


if __name__ == "__main__":
    main()
