"""examples/slurm/train.sbatch on a real scheduler: Debian's slurm-wlm (munged, slurmctld, slurmd) started here as
a one-node cluster with a temporary SLURM_CONF. `sbatch --wait` of the example with 2 processes on the node trains
the weights, bitwise, that a 2-process torchrun run trains, and a second submission resumes from ckpt.pt (the
test polls the job as `sbatch --wait` does, only more often).
Where Slurm cannot start, the test fails in CI (CI is set) and skips elsewhere, saying why."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import EMPTY_CONFIG, ROOT, TINY, start_events

from trainer.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run slurmctld and slurmd (CI runs as root)"
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    return f"needs Debian's slurm-wlm and munge ({', '.join(missing)} not found)" if missing else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def config_text(folder: Path) -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 8 // 10
    host = socket.gethostname()
    return f"""ClusterName=charlstmtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node cluster: {SLURM_CONF: ...} for the clients; every daemon ended by its pid afterwards."""
    why = unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm cannot start here: {why}")
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (folder / "slurm.conf").write_text(config_text(folder))
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    munge = ["munged", "--foreground", "--force", f"--socket={folder}/munge.sock", f"--key-file={key}"]
    munge += [f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munge.seed", f"--log-file={folder}/munged.log"]
    daemons = [subprocess.Popen(munge, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for daemon in ("slurmctld", "slurmd"):
            log = open(folder / f"{daemon}.log", "w")
            daemons.append(subprocess.Popen([daemon, "-D", "-f", env["SLURM_CONF"]], env=env, stdout=log, stderr=log))
        deadline = time.monotonic() + 30
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout:
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                logs = "".join((folder / f"{d}.log").read_text()[-1000:] for d in ("slurmctld", "slurmd"))
                message = f"the one-node cluster did not come up:\n{logs}"
                pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
            time.sleep(0.2)
        yield env
    finally:
        end_jobs(env)  # a test that failed mid-job leaves its job running: its processes end before the daemons
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def end_jobs(env: dict) -> None:
    """Cancel every job of the test's cluster and wait (20 s at most) until slurmd has ended their processes."""
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()
    if not jobs:
        return
    subprocess.run(["scancel", *jobs], env=env, capture_output=True)
    deadline = time.monotonic() + 20
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)


def example_for_this_node(folder: Path) -> Path:
    """The example with its resources set for this test's one node of 2 CPUs and no GPU: only the resource lines
    change, as a user would edit them."""
    text = (ROOT / "examples/slurm/train.sbatch").read_text()
    text = re.sub(r"#SBATCH --nodes=\d+", "#SBATCH --nodes=1", text)
    text = re.sub(r"#SBATCH --cpus-per-task=\d+", f"#SBATCH --cpus-per-task={os.cpu_count()}", text)
    text = re.sub(r"#SBATCH --gpus-per-node=\d+\n", "", text)
    text = re.sub(r"#SBATCH --output=\S+", f"#SBATCH --output={folder}/slurm-%j.out", text)
    script = folder / "train.sbatch"
    script.write_text(text)
    return script


SETTINGS = [*TINY, "train.decay_steps=40", "train.save_every=10", "train.log_every=1"]


@pytest.fixture(scope="module")
def torchrun_reference(corpus_100k, tmp_path_factory) -> dict:
    """The 40-step run of 2 processes through ./launch.sh (torchrun), without Slurm: its ckpt.pt."""
    out = tmp_path_factory.mktemp("torchrun_run")
    args = [str(EMPTY_CONFIG), *SETTINGS, f"data.path={corpus_100k}", "train.max_steps=40", f"out_dir={out}"]
    launched = subprocess.run(
        ["./launch.sh", *args], cwd=ROOT, env={**os.environ, "NPROC": "2"}, capture_output=True, text=True, timeout=300
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    return load_checkpoint(out / "ckpt.pt")


def assert_same_weights(checkpoint: dict, reference: dict) -> None:
    assert checkpoint["step"] == reference["step"] == 40
    for key, value in reference["model"].items():
        assert torch.equal(value, checkpoint["model"][key]), key


def sbatch_args(corpus: Path, out: Path, steps: int) -> list[str]:
    return [str(EMPTY_CONFIG), *SETTINGS, f"data.path={corpus}", f"train.max_steps={steps}", f"out_dir={out}"]


def job_state(job: str, env: dict) -> tuple[str, str]:
    """(JobState, ExitCode) from scontrol, which keeps a finished job's record for MinJobAge (300 s)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", shown))
    return fields.get("JobState", "?"), fields.get("ExitCode", "?")


def submit_and_wait(script: Path, args: list[str], env: dict, timeout: float = 300) -> tuple[str, str]:
    """What `sbatch --wait` does, polled every 0.2 s (sbatch --wait backs off to half a minute between polls)."""
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while (state := job_state(job, env))[0] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "?"):
        assert time.monotonic() < deadline, f"job {job} did not end: {state}"
        time.sleep(0.2)
    return state


def test_the_sbatch_example_trains_what_torchrun_trains(slurm, torchrun_reference, corpus_100k, tmp_path):
    script = example_for_this_node(tmp_path)
    out = tmp_path / "slurm_run"
    # one submission: resuming in a job (after a requeue) is the next test's
    state = submit_and_wait(script, sbatch_args(corpus_100k, out, 40), {**slurm, "NPROC": "2"})
    log = "".join(path.read_text(errors="replace") for path in tmp_path.glob("slurm-*.out"))
    assert state == ("COMPLETED", "0:0"), log
    assert "torchrun (gloo), 2 processes on the CPU" in log and "SLURM_CPUS_ON_NODE" in log
    assert [event["resumed_from"] for event in start_events(out)] == [None]
    assert_same_weights(load_checkpoint(out / "ckpt.pt"), torchrun_reference)


def test_the_signal_before_the_time_limit_saves_requeues_and_resumes(slurm, torchrun_reference, corpus_100k, tmp_path):
    """What --signal=B:TERM@120 does before the time limit, sent at once: SIGTERM to the batch shell alone (as
    slurmstepd sends it; `scancel --batch` would signal its children too). The workers save, the script
    requeues the job, and it runs again and resumes to the end."""
    script = example_for_this_node(tmp_path)
    out = tmp_path / "slurm_run"
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script), *sbatch_args(corpus_100k, out, 40)],
        cwd=ROOT,
        env={**slurm, "NPROC": "2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while not any(event.get("step", 0) >= 5 and "train_loss" in event for event in events(out)):
        assert time.monotonic() < deadline, "the job did not start training"
        time.sleep(0.2)
    spool = Path(slurm["SLURM_CONF"]).parent / "spool"
    shell = subprocess.run(["pgrep", "-f", f"{spool}/job0*{job}/slurm_script"], capture_output=True, text=True)
    os.kill(int(shell.stdout.split()[0]), signal.SIGTERM)
    hurried = False
    while state := subprocess.run(
        ["squeue", "-h", "-o", "%t", "-j", job], env=slurm, capture_output=True, text=True
    ).stdout.strip():
        assert time.monotonic() < deadline + 180, "the requeued job did not finish"
        if state == "PD" and not hurried:  # Slurm holds a requeued job back a while: let it start now
            hurried = True
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, capture_output=True)
        time.sleep(0.3)
    log = "".join(path.read_text(errors="replace") for path in tmp_path.glob("slurm-*.out"))
    assert "requeueing job" in log and "stopped by SIGINT" in log, log
    starts = [event["resumed_from"] for event in start_events(out)]
    assert len(starts) == 2 and starts[0] is None and 5 <= starts[1] < 40, starts
    assert_same_weights(load_checkpoint(out / "ckpt.pt"), torchrun_reference)


def events(out: Path) -> list[dict]:
    import json

    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
