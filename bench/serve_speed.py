"""The HTTP service under load: aggregate characters per second and time to first character (p50, p99) at 1, 8
and 64 concurrent streaming clients with 16-character prompts, side by side in one run with
  (a) the same requests served one at a time by a batch-1 Sampler (what a server without batching does), and
  (b) the offline batched Sampler at the same batch (the ceiling: no HTTP, no scheduler, one prompt), and
  (c) a second service with other flags (--compare; by default --threads 2, one onnxruntime setting for
      every tick, where the default picks the threads and spinning by the tick's size).
The service is measured through three clients: a light asyncio one (its own cost small, so the figures are the
server's), httpx and the `openai` package (what they cost on the same cores). The model is a shape of
bench/sample_speed.py (--shape: 2x512, 2x256 or 2x128), fp32, top-k 5; with
--max-batch below the most clients, the rest wait in the queue. The servers' peak memory is reported too. Each
round runs every contender once, in a fresh process (the server is started once and idles between its turns);
medians over rounds.

    python bench/serve_speed.py [--rounds 3] [--clients 1 8 64] [--shape 2x512] [--max-batch N]
                                [--compare=--no-spin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from common import ROOT, corpus, machine, median, run_json, table
from sample_speed import SHAPES, make_models

CHARS = {1: 2000, 8: 800, 64: 300}  # characters per client: about a second of work at each concurrency


def prompts(count: int) -> list[str]:
    text = corpus().read_text(encoding="utf-8")
    return [text[1000 + 997 * i : 1016 + 997 * i] for i in range(count)]  # 16 characters each, from the corpus


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Connection:
    """A light asyncio client: one keep-alive HTTP/1.1 connection that posts a streamed completion and reads
    its server-sent events (chunked), with little work of its own, so that the server's cost is what the
    figures show (httpx's is measured beside it)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None

    async def stream(self, body: dict) -> AsyncIterator[str]:
        if self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        head = f"POST /v1/completions HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(head.encode() + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise SystemExit(f"the server answered {status!r}")
        while await self.reader.readline() != b"\r\n":
            pass  # the headers: a stream comes chunked
        pending = b""
        while size := int(await self.reader.readline(), 16):
            pending += (await self.reader.readexactly(size + 2))[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: {"):
                    yield json.loads(event[6:])["choices"][0]["text"]
        await self.reader.readexactly(2)

    def close(self) -> None:
        if self.reader is not None:
            self.writer.close()


async def two_waves(one, count: int, chars: int) -> tuple[list[tuple[float, int]], float]:
    """A first wave of 8-character requests opens the connections (as a client's pool keeps them) and warms
    the server up (as the offline contenders warm up); the second wave is measured: its results and seconds."""
    await asyncio.gather(*(one(i, 8) for i in range(count)))
    start = time.perf_counter()
    results = await asyncio.gather(*(one(i, chars) for i in range(count)))
    return results, time.perf_counter() - start


async def light_streams(url: str, texts: list[str], chars: int) -> tuple[list[tuple[float, int]], float]:
    host, port = url.removeprefix("http://").split(":")
    connections = [Connection(host, int(port)) for _ in texts]

    async def one(i: int, length: int) -> tuple[float, int]:
        body = {"prompt": texts[i], "max_tokens": length, "seed": i, "top_k": 5, "stream": True}
        sent, first, count = time.perf_counter(), None, 0
        async for text in connections[i].stream(body):
            if text and first is None:
                first = time.perf_counter() - sent
            count += len(text)
        return first, count

    try:
        return await two_waves(one, len(texts), chars)
    finally:
        for connection in connections:
            connection.close()


async def httpx_streams(url: str, texts: list[str], chars: int) -> tuple[list[tuple[float, int]], float]:
    import httpx

    async def one(http: httpx.AsyncClient, i: int, length: int) -> tuple[float, int]:
        body = {"prompt": texts[i], "max_tokens": length, "seed": i, "top_k": 5, "stream": True}
        sent, first, count = time.perf_counter(), None, 0
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    text = json.loads(line[6:])["choices"][0]["text"]
                    if text and first is None:
                        first = time.perf_counter() - sent
                    count += len(text)
        return first, count

    limits = httpx.Limits(max_connections=len(texts))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        return await two_waves(lambda i, length: one(http, i, length), len(texts), chars)


async def openai_streams(url: str, texts: list[str], chars: int) -> tuple[list[tuple[float, int]], float]:
    """The same through the `openai` package (on httpx, each chunk parsed into its pydantic models)."""
    from openai import AsyncOpenAI

    with urllib.request.urlopen(f"{url}/v1/models") as answer:
        model = json.load(answer)["data"][0]["id"]
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(i: int, length: int) -> tuple[float, int]:
        sent, first, count = time.perf_counter(), None, 0
        stream = await client.completions.create(
            model=model, prompt=texts[i], max_tokens=length, seed=i, stream=True, extra_body={"top_k": 5}
        )
        async for chunk in stream:
            text = chunk.choices[0].text if chunk.choices else ""
            if text and first is None:
                first = time.perf_counter() - sent
            count += len(text)
        return first, count

    async with client:
        return await two_waves(one, len(texts), chars)


STREAMS = {"light": light_streams, "httpx": httpx_streams, "openai": openai_streams}


def service_round(url: str, clients: int, chars: int, client: str = "light") -> dict:
    """`clients` streams at once, each on its own connection, through the light client, httpx or openai."""
    streams = STREAMS[client]
    results, seconds = asyncio.run(streams(url, prompts(clients), chars))
    firsts = [first for first, _ in results]
    assert all(count == chars for _, count in results), "a client got fewer characters than it asked for"
    return {"chars_per_s": clients * chars / seconds, "ttfc": firsts}


ONE_AT_A_TIME = """
import json, sys, time
from serve import Sampler
sampler = Sampler(sys.argv[1], device="cpu")
texts, chars = json.loads(sys.argv[2]), int(sys.argv[3])
sampler.generate(texts[0], 50, top_k=5, seed=0)
start, firsts = time.perf_counter(), []
for i, prompt in enumerate(texts):  # every request arrived at `start`; each waits for those before it
    for n, _ in enumerate(sampler.stream(prompt, chars, top_k=5, seed=i)):
        if n == 0:
            firsts.append(time.perf_counter() - start)
print(json.dumps({"chars_per_s": len(texts) * chars / (time.perf_counter() - start), "ttfc": firsts}))
"""

CEILING = """
import json, sys, time
from serve import Sampler
sampler = Sampler(sys.argv[1], device="cpu")
texts, chars = json.loads(sys.argv[2]), int(sys.argv[3])
sampler.generate(texts[0], 50, top_k=5, seed=0, num_samples=len(texts))
start = time.perf_counter()
sampler.generate(texts[0], chars, top_k=5, seed=0, num_samples=len(texts))
print(json.dumps({"chars_per_s": len(texts) * chars / (time.perf_counter() - start), "ttfc": [0.0]}))
"""


def offline(code: str, model: Path, clients: int, chars: int) -> dict:
    return run_json(["-c", code, str(model), json.dumps(prompts(clients)), str(chars)])


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model: Path, max_batch: int, *extra: str) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "serve.http", str(model), "--port", "0", "--max-batch", str(max_batch), *extra],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = server.stderr.readline()
    match = re.search(r"on (http://[\d.]+:\d+)", line)
    if not match:
        server.kill()
        raise SystemExit(f"the server did not start: {line}")
    return server, match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="2x512", help="the model's shape (2x512)")
    parser.add_argument("--max-batch", type=int, default=None, help="the server's (default: the most clients)")
    parser.add_argument("--compare", default="--threads 2", help="the second server's flags (--threads 2)")
    args = parser.parse_args()
    max_batch = args.max_batch or max(args.clients)
    figures: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        model, _ = make_models(Path(tmp), args.shape)
        server, url = start_server(model, max_batch)
        fixed, fixed_url = start_server(model, max_batch, *shlex.split(args.compare))
        compared = f"service, {args.compare}"
        try:
            for round_ in range(args.rounds):
                for clients in args.clients:
                    chars = CHARS.get(clients, 300)
                    contenders = {
                        "service": lambda c=clients, n=chars: service_round(url, c, n),
                        "service, httpx client": lambda c=clients, n=chars: service_round(url, c, n, "httpx"),
                        "service, openai client": lambda c=clients, n=chars: service_round(url, c, n, "openai"),
                        compared: lambda c=clients, n=chars: service_round(fixed_url, c, n),
                        "one at a time": lambda c=clients, n=chars: offline(ONE_AT_A_TIME, model, c, n),
                        "offline batched": lambda c=clients, n=chars: offline(CEILING, model, c, n),
                    }
                    for name, measure in contenders.items():
                        figures.setdefault((clients, name), []).append(measure())
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            peak_mb = [peak_rss_mb(process.pid) for process in (server, fixed)]
            for process in (server, fixed):
                process.terminate()
                process.wait(60)
    rows = []
    for clients in args.clients:
        ceiling = median([f["chars_per_s"] for f in figures[(clients, "offline batched")]])
        naive = median([f["chars_per_s"] for f in figures[(clients, "one at a time")]])
        shown = ("service", "service, httpx client", "service, openai client", compared, "one at a time")
        for name in (*shown, "offline batched"):
            runs = figures[(clients, name)]
            speed = median([f["chars_per_s"] for f in runs])
            p50 = median([statistics.median(f["ttfc"]) for f in runs])
            p99 = median([percentile(f["ttfc"], 0.99) for f in runs])
            ttfc = "-" if name == "offline batched" else f"{p50 * 1000:,.0f} / {p99 * 1000:,.0f}"
            rows.append((clients, name, f"{speed:,.0f}", f"{speed / ceiling:.2f}", f"{speed / naive:.2f}", ttfc))
    shown = f"{args.shape} fp32, top-k 5, --max-batch {max_batch}"
    print(f"\nThe service against the offline samplers, {shown}, on {machine()}")
    headers = ("clients", "contender", "chars/s", "vs ceiling", "vs one at a time", "first char p50 / p99 (ms)")
    print(table(rows, headers))
    print(f"the servers' peak resident memory: {peak_mb[0]:,.0f} MB (default), {peak_mb[1]:,.0f} MB ({args.compare})")
    print(json.dumps({f"{c} {n}": median([f["chars_per_s"] for f in v]) for (c, n), v in figures.items()}))


if __name__ == "__main__":
    main()
