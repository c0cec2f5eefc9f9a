"""`python -m serve.http MODEL.onnx [--host 127.0.0.1] [--port 8000] ...`: OpenAI's completions API over one
batched step loop. SIGTERM drains: new requests get 503, running ones get --drain-seconds to finish (then end
with finish_reason "length"), and the server exits 0."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

from serve.errors import ServerStartError
from serve.http.batch import SPIN_ROW_MACS, macs_per_row
from serve.http.prefix_cache import PrefixCache
from serve.pretrained import model_or_pretrained
from serve.sampler import Sampler, SamplerError, load_model

API_KEY_ENV = "CHARLSTM_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve.http", description="Serve a charlstm .onnx over OpenAI's completions API."
    )
    parser.add_argument(
        "model", nargs="?", help="an .onnx exported by export.onnx (default: the bundled shakespeare model)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--max-batch", type=int, default=64, help="sequences stepped together per tick (default 64)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests waiting for room before 429 (default 256)")
    parser.add_argument(
        "--max-tokens", type=int, default=4096, help="the largest max_tokens a request may ask (default 4096)"
    )
    parser.add_argument(
        "--max-prompt", type=int, default=16384, help="the longest prompt, in characters (default 16384)"
    )
    parser.add_argument(
        "--max-body", type=int, default=1 << 20, help="the largest request body in bytes (default 1 MiB; 413 above)"
    )
    parser.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer KEY` (or set {API_KEY_ENV})")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="never let onnxruntime's threads spin (by default, on the CPU without --threads, they spin for "
        "models of 2 x 256 and wider, whose step outweighs the event loop's work)",
    )
    parser.add_argument("--drain-seconds", type=float, default=30.0, help="after SIGTERM, time to finish (default 30)")
    parser.add_argument(
        "--stream-interval", type=float, default=0.02, help="seconds between a stream's events, at least (0.02)"
    )
    parser.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=64.0,
        help="megabytes of states kept after prompt prefixes, so a prompt that repeats or shares a long beginning "
        "starts there (64; 0: off)",
    )
    parser.add_argument(
        "--max-events",
        type=float,
        default=1000.0,
        help="stream events per second over all clients (1000): many streams each send less often",
    )
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> None:
    for name in ("max_batch", "max_tokens", "max_prompt", "max_body"):
        if getattr(args, name) < 1:
            raise ServerStartError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_queue < 0:
        raise ServerStartError(f"--max-queue must be >= 0, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise ServerStartError(f"--port must be between 0 and 65535, got {args.port}")
    if not args.drain_seconds >= 0 or not args.stream_interval >= 0:
        raise ServerStartError("--drain-seconds and --stream-interval must be >= 0")
    if not args.prefix_cache_mb >= 0:
        raise ServerStartError(f"--prefix-cache-mb must be >= 0, got {args.prefix_cache_mb}")
    if not args.max_events > 0:
        raise ServerStartError(f"--max-events must be > 0, got {args.max_events}")
    if args.api_key == "":
        raise ServerStartError("--api-key is empty")


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # the protocol named, not 0: asyncio turns Nagle's algorithm off only on sockets that say they are TCP,
        # and with it on, a stream's event waits for the ACK of the one before (40 ms of delayed ACK)
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ServerStartError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn

        from serve.http.app import Limits, Service, build_app
        from serve.http.metrics import Metrics
        from serve.http.scheduler import Scheduler
        from serve.http.server import DrainingServer
    except ImportError as e:
        print(
            f"error: the HTTP service needs its extra ({e.name} is missing): pip install 'charlstm[server]' "
            "(in a clone: ./setup.sh installs it)",
            file=sys.stderr,
        )
        return 2
    try:
        check(args)
        args.model = model_or_pretrained(args.model, "charlstm-serve")
        api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
        # the sampler's own session never spins: idle spinning threads would starve the event loop
        sampler = Sampler(args.model, device=args.device, threads=args.threads, spin=False)
        # small ticks on one thread, wide models on spinning threads, unless the user chose the threads
        # (serve/http/batch.py says why)
        one_thread = spinning = None
        if args.threads is None and sampler.device == "cpu":
            one_thread = load_model(args.model, device="cpu", threads=1, spin=False)[0]
            if not args.no_spin and macs_per_row(sampler.layers, sampler.hidden, len(sampler.vocab)) >= SPIN_ROW_MACS:
                spinning = load_model(args.model, device="cpu", spin=True)[0]
        sock = bind(args.host, args.port)
    except (SamplerError, ServerStartError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = Metrics(args.max_batch)
    cache = PrefixCache(int(args.prefix_cache_mb * 2**20)) if args.prefix_cache_mb > 0 else None
    scheduler = Scheduler(sampler, args.max_batch, args.max_queue, metrics, one_thread, cache, spinning)
    limits = Limits(args.max_tokens, args.max_prompt, args.max_body, args.stream_interval, args.max_events, api_key)
    service = Service(sampler, Path(args.model), scheduler, metrics, limits)
    config = uvicorn.Config(build_app(service), log_level="warning", access_log=False, lifespan="off")
    server = DrainingServer(config, scheduler, args.drain_seconds, service.beams)
    host, port = sock.getsockname()[:2]
    print(
        f"serving {service.model_id} on http://{host}:{port} ({sampler.device}, "
        f"batch invariant: {str(service.model_card['batch_invariant']).lower()}, max batch {args.max_batch})",
        file=sys.stderr,
        flush=True,
    )
    scheduler.start()
    service.beams.start()
    asyncio.run(server.serve(sockets=[sock]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
