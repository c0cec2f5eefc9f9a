"""`python -m serve.score MODEL.onnx FILE`: the model's loss on a text, in nats and bits per character.

The text is cut into B streams (B = the training batch size from the model's metadata, or --streams)
read in parallel with the state carried, exactly as the trainer evaluates its validation split, so on
that split the two numbers agree. With --max-chars N each stream is read for its first N // B characters
only, as the trainer's train.eval_chars bounds an evaluation: the same part, so the two agree on it too.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from serve.logprobs import log_normalizer
from serve.options import add_unknown_option
from serve.sampler import Sampler, SamplerError


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise SamplerError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SamplerError(f"{path}: not UTF-8 text (invalid byte at byte offset {e.start})") from None


def layout(length: int, batch: int, max_chars: int | None) -> tuple[int, int, int]:
    """(streams, stream length, characters read per stream) for `length` ids read as `batch` streams, each cut
    to max_chars // streams characters: the trainer's EvalStreams, step for step."""
    if batch < 1:
        raise SamplerError(f"streams must be >= 1, got {batch}")
    batch = min(batch, length - 1)
    stream_len = (length - 1) // batch
    if max_chars is not None and max_chars < batch:
        raise SamplerError(f"max_chars must be at least the number of streams ({batch}), got {max_chars}")
    return batch, stream_len, stream_len if max_chars is None else min(stream_len, max_chars // batch)


def streams_of(sampler: Sampler, streams: int | None) -> int:
    """The streams a text is read as: `streams`, else the model's training batch (as the trainer evaluates)."""
    return streams if streams is not None else int(sampler.config.get("train", {}).get("batch_size", 1))


def predicted(sampler: Sampler, text: str, streams: int | None, unknown: str, max_chars: int | None) -> int:
    """How many characters `score` predicts in `text`: the trainer's val_chars on the same split. Fewer than
    the text holds: each stream's first character has no prediction, and a remainder of (length - 1) % B is left."""
    batch, _, read_len = layout(len(sampler.encode(text, unknown)), streams_of(sampler, streams), max_chars)
    return batch * read_len


def score(
    sampler: Sampler,
    text: str,
    streams: int | None = None,
    unknown: str = "error",
    progress: bool = False,
    max_chars: int | None = None,
    what: str = "the text",
) -> float:
    """Mean loss in nats per predicted character of `text` under the model (of its first max_chars // B
    characters of each of the B streams, with max_chars). `what` names the text in errors (a file's path)."""
    ids = sampler.encode(text, unknown, what)
    if len(ids) < 2:
        raise SamplerError("the text needs at least 2 known characters to score")
    batch, stream_len, read_len = layout(len(ids), streams_of(sampler, streams), max_chars)
    starts = np.arange(batch) * stream_len
    run = sampler.runner(batch)
    rows = np.arange(batch)
    total = 0.0
    clock = time.monotonic()
    for t in range(read_len):
        logits = run(ids[starts + t])  # (B, V)
        total += float((log_normalizer(logits) - logits[rows, ids[starts + t + 1]]).sum())
        if progress and (time.monotonic() - clock > 0.5 or t == read_len - 1):
            clock = time.monotonic()
            print(f"\rscoring {t + 1}/{read_len} steps x {batch} streams", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return total / (batch * read_len)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve.score", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("model", help="an .onnx exported by export.onnx")
    parser.add_argument("file", help="a UTF-8 text file")
    parser.add_argument("--streams", type=int, default=None, help="parallel streams (default: the training batch)")
    parser.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="score at most this many characters: each stream's first N // streams (the trainer's train.eval_chars)",
    )
    add_unknown_option(parser)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    try:
        sampler = Sampler(args.model, device=args.device)
        text = read_text(args.file)
        loss = score(
            sampler, text, args.streams, args.unknown, progress=not args.quiet, max_chars=args.max_chars, what=args.file
        )
    except SamplerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chars = predicted(sampler, text, args.streams, args.unknown, args.max_chars)
    read = f"{chars:,} characters predicted of {len(text):,}"
    print(f"{loss:.6f} nats/char  {loss / math.log(2):.6f} bpc  ({read}, {args.file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
