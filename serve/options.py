"""Command-line options that serve's commands share, defined once."""

from __future__ import annotations

import argparse


def add_unknown_option(parser: argparse.ArgumentParser, what: str = "characters") -> None:
    """--unknown: what to do with `what` outside the model's vocabulary (error, the default, or skip them)."""
    parser.add_argument(
        "--unknown",
        choices=["error", "skip"],
        default="error",
        help=f"{what} outside the vocabulary: error (default) or skip them",
    )
