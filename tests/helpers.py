"""What the tests share apart from fixtures (those are in conftest.py): the paths, the tiny configs, and the
helpers that run the commands and read what they wrote. Test modules import from here, never from conftest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
ENGLISH = DATA / "english.txt"  # 120k characters of English prose and code (tests/data/README.md)
SPANISH = DATA / "spanish.txt"

# Tiny and fast: tests check behaviour and numbers, not quality. Every setting a test relies on is here or in
# the test itself: no test inherits a shipped config (configs/*.yaml change with the recipes).
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
    "train.max_minutes=null",
    "train.ema_decay=0",
    "train.state_reset=0.01",
    "train.activation_reg=0",
    "train.temporal_reg=0",
    "train.input_noise=0",
    "model.weight_drop=0",
    "model.locked_dropout=false",
    "data.val_fraction=0.1",
    "train.sample_chars=200",  # on in every test run: it must change nothing in training
]
EMPTY_CONFIG = DATA / "empty.yaml"  # for launchers that want a config file: the defaults, then TINY


# A model that has learned something, for the parity tests: on a model that predicts little (a few distinct
# characters), parity and greedy equality say little. Deterministic, about 10 s on 2 cores.
TRAINED = [
    "model.embed=32",
    "model.hidden=128",
    "model.dropout=0",
    "train.batch_size=16",
    "train.seq_len=64",
    "train.lr=0.006",
    "train.min_lr=0.0006",
    "train.warmup_steps=10",
    "train.max_steps=400",
    "train.eval_every=200",
    "train.save_every=200",
]
TRAINED_BAR = 2.3  # nats on the English text's validation split; a unigram model scores 3.24 there


def run_train(*overrides: str) -> int:
    from trainer.train import main

    return main(["--config", str(EMPTY_CONFIG), *TINY, *overrides])


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


def start_events(out_dir: Path) -> list[dict]:
    """The `start` events of every launch on out_dir, in order: where each began (resumed_from)."""
    events = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("start")]


def assert_resumed(out_dir: Path, *from_steps: int, killed: bool = False) -> None:
    """out_dir was trained from scratch, then resumed from exactly these steps, and each resumed launch trained
    on from its step (a seeded restart from step 0 reproduces an uninterrupted run bitwise, so equal weights
    alone prove nothing about resuming). Unless a launch was killed (kill -9 may cut it between logging a
    step and saving it, so that step is rightly trained again), no step was trained twice."""
    events = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    starts = [i for i, e in enumerate(events) if e.get("start")]
    assert [events[i]["resumed_from"] for i in starts] == [None, *from_steps]
    for begin, end, step in zip(starts[1:], [*starts[2:], len(events)], from_steps):
        trained = [e["step"] for e in events[begin:end] if "train_loss" in e]
        assert trained and trained[0] > step and trained == sorted(set(trained)), f"the launch resumed at {step}"
    if not killed:
        trained = [e["step"] for e in events if "train_loss" in e]
        assert trained == sorted(set(trained)), "a step was trained twice"


def run_cli_background(*args: str) -> subprocess.Popen:
    """A real process left running (python -m ...): for tests that act on a run while it trains."""
    # no pipes: a long run's progress bar would fill one and block the run
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Quiet:
    """A notifier for a scheduler driven without HTTP."""

    loop = None

    def wake(self) -> None:
        pass

    def mark(self) -> None:
        return None

    def end(self) -> None:
        pass
