"""Shared fixtures: small corpora, and one tiny trained run + its export reused by many tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SPANISH = Path(__file__).resolve().parent / "data" / "spanish.txt"

# Tiny and fast: tests check behaviour and numbers, not quality.
TINY = [
    "model.embed=16",
    "model.hidden=48",
    "model.layers=2",
    "model.dropout=0.1",
    "train.batch_size=8",
    "train.seq_len=32",
    "train.lr=0.005",
    "train.min_lr=0.0005",
    "train.warmup_steps=5",
    "train.max_steps=40",
    "train.eval_every=20",
    "train.save_every=20",
    "train.log_every=5",
    "train.mixed_precision=no",
]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["CHARLSTM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(1)  # deterministic and fair on the 2-core CI machine


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.fail(f"the test corpus {SHAKESPEARE} is missing (../shared/data beside the checkout)")
    return SHAKESPEARE


@pytest.fixture(scope="session")
def corpus_100k(shakespeare, tmp_path_factory) -> Path:
    """The first 100k characters of Tiny Shakespeare, in a writable folder."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare100k.txt"
    path.write_text(shakespeare.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    return path


def run_train(*overrides: str) -> int:
    from trainer.train import main

    return main(["--config", str(ROOT / "configs" / "tiny.yaml"), *TINY, *overrides])


@pytest.fixture(scope="session")
def tiny_run(corpus_100k, tmp_path_factory) -> Path:
    """A 40-step fp32 run on 100k characters: its out_dir (ckpt.pt, best.pt, metrics.jsonl, ...)."""
    out = tmp_path_factory.mktemp("tiny_run")
    assert run_train(f"data.path={corpus_100k}", f"out_dir={out}") == 0
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run) -> Path:
    from export.onnx import main

    assert main([str(tiny_run / "ckpt.pt")]) == 0
    return tiny_run / "ckpt.onnx"


@pytest.fixture(scope="session")
def spanish_onnx(tmp_path_factory) -> Path:
    """A tiny model trained on a Spanish text with ñ, ¿, ¡, accents and an emoji, exported."""
    from export.onnx import main as export_main

    out = tmp_path_factory.mktemp("spanish_run")
    assert (
        run_train(
            f"data.path={SPANISH}",
            f"out_dir={out}",
            "train.batch_size=4",
            "train.seq_len=16",
            "data.val_fraction=0.2",
            "train.max_steps=30",
        )
        == 0
    )
    assert export_main([str(out / "ckpt.pt")]) == 0
    return out / "ckpt.onnx"


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """A real process (python -m ...), for exit codes, stderr and signal handling."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line_error(stderr: str) -> str:
    """The CLI contract for bad input: exactly one line on stderr, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]
