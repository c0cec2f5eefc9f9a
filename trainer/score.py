"""`python -m trainer.score CKPT FILE`: a checkpoint's loss on a text, static and with --dynamic after dynamic
evaluation (the model learning from the text as it reads it), in nats and bits per character.

The text is read as one stream from the zero state; the static figure equals `serve.score --streams 1` on the
exported model. The checkpoint file is never changed: --save writes the adapted weights as a new checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import torch

from serve.options import add_unknown_option
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.dynamic import DEFAULTS, DynamicOptions, Scored, score_dynamic, score_static
from trainer.errors import UserError
from trainer.gradient_stats import gradient_rms_for

MAX_SEGMENT = 10_000


def encode_text(text: str, vocab: list[str], form: str, unknown: str, what: str) -> torch.Tensor:
    """Text -> ids (T,) int64 in the checkpoint's Unicode form; characters outside the vocabulary are named
    (`error`) or dropped (`skip`)."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    index = {ch: i for i, ch in enumerate(vocab)}
    missing = sorted({ch for ch in text if ch not in index})
    if missing and unknown == "error":
        shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise UserError(f"{what} has characters the model does not know: {shown}{more} (--unknown skip drops them)")
    ids = torch.tensor([index[ch] for ch in text if ch in index], dtype=torch.int64)
    if len(ids) < 2:
        raise UserError(f"{what} needs at least 2 characters the model knows to be scored, it has {len(ids)}")
    return ids


def read_file(path: Path) -> str:
    """The file's UTF-8 text, read as serve.score reads it; a missing or undecodable file is a UserError."""
    from serve.errors import SamplerError
    from serve.score import read_text

    try:
        return read_text(path)
    except SamplerError as e:
        raise UserError(str(e)) from None


def check_options(args: argparse.Namespace) -> DynamicOptions:
    if not 1 <= args.segment <= MAX_SEGMENT:
        raise UserError(f"--segment must be between 1 and {MAX_SEGMENT:,} characters, got {args.segment}")
    if args.lr is not None and not (math.isfinite(args.lr) and 0 <= args.lr <= 1):
        raise UserError(f"--lr must be a number from 0 to 1, got {args.lr}")
    if args.decay is not None and not (math.isfinite(args.decay) and 0 <= args.decay < 1):
        raise UserError(f"--decay must be a number from 0 up to (not including) 1, got {args.decay}")
    if args.max_chars is not None and args.max_chars < 1:
        raise UserError(f"--max-chars must be at least 1, got {args.max_chars}")
    if args.save is not None and not args.dynamic:
        raise UserError("--save keeps the weights dynamic evaluation adapted: add --dynamic")
    if args.save is not None and Path(args.save).resolve() == Path(args.checkpoint).resolve():
        raise UserError(f"--save {args.save} is the checkpoint itself, which is never changed: name another file")
    return DynamicOptions(args.rule, args.segment, args.lr, args.decay)


def figures(scored: Scored) -> dict:
    return {"nats": scored.mean, "bpc": scored.mean / math.log(2), "chars": scored.chars}


def adapted_checkpoint(ckpt: dict, model: torch.nn.Module, source: Path, text: Path) -> dict:
    """A checkpoint of the adapted weights: exportable and scorable, not a point to resume training from."""
    keep = ("format", "vocab", "config", "step", "normalize", "corpus_sha256")
    adapted = {key: ckpt[key] for key in keep if key in ckpt}
    weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return adapted | {"model": weights, "val_loss": None, "adapted": {"from": str(source), "text": str(text)}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer.score", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("checkpoint", help="a ckpt.pt or best.pt written by trainer.train")
    parser.add_argument("file", help="a UTF-8 text file")
    parser.add_argument("--dynamic", action="store_true", help="also score it with dynamic evaluation")
    parser.add_argument("--rule", choices=["rms", "sgd"], default="rms", help="the update rule (default: rms)")
    parser.add_argument("--segment", type=int, default=5, help="characters read between updates (default: 5)")
    lr, decay = DEFAULTS["rms"]["lr"], DEFAULTS["rms"]["decay"]
    parser.add_argument("--lr", type=float, default=None, help=f"step size (rms: {lr:g} x segment / 5)")
    parser.add_argument(
        "--decay", type=float, default=None, help=f"pull back to the weights (rms: {decay:g} x segment / 5)"
    )
    parser.add_argument(
        "--stats-text",
        default=None,
        help="a text for the rms rule's gradient statistics (default: the checkpoint's own training split)",
    )
    parser.add_argument("--max-chars", type=int, default=None, help="score the first N characters predicted only")
    add_unknown_option(parser)
    parser.add_argument("--save", default=None, help="write the adapted weights to this new checkpoint")
    parser.add_argument("--json", action="store_true", help='print {"static": {...}, "dynamic": {...}}')
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def run(args: argparse.Namespace) -> dict:
    from export.onnx import model_from_checkpoint

    options = check_options(args)
    path, text_path = Path(args.checkpoint), Path(args.file)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    ids = encode_text(read_file(text_path), ckpt["vocab"], ckpt.get("normalize", "NFC"), args.unknown, str(text_path))
    if args.max_chars is not None:
        ids = ids[: args.max_chars + 1]  # N characters predicted, as serve.score --max-chars N
    result = {"static": figures(score_static(model, ids, progress_line("static", len(ids) - 1, args.quiet)))}
    if args.dynamic:
        stats_text = Path(args.stats_text) if args.stats_text else None
        rms = gradient_rms_for(model, ckpt, path, options.segment, stats_text) if options.rule == "rms" else None
        scored = score_dynamic(model, ids, options, rms, progress_line("dynamic", len(ids) - 1, args.quiet))
        lr, decay = options.resolved()
        used = {"rule": options.rule, "segment": options.segment, "lr": lr, "decay": decay}
        result["dynamic"] = figures(scored) | used
        if args.save:
            save_checkpoint(args.save, adapted_checkpoint(ckpt, model, path, text_path))
    return result


def progress_line(what: str, total: int, quiet: bool) -> Callable[[int], None] | None:
    """A progress callback that rewrites one stderr line at most twice a second, or None when quiet."""
    if quiet:
        return None
    clock = [0.0]

    def show(done: int) -> None:
        if time.monotonic() - clock[0] > 0.5 or done == total:
            clock[0] = time.monotonic()
            end = "\n" if done == total else ""
            print(f"\r{what}: {done:,}/{total:,} characters", end=end, file=sys.stderr, flush=True)

    return show


def report(result: dict, file: str) -> str:
    static = result["static"]
    counted = f"{static['chars']:,} characters predicted, {file}"
    lines = [f"static   {static['nats']:.6f} nats/char  {static['bpc']:.6f} bpc  ({counted})"]
    if "dynamic" in result:
        d = result["dynamic"]
        change = 100 * (d["bpc"] / static["bpc"] - 1)
        lines.append(
            f"dynamic  {d['nats']:.6f} nats/char  {d['bpc']:.6f} bpc  ({change:+.1f}%; {d['rule']}, "
            f"segment {d['segment']}, lr {d['lr']:g}, decay {d['decay']:g})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else report(result, args.file))
    if args.save:
        print(f"adapted weights: {args.save}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
