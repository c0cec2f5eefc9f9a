"""The benchmarks on a machine without their text (no network for the Tiny Shakespeare download, or a
CHARLSTM_BENCH_CORPUS that names nothing): one line that names the variable, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.parametrize(
    "program",
    ["serve_speed.py", "sample_speed.py", "train_speed.py", "prompt_speed.py", "tick_speed.py", "reader_speed.py"],
)
def test_a_benchmark_without_its_text_says_how_to_give_it_one(program, tmp_path):
    env = {**os.environ, "CHARLSTM_BENCH_CORPUS": str(tmp_path / "missing.txt")}
    result = subprocess.run(
        [sys.executable, program], cwd=ROOT / "bench", env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "missing.txt" in line and "CHARLSTM_BENCH_CORPUS" in line
