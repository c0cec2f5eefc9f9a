"""bench/gpu_check.sh --dry-run: every stage of the GPU check, on the CPU at tiny sizes, so the script that a lent
GPU machine runs in one call cannot rot unseen; and the check's own machinery: its budgets fit the 7 minutes, a
stage over its budget is killed with every process it started, a missing pytest fails it."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402 (bench/ is not a package: its scripts import each other by name)
import gpu_sweep  # noqa: E402

SEVEN_MINUTES = 420
MARGIN = 30  # seconds the stages must leave for Python's start and the kills


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert time.monotonic() - started < SEVEN_MINUTES
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = figures["stages"]
    assert list(stages) == ["env", "tests", "export", "sweep", "smoke", "recipe"]
    assert all(stage["status"] == "ok" and stage["seconds"] <= stage["budget"] for stage in stages.values()), stages
    env_stage = stages["env"]
    assert (
        env_stage["gpu"] is None
        and env_stage["missing"] == []
        and set(env_stage["packages"]) == set(gpu_check.PACKAGES)
    )
    assert "tf32_cudnn" in env_stage and "nccl" in env_stage
    assert stages["export"]["identical"] and any("greedy 500 chars: identical" in x for x in stages["export"]["report"])
    cells = stages["sweep"]["cells"]
    assert len(cells) == len(gpu_sweep.cells(dry_run=True)) and all(c["chars_per_s"] > 0 for c in cells)
    assert {(c["shape"], c["batch"]) for c in cells} == {(s, b) for s in gpu_sweep.DRY_SHAPES for b in [2, 4]}
    assert all(c["busy"] is None and c["peak_mib"] is None for c in cells)  # the CPU has no kernels to time
    trainer_step = stages["sweep"]["trainer_step"]  # the trainer's own step beside the bare one
    assert trainer_step["trainer"]["chars_per_s"] > 0 and trainer_step["bare"]["chars_per_s"] > 0
    assert trainer_step["trainer_vs_bare"] > 0
    smoke = stages["smoke"]
    assert all(smoke[run]["ok"] for run in smoke_runs())
    assert smoke["resume"]["bitwise"] is True and smoke["resume"]["resumed_from"] == [None, 10]
    assert stages["recipe"]["val_loss"] < 4.0 and stages["recipe"]["max_steps"] > 0
    assert (tmp_path / "gpu_check.log").stat().st_size > 0


def smoke_runs() -> list[str]:
    import gpu_smoke

    return list(gpu_smoke.RUNS)


def test_gpu_check_needs_an_out_dir():
    result = subprocess.run([str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "OUT_DIR" in result.stdout


def test_the_budgets_fit_in_seven_minutes():
    assert sum(gpu_check.STAGES.values()) <= gpu_check.TOTAL_S <= SEVEN_MINUTES - MARGIN + 10
    assert sum(gpu_check.STAGES.values()) <= SEVEN_MINUTES - MARGIN
    script = (ROOT / "bench" / "gpu_check.sh").read_text()
    timeout = re.search(r"exec timeout (?:--kill-after=(\d+) )?(\d+) ", script)
    assert timeout, "gpu_check.sh must run the check under `timeout`"
    kill_after, seconds = int(timeout.group(1) or 0), int(timeout.group(2))
    assert seconds + kill_after <= SEVEN_MINUTES + 5 and seconds == gpu_check.SHELL_TIMEOUT_S <= SEVEN_MINUTES


def alive(pid: int) -> bool:
    """pid is a running process (a zombie waiting for its parent counts as gone)."""
    psutil = pytest.importorskip("psutil")
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_stage_over_budget_is_killed_with_its_children(tmp_path):
    """A stage whose child starts two `sleep`s and waits: at its 2-s budget the whole process group is gone, the
    stage is failed with what the child had printed, and the next stage still runs."""
    check = gpu_check.Check(tmp_path, dry_run=True, budgets={"slow": 2, "next": 10}, total=60)
    spawn = (
        "import subprocess, sys, time\n"
        "kids = [subprocess.Popen(['sleep', '300']) for _ in range(2)]\n"
        "print(*[k.pid for k in kids], flush=True)\n"
        "time.sleep(300)\n"
    )
    seen: dict = {}

    def slow() -> dict:
        result = check.run(["-c", spawn])
        seen["pids"] = [int(pid) for pid in result.stdout.split()]
        return {"exit": result.returncode}

    started = time.monotonic()
    check.stage("slow", slow)
    check.stage("next", lambda: {"exit": check.run(["-c", "print('ran')"]).returncode})
    assert time.monotonic() - started < 15
    stages = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert stages["slow"]["status"] == "failed" and stages["slow"]["exit"] == 124
    assert stages["next"]["status"] == "ok"
    assert len(seen["pids"]) == 2
    deadline = time.monotonic() + 5  # init reaps the orphaned sleeps: give it a moment
    while any(alive(pid) for pid in seen["pids"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in seen["pids"])


def test_a_missing_pytest_fails_env_and_tests(tmp_path, monkeypatch):
    """The image is said to hold pytest: without it the env stage fails and names it, and the tests stage fails
    rather than skipping (a GPU machine's one call must not pass with its CUDA tests unrun)."""
    monkeypatch.setitem(gpu_check.PACKAGES, "pytest", "no_such_module_for_the_gpu_check")
    check = gpu_check.Check(tmp_path, dry_run=True, budgets=dict(gpu_check.STAGES), total=120)
    check.stage("env", check.environment)
    check.stage("tests", check.tests)
    stages = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert stages["env"]["status"] == "failed" and stages["env"]["missing"] == ["pytest"]
    assert stages["tests"]["status"] == "failed" and "pytest" in stages["tests"]["error"]


def test_a_failed_cell_fails_the_sweep(tmp_path, monkeypatch):
    """A sweep cell that errors is recorded and the sweep goes on; the stage is failed with every other cell's
    figures kept (a GPU machine's one call must say what broke). bf16 weights that cuDNN refuses are only
    "unsupported"; out of memory is "oom"."""

    def measure(shape, batch, precision, device, dry_run):
        if precision == "tf32":
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED\nmore")
        if precision == "bf16":
            raise RuntimeError("_cudnn_rnn: bf16 is not supported")
        raise gpu_sweep.torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(gpu_sweep, "measure", measure)
    shape, cpu = gpu_sweep.DRY_SHAPES["2x16_T8"], gpu_sweep.torch.device("cpu")
    cells = [gpu_sweep.run_cell("2x16_T8", shape, 2, p, cpu, dry_run=True) for p in ["tf32", "bf16", "fp16"]]
    assert [c["status"] for c in cells] == ["error", "unsupported", "oom"]
    assert cells[0]["why"] == "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"

    check = gpu_check.Check(tmp_path, dry_run=True, budgets=dict(gpu_check.STAGES), total=60)
    ok_cell = {"shape": "2x16_T8", "batch": 4, "precision": "fp32", "status": "ok", "chars_per_s": 9.0}

    def fake_run(args, env=None):
        (tmp_path / "sweep.json").write_text(json.dumps({"device": "cpu", "cells": [cells[0], ok_cell]}))
        return subprocess.CompletedProcess(args, 1, "", "")

    monkeypatch.setattr(check, "run", fake_run)
    check.stage("sweep", check.sweep)
    stage = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]["sweep"]
    assert stage["status"] == "failed" and stage["exit"] == 1 and stage["cells_ok"] == 1
    assert stage["cells"][1]["chars_per_s"] == 9.0


def test_overlapping_kernels_count_once():
    assert gpu_sweep.union_us([(0, 10), (5, 12), (20, 25)]) == 17
    assert gpu_sweep.union_us([]) == 0
