"""`python -m trainer.launch` (what ./launch.sh runs): train with the right launcher for this machine and the
scheduler it runs under, or, with no arguments, the quickstart.

usage: ./launch.sh                          the quickstart: train configs/tiny.yaml, export, print a sample
       ./launch.sh key=value ...            the quickstart with overrides: out_dir=runs/mine, train.max_minutes=1
       ./launch.sh CONFIG [key=value ...]   train CONFIG (a file, or a shipped config's name: tiny,
                                            shakespeare, shakespeare_small, big) with dotted overrides
       ./launch.sh --dry-run CONFIG ...     print the command it would run, one line, and exit

How many processes, and where (a variable you set wins over what a scheduler sets):
  several GPUs        accelerate launch --multi_gpu, one process per GPU (precision: train.mixed_precision)
  one GPU or none     one process
  NPROC=N             N processes (on a CPU machine: torchrun with gloo; with GPUs: the first N)
  several machines    NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on each; node 0 runs the main process,
                      which alone reads and writes out_dir; the other nodes need only the corpus
  SLURM               from SLURM_JOB_NODELIST (the first host is the rendezvous), SLURM_NNODES, SLURM_NODEID,
                      SLURM_GPUS_ON_NODE, SLURM_CPUS_ON_NODE and SLURM_JOB_ID (the port): one launch per node
                      through srun (examples/slurm/train.sbatch)
  Kubeflow PyTorchJob from PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR / MASTER_ADDR and
                      PET_MASTER_PORT / MASTER_PORT (never the bare WORLD_SIZE and RANK, which count processes)
  Precedence: the project's own variables, then PET_*, then SLURM_*. Every launch prints one line saying
  what it chose and from which variables.
  MAX_RESTARTS=N      when a worker dies (OOM killer, a lost machine), restart the workers up to N times;
                      they resume from ckpt.pt (default 3 for a run of several processes). A user's error
                      or a training error (diverged, cannot save) is never restarted: one line, exit 2
  STOP_GRACE=S        seconds the workers get to save after SIGTERM / SIGINT before they are killed
                      (default 30: a process blocked in a collective never sees the signal)
Other variables: PYTHON (launch.sh: default .venv/bin/python if present, else python3); OMP_NUM_THREADS
(threads per process; on a CPU machine the default shares the cores out: 2 processes on 16 cores get 8 each);
TORCH_NCCL_ASYNC_ERROR_HANDLING (with GPUs the default is 2, so that a lost peer ends in one line: see
trainer/dist/peer_faults.py).

Before a run of several processes, each machine encodes the corpus into its id cache (python -m trainer.data),
so that no process waits for a long first encode inside a collective (train.collective_timeout bounds those).

SIGTERM or SIGINT (Ctrl-C) reach the training processes only: they finish the current step, write
ckpt.pt and exit 0. Run the same command again to resume, with any number of processes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from trainer.config.shipped import resolve_config
from trainer.errors import ConfigError
from trainer.launch.exit_status import DATA_NOTED, DONE_DIR, USER_ERROR_FILE
from trainer.launch.plan import LaunchError, Plan, plan
from trainer.launch.supervise import DEFAULT_STOP_GRACE, run_supervised


def count_gpus(python: str) -> int:
    """GPUs torch sees; torch is asked only where a GPU driver is present (importing it costs a CPU machine 2 s)."""
    if not (Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists() or shutil.which("nvidia-smi")):
        return 0
    result = subprocess.run(
        [python, "-c", "import torch; print(torch.cuda.device_count())"], capture_output=True, text=True
    )
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip().isdigit() else 0


def count_cores() -> int:
    """The physical cores this process may run on (hyperthreads add little to matrix work)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except ImportError:
        physical = allowed
    return max(1, min(physical, allowed))


def stop_grace() -> float:
    value = os.environ.get("STOP_GRACE", str(DEFAULT_STOP_GRACE))
    if not value.isdigit():
        raise LaunchError(f"STOP_GRACE must be a number of seconds, got {value!r}")
    return float(value)


def launch(args: list[str], dry_run: bool = False) -> int:
    """Train CONFIG [key=value ...] with the launcher this machine and its scheduler call for."""
    python = sys.executable
    try:
        grace = stop_grace()
        if args:  # a shipped config's name (tiny, shakespeare, big, ...) becomes its file here, once
            try:
                args = [str(resolve_config(args[0])), *args[1:]]
            except ConfigError as e:
                raise LaunchError(str(e)) from None
        if args and not Path(args[0]).is_file():
            raise LaunchError(f"config file {args[0]!r} not found")
        chosen = plan(os.environ, count_gpus(python), count_cores(), args, python)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        env = " ".join(f"{key}={shlex.quote(value)}" for key, value in chosen.env.items())
        print((env + " " if env else "") + shlex.join(chosen.command))
        return 0
    print(f"charlstm: launch: {chosen.choice}", flush=True)
    if chosen.pre_encode and subprocess.run(chosen.pre_encode, stdout=subprocess.DEVNULL).returncode != 0:
        return 2  # trainer.data has said what is wrong, in one line
    return run_with_restarts(chosen, grace)


def run_with_restarts(chosen: Plan, grace: float) -> int:
    """Run the plan; when a worker died (status 1 from trainer.launch.exit_status), start the workers again, up to
    MAX_RESTARTS times: they resume from ckpt.pt. A user's or a training error (2: a restart would meet it
    again), a stop (a signal) or success end it."""
    with tempfile.TemporaryDirectory(prefix="charlstm-launch-") as folder:
        done = Path(folder) / "done"
        env = {**chosen.env, USER_ERROR_FILE: str(Path(folder) / "user_error"), DONE_DIR: str(done)}
        if chosen.pre_encode:
            env[DATA_NOTED] = "1"  # what the corpus' encode left out is said once per machine: it said it
        for attempt in range(chosen.restarts + 1):
            shutil.rmtree(done, ignore_errors=True)
            done.mkdir()
            status, stopped = run_supervised(chosen.command, env, grace)
            if status != 1 or stopped or chosen.launcher == "python" or attempt == chosen.restarts:
                return status
            print(
                f"charlstm: restarting the workers ({attempt + 1} of MAX_RESTARTS={chosen.restarts}); they resume "
                "from ckpt.pt",
                file=sys.stderr,
                flush=True,
            )
    return status


def quickstart(dry_run: bool, overrides: list[str] | None = None) -> int:
    """Tiny Shakespeare (or, offline, the Python documentation): train configs/tiny.yaml, export, sample.
    `overrides` (key=value) go to the training after the quickstart's own, so they win. Offline, the run goes to
    runs/tiny_python_docs: a later quickstart with the network trains Tiny Shakespeare into runs/tiny instead of
    meeting a run on another text."""
    python, overrides = sys.executable, list(overrides or [])
    data, prime, out_dir = "tinyshakespeare", "ROMEO:", None
    own_text = any(o.startswith("data.path=") for o in overrides)
    fetch = [python, "-m", "trainer.data", data]
    if not (dry_run or own_text or subprocess.run(fetch, capture_output=True).returncode == 0):
        print(
            "charlstm: Tiny Shakespeare could not be downloaded (no network?); training on builtin:python-docs "
            "(the Python reference documentation, 465,000 characters) into runs/tiny_python_docs",
            file=sys.stderr,
        )
        data, prime, out_dir = "builtin:python-docs", "The ", "runs/tiny_python_docs"
    args = ["tiny", f"data.path={data}", *([f"out_dir={out_dir}"] if out_dir else []), *overrides]
    out_dir = next((o.split("=", 1)[1] for o in reversed(args) if o.startswith("out_dir=")), "runs/tiny")
    status = launch(args, dry_run)
    if status != 0 or dry_run:
        return status
    if subprocess.run([python, "-m", "export.onnx", f"{out_dir}/best.pt"]).returncode != 0:
        return 1
    print(f"--- a sample from {out_dir}/best.onnx:", flush=True)
    sample = ["-m", "serve.sample", f"{out_dir}/best.onnx", "--prime", prime, "--length", "600", "--top-k", "5"]
    status = subprocess.run([python, *sample, "--seed", "0"]).returncode
    print(
        f"--- more: {python} -m serve.sample {out_dir}/best.onnx --help; in a browser: {python} -m serve.web "
        f"{out_dir}/best.onnx --open"
    )
    return status


def is_override(arg: str) -> bool:
    """key=value with a dotted key (train.max_minutes=1, out_dir=runs/x): never a config's path or name."""
    return re.match(r"^[A-Za-z_][A-Za-z0-9_.]*=", arg) is not None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        try:
            print(__doc__.split("\n\n", 1)[1].rstrip())
        except BrokenPipeError:  # ./launch.sh --help | head
            pass
        return 0
    dry_run = args[:1] == ["--dry-run"]
    args = args[1:] if dry_run else args
    if all(is_override(arg) for arg in args):  # none at all: the quickstart as it is
        return quickstart(dry_run, args)
    return launch(args, dry_run)


def quickstart_main(argv: list[str] | None = None) -> int:
    """`charlstm-quickstart [--dry-run] [key=value ...]`: the quickstart alone (what ./launch.sh does with no
    arguments, or with overrides only), in the current folder (runs/tiny/)."""
    args = sys.argv[1:] if argv is None else argv
    dry_run = args[:1] == ["--dry-run"]
    args = args[1:] if dry_run else args
    if not all(is_override(arg) for arg in args):
        print(
            "usage: charlstm-quickstart [--dry-run] [key=value ...] (trains runs/tiny/ here, exports, samples)",
            file=sys.stderr,
        )
        return 2
    return quickstart(dry_run, args)
