"""The bundled model (serve/models/): its card tells the truth (the file's sha256, its loss, the shipped recipe as
it is now, a sample the programs give again), the programs take it when no model is named and say so; and
export.bundle writes a card whose commands train and export the same model again."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ENGLISH, ROOT, TINY, run_cli

from export.bundle import flatten
from serve.sampler import Sampler, SamplerError
from trainer.config import load_config

MODELS = ROOT / "serve" / "models"
BIN = Path(sys.executable).parent  # the console scripts of this environment


def commands(card: str) -> list[list[str]]:
    """The card's first code block: the commands that train and export the model again."""
    block = re.search(r"```\n(.*?)\n```", card, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines()]


def sample_of(card: str) -> str:
    return re.findall(r"```\n(.*?)\n```", card, re.S)[-1]


def run_config(config: dict) -> dict:
    """A run's config with its out_dir left out: what decides the model."""
    return {key: value for key, value in flatten(config).items() if key != "out_dir"}


def test_the_bundled_models_card_tells_the_truth():
    card = (MODELS / "shakespeare.md").read_text(encoding="utf-8")
    model = MODELS / "shakespeare.onnx"
    assert f"sha256 `{hashlib.sha256(model.read_bytes()).hexdigest()}`" in card
    assert model.stat().st_size < 4_000_000  # a few MB in the wheel
    sampler = Sampler.pretrained(device="cpu")
    assert f"validation loss: {float(sampler.metadata['val_loss']):.4f} nats" in card
    assert f"steps: {int(sampler.metadata['step']):,}" in card
    train, export = commands(card)
    # trained with the shipped recipe as it is now, no key changed: a new configs/shakespeare.yaml needs a new model
    assert train == ["charlstm-train", "--config", "shakespeare", "out_dir=runs/shakespeare"]
    assert export[0] == "charlstm-export"
    assert run_config(sampler.config) == run_config(load_config(train[2], train[3:]).model_dump())
    assert sample_of(card) == "ROMEO:" + sampler.generate("ROMEO:", 400, top_k=5, seed=0)


def test_the_programs_take_the_bundled_model_when_none_is_named(tmp_path):
    card = (MODELS / "shakespeare.md").read_text(encoding="utf-8")
    sampled = run_cli("-m", "serve.sample", "--prime", "ROMEO:", "--length", "400", "--top-k", "5", "--seed", "0")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout == sample_of(card) + "\n"
    first = sampled.stderr.splitlines()[0]
    assert first.startswith("charlstm-sample: no model named: the bundled shakespeare model") and "card" in first
    text = tmp_path / "verse.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n", encoding="utf-8")
    report = tmp_path / "report.html"
    inspected = run_cli("-m", "serve.inspect", str(text), "--out", str(report))
    assert inspected.returncode == 0, inspected.stderr
    assert "the bundled shakespeare model" in inspected.stderr.splitlines()[0] and report.is_file()
    too_many = run_cli("-m", "serve.inspect", "a.onnx", str(text), str(text))
    assert too_many.returncode == 2 and "give [MODEL] FILE, got 3 paths" in too_many.stderr


def test_a_missing_bundled_model_is_one_line(monkeypatch, tmp_path):
    import serve.pretrained

    monkeypatch.setattr(serve.pretrained, "MODELS", tmp_path)
    with pytest.raises(SamplerError, match=r"^no bundled model 'shakespeare' \(bundled: none"):
        Sampler.pretrained()


def test_the_bundle_cards_commands_train_and_export_the_same_model_again(tmp_path):
    """export.bundle on a short run of the `tiny` config: the card names that config and exactly the keys the run
    changed; its commands, run in another folder, give a model that samples the same text."""
    first = tmp_path / "first"
    overrides = [*TINY, f"data.path={ENGLISH}"]
    trained = run_cli("-m", "trainer.train", "--config", "tiny", *overrides, f"out_dir={first}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = tmp_path / "models"
    bundled = run_cli("-m", "export.bundle", str(first / "best.pt"), "--name", "t", "--out-dir", str(out))
    assert bundled.returncode == 0, bundled.stderr
    card = (out / "t.md").read_text(encoding="utf-8")
    train, export = commands(card)
    assert train[:3] == ["charlstm-train", "--config", "tiny"] and train[-1] == "out_dir=runs/t"
    changed = {arg.split("=")[0] for arg in train[3:-1]}
    tiny = flatten(load_config("tiny").model_dump())
    assert changed == {key for key, value in run_config(Sampler(out / "t.onnx").config).items() if tiny[key] != value}
    again = tmp_path / "again"
    again.mkdir()
    for command in (train, export):
        done = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=again, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    options = {"top_k": 5, "seed": 3}
    assert Sampler(again / "t.onnx").generate("The ", 300, **options) == Sampler(out / "t.onnx").generate(
        "The ", 300, **options
    )
    assert sample_of(card) == "ROMEO:" + Sampler(out / "t.onnx").generate("ROMEO:", 400, top_k=5, seed=0)
