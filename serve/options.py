"""Command-line options that serve's commands share, defined once."""

from __future__ import annotations

import argparse
import unicodedata

from serve.errors import SamplerError


def add_unknown_option(parser: argparse.ArgumentParser, what: str = "characters") -> None:
    """--unknown: what to do with `what` outside the model's vocabulary (error, the default, or skip them)."""
    parser.add_argument(
        "--unknown",
        choices=["error", "skip"],
        default="error",
        help=f"{what} outside the vocabulary: error (default) or skip them",
    )


def add_constraint_options(parser: argparse.ArgumentParser) -> None:
    """--regex, --choice, --end, --beam and --bias: the text in a form, beam search, biased characters."""
    group = parser.add_argument_group("constraints and search (docs/constrained.md)")
    group.add_argument("--regex", help="the generated text matches this regular expression in full")
    group.add_argument("--choice", action="append", dest="choices", help="the text is one of these (repeatable)")
    group.add_argument("--end", help="under a constraint, the character that ends a text (default: a newline)")
    group.add_argument("--beam", type=int, default=None, help="beam search with this many beams (1 = greedy)")
    group.add_argument(
        "--bias", action="append", default=[], metavar="C=V", help="add V (-100 to 100) to character C's logit"
    )


def character(text: str, what: str) -> str:
    """One character as a command line gives it: itself, U+XXXX, or the escapes \\n, \\t, \\r, \\\\."""
    escapes = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}
    if text in escapes:
        return escapes[text]
    if len(text) > 2 and text[:2] in ("U+", "u+") and all(d in "0123456789abcdefABCDEF" for d in text[2:]):
        if int(text[2:], 16) <= 0x10FFFF:
            return chr(int(text[2:], 16))
    if len(text) != 1:
        raise SamplerError(f"{what} must be one character (or U+XXXX, \\n, \\t), got {text!r}")
    return text


def bias_option(values: list[str], index: dict[str, int], form: str) -> dict[int, float]:
    """--bias C=V ... -> {token id: V}; SamplerError naming the flag for a bad one."""
    bias: dict[int, float] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep or not name:
            raise SamplerError(f"--bias takes CHARACTER=NUMBER, got {value!r}")
        ch = character(name, "--bias's character")
        ch = ch if form == "none" else unicodedata.normalize(form, ch)
        if ch not in index:
            raise SamplerError(f"--bias: {ch!r} (U+{ord(ch):04X}) is not in the model's vocabulary")
        try:
            bias[index[ch]] = float(number)
        except ValueError:
            raise SamplerError(f"--bias {value!r}: {number!r} is not a number") from None
    return bias
