"""A long prompt while the service streams: time to the first character of a 10,000-character prompt on an
idle server and while 63 other clients stream (each round another part of Tiny Shakespeare, so that nothing
is kept from an earlier round), and the 63 streams' characters per second before the prompt came and while it
was read. The model is a shape of bench/sample_speed.py (--shape, 2x256 by default), fp32, top-k 5; the
clients are serve_speed.py's light asyncio client; medians over rounds.

    python bench/prompt_speed.py [--rounds 3] [--shape 2x256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from common import ROOT, corpus, machine, median, table
from sample_speed import SHAPES, make_models
from serve_speed import Connection, prompts, start_server

PROMPT, STREAMS, BEFORE = 10_000, 63, 2.0  # characters, streaming clients, seconds of streaming measured first


async def first_character(host: str, port: int, prompt: str) -> float:
    connection = Connection(host, port)
    started = time.perf_counter()
    try:
        async for text in connection.stream({"prompt": prompt, "max_tokens": 1, "seed": 0, "stream": True}):
            if text:
                return time.perf_counter() - started
    finally:
        connection.close()
    raise SystemExit("the server sent no character")


async def busy_round(host: str, port: int, prompt: str) -> dict:
    """63 streams; their rate over BEFORE seconds, then the long prompt's first character and their rate
    while it was read."""
    received, texts = [0], prompts(STREAMS)

    async def stream(i: int, connection: Connection) -> None:
        body = {"prompt": texts[i], "max_tokens": 200_000, "seed": i, "top_k": 5, "stream": True}
        async for text in connection.stream(body):
            received[0] += len(text)

    connections = [Connection(host, port) for _ in range(STREAMS)]
    tasks = [asyncio.ensure_future(stream(i, c)) for i, c in enumerate(connections)]
    try:
        await asyncio.sleep(1.0)  # every stream under way
        counted, start = received[0], time.perf_counter()
        await asyncio.sleep(BEFORE)
        before = (received[0] - counted) / (time.perf_counter() - start)
        counted, start = received[0], time.perf_counter()
        seconds = await first_character(host, port, prompt)
        during = (received[0] - counted) / (time.perf_counter() - start)
    finally:
        for task in tasks:
            task.cancel()
        for connection in connections:
            connection.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"first": seconds, "before": before, "during": during}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="2x256", help="the model's shape (2x256)")
    args = parser.parse_args()
    text = corpus().read_text(encoding="utf-8")
    idle, busy = [], []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        model, _ = make_models(Path(tmp), args.shape)
        server, url = start_server(model, 64, "--max-tokens", "200000")
        host, port = url.removeprefix("http://").split(":")
        try:
            asyncio.run(first_character(host, int(port), text[:300]))  # warm up
            for round_ in range(args.rounds):
                start = 20_000 + round_ * 2 * PROMPT
                idle.append(asyncio.run(first_character(host, int(port), text[start : start + PROMPT])))
                later = text[start + PROMPT : start + 2 * PROMPT]
                busy.append(asyncio.run(busy_round(host, int(port), later)))
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            server.terminate()
            server.wait(60)
    first_idle, first_busy = median(idle), median([b["first"] for b in busy])
    before, during = median([b["before"] for b in busy]), median([b["during"] for b in busy])
    rows = [
        ("first character, idle server", f"{first_idle * 1000:,.0f} ms", "1.00"),
        (f"first character, {STREAMS} streaming", f"{first_busy * 1000:,.0f} ms", f"{first_busy / first_idle:.2f}"),
        (f"the {STREAMS} streams, before", f"{before:,.0f} chars/s", "1.00"),
        (f"the {STREAMS} streams, while it is read", f"{during:,.0f} chars/s", f"{during / before:.2f}"),
    ]
    print(f"\nA {PROMPT:,}-character prompt beside {STREAMS} streams, {args.shape} fp32, on {machine()}")
    print(table(rows, ("", "figure", "ratio")))
    print(json.dumps({"idle": first_idle, "busy": first_busy, "before": before, "during": during}))


if __name__ == "__main__":
    main()
