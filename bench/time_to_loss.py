"""Time to quality, side by side: the seed's method against the 10-minute recipe as shipped, on one machine.

1. The seed's method (bench/seed_charrnn.py: one-hot, 2 x 512, Adam 1e-3, batch 128 x 100, fp32) trains on the
   first 90% of Tiny Shakespeare for --seed-seconds (default 300), its validation loss on the last 10% measured
   every --seed-every seconds (evaluation time not counted).
2. configs/shakespeare.yaml (or --config) as a user runs it (train.max_steps=auto within its 10 minutes; auto
   precision).
3. The same recipe with train.max_steps fixed to where run 2 ended (the same schedule, but for the few hundred
   steps before run 2 fixed its total, where the two learning rates differ by under 1%), evaluated every 20
   steps (--early-every) for its first --early-seconds of training, to see when it first reaches the seed's
   final loss.
Both recipe runs stay in runs/time_to_loss/PRECISION/ (shipped/, early/), for export and the sample.
Seconds are seconds of training: evaluations and saves are not counted (metrics.jsonl's train_seconds).

Prints the seconds our recipe needs to reach the seed's final loss and the ratio; plots both curves into
docs/time_to_loss.png (or --plot PATH).

    python bench/time_to_loss.py [--config configs/shakespeare.yaml] [--seed-seconds 300] [--early-every 20]
                                 [--plot docs/time_to_loss.png] [key=value ...]
Trailing key=value overrides go to both recipe runs (e.g. train.mixed_precision=no).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from common import ROOT, corpus, machine, run_json


def seed_curve(seconds: float, every: float) -> list[tuple[float, float]]:
    code = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, 'bench')
from seed_charrnn import train_for
print(json.dumps(train_for({seconds}, {every}, Path({str(corpus())!r}))))
"""
    return [tuple(point) for point in run_json(["-c", code])]


def recipe(config: str, out: Path, overrides: list[str]) -> list[dict]:
    code = f"""
import json
from trainer.train import main
assert main(['--config', {config!r}, 'data.path={corpus()}', 'out_dir={out}', *{overrides!r}]) == 0
print('{{}}')
"""
    run_json(["-c", code])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def val_curve(events: list[dict]) -> list[tuple[float, float]]:
    return [(e["train_seconds"], e["val_loss"]) for e in events if "val_loss" in e and "train_seconds" in e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/shakespeare.yaml", help="the recipe to race the seed with")
    parser.add_argument("--seed-seconds", type=float, default=300)
    parser.add_argument("--seed-every", type=float, default=10)
    parser.add_argument("--early-seconds", type=float, default=60)
    parser.add_argument("--early-every", type=int, default=20, help="steps between the early run's evaluations")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "time_to_loss.png"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    seed = seed_curve(args.seed_seconds, args.seed_every)
    target = seed[-1][1]
    print(f"seed's method: {target:.4f} nats after {seed[-1][0]:.0f} s of training", flush=True)
    from trainer.dist.precision import choose_precision, device_type

    runs = ROOT / "runs" / "time_to_loss" / choose_precision("auto", device_type()).mode  # kept: export reads it
    shutil.rmtree(runs, ignore_errors=True)
    shipped = recipe(args.config, runs / "shipped", args.overrides)
    planned = [e["step"] for e in shipped if "val_loss" in e][-1]  # where it ended
    early = recipe(
        args.config,
        runs / "early",
        [*args.overrides, f"train.max_steps={planned}", f"train.eval_every={args.early_every}"]
        # the clock counts the evaluations too: about as long as the training again every 20 steps, more if denser
        + [
            "train.save_every=100000",
            f"train.max_minutes={args.early_seconds / 60 * (2 if args.early_every >= 20 else 3)}",
        ],
    )
    ours = sorted(val_curve(early) + val_curve(shipped))
    reached = next((seconds for seconds, loss in ours if loss <= target), math.inf)
    start = next(e for e in shipped if e.get("start"))
    print(f"\nTime to the seed's loss, on {machine()} (recipe precision: {start['precision']})")
    print(f"seed's method after {seed[-1][0]:.0f} s: {target:.4f} nats")
    print(f"the recipe reaches it after {reached:.1f} s of training: {seed[-1][0] / reached:.1f}x sooner")
    print(f"the recipe's final loss: {val_curve(shipped)[-1][1]:.4f} nats after {val_curve(shipped)[-1][0]:.0f} s")
    print(json.dumps({"seed": seed, "recipe": val_curve(shipped), "early": val_curve(early), "reached": reached}))
    plot(seed, ours, target, reached, start["precision"], Path(args.plot), args.config)


def plot(seed, ours, target, reached, precision, path: Path, config: str, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    seed, ours = [p for p in seed if p[0] > 0], [p for p in ours if p[0] > 0]  # a log axis has no 0 s
    ax.plot(*zip(*seed), "o-", ms=3, label="the seed's method (one-hot, 2 x 512, fp32)")
    ax.plot(*zip(*ours), "o-", ms=3, label=f"{config} ({'bf16' if precision == 'bf16' else 'fp32'})")
    ax.axhline(target, color="gray", lw=0.8, ls="--")
    if math.isfinite(reached):
        ax.axvline(reached, color="gray", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("seconds of training (log scale)")
    ax.set_ylabel("validation loss (nats / char)")
    ax.set_title(title or machine(), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
