"""setup.sh's choices, without installing anything: a copy of it beside a fake .venv/bin/python and a fake npm
that record what they were asked to do."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from helpers import ROOT

FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "$(dirname "$0")/calls.log"
"""


def setup_sh(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    shutil.copy(ROOT / "setup.sh", tmp_path / "setup.sh")
    (tmp_path / "serve" / "js").mkdir(parents=True, exist_ok=True)
    fakes = tmp_path / ".venv" / "bin"
    fakes.mkdir(parents=True, exist_ok=True)
    for name in ("python", "npm"):
        (fakes / name).write_text(FAKE)
        (fakes / name).chmod(0o755)
    (fakes / "calls.log").unlink(missing_ok=True)
    mine = {key: value for key, value in os.environ.items() if not key.startswith("TORCH_")}
    env = {**mine, "PATH": f"{fakes}:{os.environ['PATH']}", **(env or {})}
    done = subprocess.run(["bash", "setup.sh", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    calls = (fakes / "calls.log").read_text().splitlines() if (fakes / "calls.log").exists() else []
    return done, calls


def torch_install(calls: list[str]) -> str:
    return next(call for call in calls if "install torch==" in call)


def test_setup_installs_a_pinned_torch_then_the_runtime_the_data_readers_and_the_service(tmp_path):
    done, calls = setup_sh(tmp_path)
    assert done.returncode == 0, done.stderr
    assert torch_install(calls).endswith("install torch==2.13.0")  # PyPI, pinned: no index of its own
    assert any(call.endswith("install -e .[cpu,data,server]") for call in calls), calls
    assert "npm ci --no-audit --no-fund --loglevel=error" in calls
    assert done.stdout.strip() == "setup.sh: ready (.venv, onnxruntime for cpu)"


def test_torch_index_url_takes_pytorchs_own_wheels_and_gpu_takes_onnxruntime_gpu(tmp_path):
    cpu_index = "https://download.pytorch.org/whl/cpu"
    done, calls = setup_sh(tmp_path, "--gpu", env={"TORCH_INDEX_URL": cpu_index, "TORCH_VERSION": "2.12.1"})
    assert done.returncode == 0, done.stderr
    assert torch_install(calls).endswith(f"install torch==2.12.1 --index-url {cpu_index}")
    assert any(call.endswith("install -e .[gpu,data,server]") for call in calls), calls


def test_an_unknown_option_is_one_line(tmp_path):
    done, calls = setup_sh(tmp_path, "--cuda")
    assert done.returncode == 2 and done.stderr == "error: unknown option --cuda (see ./setup.sh --help)\n"
    assert calls == []
    helped, _ = setup_sh(tmp_path, "--help")
    assert helped.returncode == 0 and "TORCH_INDEX_URL" in helped.stdout
