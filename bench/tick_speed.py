"""The service's ticks without HTTP: the scheduler stepping B rows of 16-character prompts and top-k 5 picks, as
`python -m serve.http` sets it up (spinning threads for models of 2 x 256 and wider; otherwise a one-thread
session for small ticks, and no spinning), against the offline
batched Sampler at the same B (which spins its threads) and the same Sampler without spinning, side by side in
one process. What the service loses beyond these is HTTP's: the event loop, the sockets and the clients.

    python bench/tick_speed.py [--rounds 3] [--batches 1 8 64] [--shape 2x256] [--chars 400]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, median, table
from sample_speed import SHAPES, make_models


class Quiet:
    """No handler waits: the ticks alone."""

    loop = None

    def wake(self) -> None:
        pass

    def mark(self) -> None:
        return None

    def end(self) -> None:
        pass


def ticks(sampler, one_thread, spinning, rows: int, chars: int) -> float:
    """Characters per second of the scheduler's ticks for `rows` requests of `chars` characters."""
    from serve.http.completion import Completion
    from serve.http.metrics import Metrics
    from serve.http.protocol import parse_completion
    from serve.http.scheduler import Scheduler

    scheduler = Scheduler(sampler, rows, rows, Metrics(rows), one_thread, None, spinning)
    ids = sampler.start_ids(sampler.encode("ROMEO: and what ", "skip"))
    completions = []
    for seed in range(rows):
        raw = json.dumps({"prompt": "ROMEO: and what ", "max_tokens": chars, "seed": seed, "top_k": 5}).encode()
        request = parse_completion(raw, len(sampler.vocab), chars, rows)
        completions.append(Completion(request, ids, "ROMEO: and what ", seed, Quiet()))
    scheduler._join(completions, [])
    start = time.perf_counter()
    while scheduler.rows:
        scheduler._tick()
        scheduler._leave(cancelled_only=False)
    return rows * chars / (time.perf_counter() - start)


def offline(sampler, rows: int, chars: int) -> float:
    start = time.perf_counter()
    sampler.generate("ROMEO: and what ", chars, top_k=5, seed=0, num_samples=rows)
    return rows * chars / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="2x256")
    parser.add_argument("--chars", type=int, default=400)
    args = parser.parse_args()
    from serve.sampler import Sampler
    from serve.session import load_model

    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        model, _ = make_models(Path(tmp), args.shape)
        served = Sampler(model, device="cpu", spin=False)
        one_thread = load_model(model, device="cpu", threads=1, spin=False)[0]
        spinning_session = load_model(model, device="cpu", spin=True)[0]
        spinning = Sampler(model, device="cpu")
        contenders = {
            "service's ticks": lambda b: ticks(served, one_thread, spinning_session, b, args.chars),
            "offline batched": lambda b: offline(spinning, b, args.chars),
            "offline batched, not spinning": lambda b: offline(served, b, args.chars),
        }
        figures: dict[tuple[int, str], list[float]] = {}
        for measure in contenders.values():
            measure(args.batches[0])  # warm up
        for _ in range(args.rounds):
            for rows in args.batches:
                for name, measure in contenders.items():
                    figures.setdefault((rows, name), []).append(measure(rows))
    table_rows = []
    for rows in args.batches:
        ceiling = median(figures[(rows, "offline batched")])
        for name in contenders:
            speed = median(figures[(rows, name)])
            table_rows.append((rows, name, f"{speed:,.0f}", f"{speed / ceiling:.2f}"))
    print(f"\nThe service's ticks without HTTP, {args.shape} fp32, top-k 5, on {machine()}")
    print(table(table_rows, ("rows", "contender", "chars/s", "vs offline batched")))


if __name__ == "__main__":
    main()
