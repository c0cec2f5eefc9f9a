"""Shared fixtures: small corpora, and one tiny trained run + its export reused by many tests. The constants and
plain helpers they use are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import ENGLISH, SPANISH, TRAINED, TRAINED_BAR, run_train


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["CHARLSTM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(1)  # deterministic and fair on the 2-core CI machine


@pytest.fixture(scope="session")
def corpus_100k(tmp_path_factory) -> Path:
    """The English test text (120k characters), copied into a writable folder of its own."""
    path = tmp_path_factory.mktemp("corpus") / "english.txt"
    path.write_text(ENGLISH.read_text(encoding="utf-8"), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(corpus_100k, tmp_path_factory) -> Path:
    """A 40-step fp32 run on 100k characters: its out_dir (ckpt.pt, best.pt, metrics.jsonl, ...)."""
    out = tmp_path_factory.mktemp("tiny_run")
    assert run_train(f"data.path={corpus_100k}", f"out_dir={out}") == 0
    return out


@pytest.fixture(scope="session")
def trained_run(corpus_100k, tmp_path_factory) -> Path:
    """TRAINED on the English text: its out_dir. Its validation loss is under TRAINED_BAR, or every test using
    it fails here."""
    from trainer.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("trained_run")
    assert run_train(f"data.path={corpus_100k}", f"out_dir={out}", *TRAINED) == 0
    val_loss = load_checkpoint(out / "ckpt.pt")["val_loss"]
    assert val_loss < TRAINED_BAR, f"the fixture model reached only {val_loss:.3f} nats"
    return out


@pytest.fixture(scope="session")
def trained_onnx(trained_run) -> Path:
    from export.onnx import main

    assert main([str(trained_run / "ckpt.pt")]) == 0
    return trained_run / "ckpt.onnx"


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
