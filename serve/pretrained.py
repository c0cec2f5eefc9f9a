"""The model that comes with charlstm, so that text comes a second after installing: trained with a shipped
recipe on Tiny Shakespeare and exported (NAME.onnx in serve/models/, its model card NAME.md beside it: how
to train it again, its loss, its sha256). The programs take it when no model is named, and say so."""

from __future__ import annotations

import sys
from pathlib import Path

from serve.errors import SamplerError

MODELS = Path(__file__).resolve().parent / "models"
DEFAULT = "shakespeare"


def bundled_models() -> list[str]:
    return sorted(path.stem for path in MODELS.glob("*.onnx"))


def pretrained_path(name: str = DEFAULT) -> Path:
    """The bundled model of that name; SamplerError when there is none."""
    path = MODELS / f"{name}.onnx"
    if not path.is_file():
        have = ", ".join(bundled_models()) or "none: this copy of charlstm was installed without them"
        raise SamplerError(f"no bundled model {name!r} (bundled: {have})")
    return path


def model_or_pretrained(model: str | None, program: str) -> str:
    """The model a program was given, or the bundled one, said on the program's first line (stderr: the
    program's output stays the text alone)."""
    if model is not None:
        return model
    path = pretrained_path()
    print(
        f"{program}: no model named: the bundled {DEFAULT} model ({path}; its card: {path.with_suffix('.md')})",
        file=sys.stderr,
        flush=True,
    )
    return str(path)
