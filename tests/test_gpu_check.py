"""bench/gpu_check.sh --dry-run: every stage of the GPU check, on the CPU at tiny sizes, so the script that a lent
GPU machine runs in one call cannot rot unseen."""

import json
import os
import subprocess
import sys

from helpers import ROOT


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        [str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = figures["stages"]
    assert list(stages) == ["env", "tests", "speed", "recipe", "big", "export"]
    assert all(stage["status"] == "ok" for stage in stages.values()), stages
    assert stages["env"]["gpu"] is None and stages["env"]["torch"]
    assert stages["speed"]["charlstm fp32/TF32"] > 0 and stages["speed"]["seed fp32"] > 0
    assert stages["recipe"]["val_loss"] < 4.0 and stages["recipe"]["max_steps"] > 0
    assert any("greedy 500 chars: identical" in line for line in stages["export"]["report"])
    assert (tmp_path / "gpu_check.log").stat().st_size > 0


def test_gpu_check_needs_an_out_dir():
    result = subprocess.run([str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "OUT_DIR" in result.stdout


def test_a_failed_contender_fails_its_stage(tmp_path, monkeypatch):
    """The speed stage runs several contenders: one of them failing marks the stage failed, not ok with a figure
    missing (a GPU machine's one call must say what broke)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_check

    check = gpu_check.Check(tmp_path, dry_run=True)
    exits = iter([0, 1])  # the seed's method runs; the trainer fails

    def fake_run(args, timeout):
        code = next(exits, 0)
        stdout = '{"chars_per_s": [1.0, 2.0, 3.0]}' if code == 0 else ""
        return subprocess.CompletedProcess(args, code, stdout, "")

    monkeypatch.setattr(check, "run", fake_run)
    monkeypatch.setattr(check, "resolved", lambda corpus: corpus)
    check.stage("speed", lambda: check.speed("tests/data/english.txt"))
    stage = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]["speed"]
    assert stage["status"] == "failed" and stage["exit"] == 1 and stage["seed fp32"] > 0
