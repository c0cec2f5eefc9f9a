"""`python -m serve.inspect MODEL.onnx TEXT_FILE [--out report.html] [--json OUT.json] [--max-chars N]
[--feature NAME=REGEX ...]`: what the model learned about a text, as one self-contained HTML page.

Each character's surprise (bits) and the model's top 5 guesses for it, the cells that track features of the text
(quotes, brackets, position in the line, ..., or a regular expression of yours), ranked by Pearson's r, and
gate saturation per layer. docs/inspect.md explains the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from serve.inspect.features import FeatureError, parse_feature
from serve.inspect.report import render
from serve.inspect.run import DEFAULT_MAX_CHARS, inspect_text
from serve.options import add_unknown_option
from serve.pretrained import model_or_pretrained
from serve.sampler import SamplerError
from serve.score import read_text


def check_output(path: Path | None, option: str) -> None:
    if path is None:
        return
    if path.is_dir():
        raise SamplerError(f"{option} {path} is a folder")
    if not path.parent.is_dir():
        raise SamplerError(f"{option} {path}: the folder {path.parent} does not exist")


def summary(figures: dict, name: str) -> str:
    bpc, n, full = figures["bpc"], figures["chars"], figures["text_chars"]
    cut = f" (the first {n:,} of {full:,})" if full > n else ""
    lines = [f"{bpc:.6f} bpc ({bpc * math.log(2):.6f} nats/char) over {n:,} characters of {name}{cut}"]
    for feature, cells in figures["features"].items():
        best = cells[0]
        found = (
            "constant over the text"
            if best["r"] is None
            else (f"layer {best['layer']} unit {best['unit']} ({best['kind']}), r = {best['r']:+.3f}")
        )
        lines.append(f"  {feature:<24} {found}")
    saturation = figures["saturation"]
    if saturation["layers"] is None:
        lines.append(f"  gate saturation left out: {saturation['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve.inspect", description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="[MODEL] FILE",
        help="an .onnx exported by export.onnx (fp32 or --int8; default: the bundled shakespeare model), then a "
        "UTF-8 text file",
    )
    parser.add_argument("--out", default="report.html", help="the HTML report (default report.html)")
    parser.add_argument("--json", help="also write the figures as JSON here")
    parser.add_argument(
        "--max-chars",
        type=int,
        default=DEFAULT_MAX_CHARS,
        help=f"read at most this many characters from the start of the text (default {DEFAULT_MAX_CHARS:,})",
    )
    parser.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME=REGEX",
        help="a feature of your own: 1 where a match of REGEX covers the character (repeatable)",
    )
    add_unknown_option(parser)
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error(f"give [MODEL] FILE, got {len(args.paths)} paths")
    args.model, args.file = (None, *args.paths) if len(args.paths) == 1 else args.paths
    try:
        args.model = model_or_pretrained(args.model, "charlstm-inspect")
        if args.max_chars < 1:
            raise SamplerError(f"--max-chars must be >= 1, got {args.max_chars}")
        for spec in args.feature:
            parse_feature(spec)
        out, json_out = Path(args.out), Path(args.json) if args.json else None
        check_output(out, "--out")
        check_output(json_out, "--json")
        text = read_text(args.file)
        figures = inspect_text(args.model, text, args.feature, args.max_chars, args.unknown, what=args.file)
        out.write_text(render(figures, Path(args.model).name, Path(args.file).name), encoding="utf-8")
        if json_out is not None:
            json_out.write_text(json.dumps(figures, ensure_ascii=False), encoding="utf-8")
    except (SamplerError, FeatureError, OSError) as e:
        message = e.strerror + f": {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(summary(figures, args.file))
    print(f"wrote {out}" + (f" and {json_out}" if json_out else ""))
    return 0
