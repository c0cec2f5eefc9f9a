"""The HTTP service's prefix cache: time to the first character of a 10,000-character prompt read whole (its
first request), the same prompt again, and a prompt sharing its first 9,000 characters, on one server; each
round takes another part of Tiny Shakespeare, so that its first request finds nothing kept. The model is the
2 x 512 shape of bench/sample_speed.py, fp32; medians over rounds.

    python bench/prefix_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx
from common import ROOT, corpus, machine, median, table
from sample_speed import make_models
from serve_speed import start_server

PROMPT, SHARED = 10_000, 9_000


def first_character(http: httpx.Client, prompt: str) -> float:
    """Seconds from the request to its first generated character (a stream of one character)."""
    started = time.perf_counter()
    body = {"prompt": prompt, "max_tokens": 1, "seed": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and any(c["text"] for c in json.loads(line[6:])["choices"]):
                return time.perf_counter() - started
    raise SystemExit(f"the server sent no character: {response.status_code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    text = corpus().read_text(encoding="utf-8")
    times: dict[str, list[float]] = {"read whole": [], "the same again": [], "sharing 9,000": []}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        model, _ = make_models(Path(tmp))
        server, url = start_server(model, 64)
        try:
            with httpx.Client(base_url=url, timeout=300) as http:
                for round_ in range(args.rounds):
                    start = round_ * 2 * PROMPT
                    prompt = text[start : start + PROMPT]
                    sharing = prompt[:SHARED] + text[start + PROMPT : start + PROMPT + PROMPT - SHARED]
                    for name, asked in zip(times, (prompt, prompt, sharing)):
                        times[name].append(first_character(http, asked))
                    print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            server.terminate()
            server.wait(60)
    whole = median(times["read whole"])
    rows = [(name, f"{median(v) * 1000:,.0f}", f"{median(v) / whole:.1%}") for name, v in times.items()]
    print(f"\nThe prefix cache, a {PROMPT:,}-character prompt, 2x512 fp32, on {machine()}")
    print(table(rows, ("request", "first character (ms)", "of the first request's")))
    print(json.dumps({name: median(v) for name, v in times.items()}))


if __name__ == "__main__":
    main()
