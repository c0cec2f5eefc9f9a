"""The GPU check's machinery: child processes in their own process groups, stages under time budgets, the log and
the JSON. A lent GPU machine gives one call of a few minutes, so nothing here may hang or leave a process behind:
every child starts in a session of its own and its whole group is killed when its stage's budget (or the whole
check's deadline) runs out, and again after it exits, for any grandchild it left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL = 20_000  # characters of each child's stdout and stderr kept in the log: enough for a traceback


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group; a group that is already empty is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Runner:
    """Runs stages one after another, each under its budget in seconds, all under `total` seconds."""

    def __init__(self, out: Path, dry_run: bool, budgets: dict[str, float], total: float):
        self.out, self.dry_run, self.budgets = out, dry_run, budgets
        self.log_file = open(out / "gpu_check.log", "a", encoding="utf-8")  # noqa: SIM115 (open for the run)
        self.figures: dict = {"dry_run": dry_run, "budgets": budgets, "stages": {}}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if dry_run:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, whatever the machine has
        self.started = time.monotonic()
        self.deadline = self.started + total  # the whole check's end: no stage runs past it
        self.stage_deadline = self.deadline
        self.child: subprocess.Popen | None = None  # the running child, for the SIGTERM handler

    def log(self, text: str) -> None:
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def remaining(self) -> float:
        """Seconds left to the current stage (its budget, or the whole check's deadline if sooner)."""
        return min(self.stage_deadline, self.deadline) - time.monotonic()

    def run(self, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
        """python3 ARGS in the repository within the stage's time, its output in the log; a failure is logged,
        not raised. A child still running at the stage's end is killed with its group: exit 124."""
        timeout = self.remaining()
        self.log(f"$ python3 {' '.join(args)}  ({timeout:.0f} s left)")
        if timeout < 1:
            self.log("no time left in this stage: not started")
            return subprocess.CompletedProcess(args, 124, "", "")
        self.child = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: killpg ends it and everything it started
        )
        try:
            stdout, stderr = self.child.communicate(timeout=timeout)
            code = self.child.returncode
        except subprocess.TimeoutExpired:
            kill_group(self.child.pid)
            stdout, stderr = self.child.communicate(timeout=10)  # what it had written before the kill
            code = 124
            self.log(f"over its stage's budget after {timeout:.0f} s: killed with its process group")
        finally:
            kill_group(self.child.pid)  # a grandchild that outlived its parent
            self.child = None
        self.log_file.write(stdout[-LOG_TAIL:] + stderr[-LOG_TAIL:])
        if code not in (0, 124):
            self.log(f"exit {code}: {(stderr.strip().splitlines() or ['?'])[-1]}")
        return subprocess.CompletedProcess(args, code, stdout, stderr)

    def stage(self, name: str, function: Callable[[], dict]) -> None:
        """Run one stage under its budget; its figures (and why it failed) go into gpu_check.json at once, so a
        check cut short still says what it had. Failed: an exit code other than 0, "failed" among its figures,
        an exception, or more time than its budget."""
        budget = self.budgets[name]
        self.log(f"\n== {name} (budget {budget:g} s)")
        started = time.monotonic()
        self.stage_deadline = started + budget
        try:
            figures = function()
            status = "ok" if figures.get("exit", 0) == 0 and not figures.get("failed") else "failed"
        except Exception as e:  # one stage's failure must not cost the others their device time
            figures, status = {"error": f"{type(e).__name__}: {e}"}, "failed"
        seconds = time.monotonic() - started
        if seconds > budget + 1:  # 1 s of slack for the bookkeeping after the last child was killed
            figures["over_budget"], status = True, "failed"
        entry = {"status": status, "seconds": round(seconds, 1), "budget": budget, **figures}
        self.figures["stages"][name] = entry
        self.figures["total_seconds"] = round(time.monotonic() - self.started, 1)
        self.log(f"{name}: {status} {json.dumps(figures)[:4000]}")
        self.save()

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.figures, indent=2))

    def on_sigterm(self, signum: int, frame) -> None:
        """gpu_check.sh's outer timeout: end the running child's group too (it is in a session of its own, so the
        signal did not reach it), then stop."""
        if self.child is not None:
            kill_group(self.child.pid)
        self.log(f"stopped by signal {signum}")
        sys.exit(124)


def read_json(path: Path) -> dict:
    """A child's figures file, or {} when it wrote none (killed before its first figure)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def events(out: Path) -> list[dict]:
    """metrics.jsonl of a training run, or [] when it has none."""
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def median(values: list[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None
