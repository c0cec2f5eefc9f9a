"""N processes on CPU (torchrun + gloo through launch.sh): sharded streams compute what one process
computes; elastic resume; preemption; kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import EMPTY_CONFIG, ROOT, TINY, assert_resumed, one_line_error, run_train, start_events

from trainer.checkpoint import load_checkpoint

SCHEDULE = [
    "train.max_steps=20",
    "train.decay_steps=20",
    "train.eval_every=10",
    "train.save_every=10",
    "model.dropout=0.1",
    "model.weight_drop=0.1",  # its masks are keyed by step alone: every process drops the same weights
    "train.ema_decay=0.9",  # ckpt.pt holds the average as "model" and Adam's weights as "train_weights"
    "train.state_reset=0.2",  # drawn per (step, stream): the same streams reset whichever process owns them
    "train.input_noise=0.05",  # drawn per (step, stream) too
    "train.activation_reg=1",  # a mean over each process's streams: DDP's gradient mean makes it the global one
    "train.temporal_reg=1",
]


def launch_cmd(nproc: int, out, *overrides):
    cmd = [str(ROOT / "launch.sh"), str(EMPTY_CONFIG), *TINY, *overrides, f"out_dir={out}"]
    env = {**os.environ, "NPROC": str(nproc), "PYTHON": sys.executable}
    env.pop("OMP_NUM_THREADS", None)  # launch.sh's own choice of threads per process
    return cmd, env


def physical_cores() -> int:
    """The cores launch.sh shares out among the processes of a CPU run."""
    import psutil

    allowed = len(os.sched_getaffinity(0))
    return max(1, min(psutil.cpu_count(logical=False) or allowed, allowed))


def launch(nproc: int, out, *overrides) -> subprocess.CompletedProcess:
    cmd, env = launch_cmd(nproc, out, *overrides)
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result


def launch_ok(nproc, out, *overrides):
    result = launch(nproc, out, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(out / "ckpt.pt")


def assert_close_params(a, b, rel=1e-4):
    """Equal up to the rounding of gloo's all-reduce, which Adam's division by sqrt(v) amplifies where gradients
    are small: 3e-5 of the largest weight after these 20 steps, measured; a stream drawing another stream's
    input noise gave 0.2."""
    for weights in ("model", "train_weights"):
        for key, value in a[weights].items():
            scale = value.abs().max().clamp_min(1e-12)
            assert (value - b[weights][key]).abs().max() <= rel * scale, (weights, key)


def train_losses(out):
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [e["train_loss"] for e in events if "train_loss" in e], [e["val_loss"] for e in events if "val_loss" in e]


@pytest.fixture(scope="module")
def data(corpus_100k):
    return f"data.path={corpus_100k}"


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_process")
    launch_ok(1, out, data, *SCHEDULE)
    return out


@pytest.fixture(scope="module")
def two_processes(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    launch_ok(2, out, data, *SCHEDULE)
    return out


def test_two_processes_compute_what_one_computes(one_process, two_processes):
    one, two = load_checkpoint(one_process / "ckpt.pt"), load_checkpoint(two_processes / "ckpt.pt")
    assert one["step"] == two["step"] == 20
    assert_close_params(one, two)
    train_one, val_one = train_losses(one_process)
    train_two, val_two = train_losses(two_processes)
    assert train_two == pytest.approx(train_one, rel=1e-5)
    assert val_two == pytest.approx(val_one, rel=1e-6)  # sharded validation, reduced
    assert two["config"]["train"]["batch_size"] == 8 and two["streams"]["h"].shape[0] == 8  # all streams
    # the 2 processes share the cores (torchrun alone would give each 1 thread, however many cores there are)
    assert [e["threads"] for e in start_events(two_processes)] == [max(1, physical_cores() // 2)]


def test_export_reads_a_two_process_checkpoint(two_processes, tmp_path):
    from export.onnx import main as export_main

    assert export_main([str(two_processes / "ckpt.pt"), "-o", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)], ids=["two_to_one", "one_to_two"])
def test_elastic_resume(before, after, one_process, data, tmp_path):
    """A run saved on `before` processes resumes on `after` and ends where one uninterrupted process ends."""
    launch_ok(before, tmp_path, data, *SCHEDULE, "train.max_steps=10")
    resumed = launch_ok(after, tmp_path, data, *SCHEDULE)
    assert_resumed(tmp_path, 10)
    assert [e["processes"] for e in start_events(tmp_path)] == [before, after]
    assert_close_params(load_checkpoint(one_process / "ckpt.pt"), resumed)


def test_same_process_count_resume_is_bitwise(two_processes, data, tmp_path):
    launch_ok(2, tmp_path, data, *SCHEDULE, "train.max_steps=10")
    resumed = launch_ok(2, tmp_path, data, *SCHEDULE)
    assert_resumed(tmp_path, 10)
    straight = load_checkpoint(two_processes / "ckpt.pt")
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
    for key in ("h", "c"):
        assert torch.equal(straight["streams"][key], resumed["streams"][key])


def wait_for_step(out, step: int, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be interrupted"
        if metrics.exists():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]
            if steps and max(steps) >= step:
                return
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached")


LONG = [
    "train.max_steps=120",
    "train.decay_steps=120",
    "train.eval_every=50",
    "train.save_every=50",
    "train.log_every=1",
    "model.dropout=0.1",
]


@pytest.fixture(scope="module")
def two_processes_long(data, tmp_path_factory):
    """LONG on 2 processes, uninterrupted: what the interrupted runs must end with, bitwise."""
    out = tmp_path_factory.mktemp("two_processes_long")
    return launch_ok(2, out, data, *LONG)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_exits_zero_and_resumes(data, tmp_path, two_processes_long, stop):
    """SIGTERM, or SIGINT (Ctrl-C), to a 2-process run: the current step finishes, ckpt.pt is written, exit 0
    with one line; rerunning resumes there and ends with the same weights as an uninterrupted run."""
    cmd, env = launch_cmd(2, tmp_path, data, *LONG)
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path, 30, process)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"charlstm: stopped by {stop.name} after step") and "rerun to resume" in last
    stopped_at = load_checkpoint(tmp_path / "ckpt.pt")["step"]
    assert 30 <= stopped_at < 120
    resumed = launch_ok(2, tmp_path, data, *LONG)
    assert_resumed(tmp_path, stopped_at)
    for key in two_processes_long["model"]:
        assert torch.equal(two_processes_long["model"][key], resumed["model"][key]), key


def test_kill9_of_a_two_process_run(data, tmp_path, two_processes_long):
    """kill -9 of every process of a 2-process run that saves every step: ckpt.pt loads, and the rerun resumes
    from it and ends bitwise equal to the uninterrupted 2-process run."""
    cmd, env = launch_cmd(2, tmp_path, data, *LONG, "train.save_every=1")
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(tmp_path, 40, process)
    subprocess.run(["pkill", "-9", "-f", f"out_dir={tmp_path}"], check=False)  # launcher, torchrun, workers
    process.wait(timeout=60)
    killed_at = load_checkpoint(tmp_path / "ckpt.pt")["step"]
    assert killed_at >= 39
    resumed = launch_ok(2, tmp_path, data, *LONG, "train.save_every=1")
    assert_resumed(tmp_path, killed_at, killed=True)
    assert not list(tmp_path.glob(".*.tmp"))
    for key in two_processes_long["model"]:
        assert torch.equal(two_processes_long["model"][key], resumed["model"][key]), key


def test_grad_accum_on_two_processes(one_process, data, tmp_path):
    """Micro-batches under DDP (no_sync until the last): the same step as one process without them."""
    assert_close_params(
        load_checkpoint(one_process / "ckpt.pt"), launch_ok(2, tmp_path, data, *SCHEDULE, "train.grad_accum=2")
    )


def test_max_minutes_stops_both_processes_together(data, tmp_path):
    """The main process's clock decides, and both processes stop after the same step, evaluate and save."""
    result = launch(2, tmp_path, data, *LONG, "train.max_steps=100000", "train.max_minutes=0.03")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(stopped by train.max_minutes=0.03)" in result.stdout.strip().splitlines()[-1]
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert 1 <= ckpt["step"] < 100000 and ckpt["val_loss"] is not None


def test_max_steps_auto_on_two_processes(data, tmp_path):
    """The main process times the steps and fixes the total; both processes plan, revise and end together."""
    result = launch(2, tmp_path, data, "train.max_steps=auto", "train.max_minutes=0.2", "train.eval_every=100")
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    plans = [e for e in events if "seconds_per_step" in e]
    assert plans and plans[0]["revised"] is None
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == ckpt["max_steps"] == plans[-1]["max_steps"]


def test_non_finite_skip_is_agreed(data, tmp_path):
    """NaN in the carried state of the streams of process 1 only: process 0's loss is finite, yet both skip the
    step together (and zero their state), so 2 processes still end where 1 process ends."""
    assert run_train(data, *SCHEDULE, "train.max_steps=10", f"out_dir={tmp_path / 'base'}") == 0
    ckpt = load_checkpoint(tmp_path / "base" / "ckpt.pt")
    ckpt["streams"]["h"][4:] = float("nan")  # streams 4..7: those of process 1 of 2
    ends = {}
    for nproc in (1, 2):
        out = tmp_path / f"on{nproc}"
        out.mkdir()
        torch.save(ckpt, out / "ckpt.pt")
        if nproc == 1:  # in this process: a launch costs seconds of imports
            assert run_train(data, *SCHEDULE, f"out_dir={out}") == 0
            ends[nproc] = load_checkpoint(out / "ckpt.pt")
        else:
            ends[nproc] = launch_ok(nproc, out, data, *SCHEDULE)
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [e["step"] for e in events if "skipped" in e] == [10]
    assert ends[1]["step"] == ends[2]["step"] == 20
    assert_close_params(ends[1], ends[2])


def test_two_machines_on_loopback(one_process, data, tmp_path):
    """NNODES=2: two launch.sh processes (node ranks 0 and 1, one process each) on 127.0.0.1 compute what one
    process computes. Each "machine" gets one thread: two processes that each take every core of one machine
    wait on each other at every step (20 s to a minute instead of 8 s on 2 cores)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = []
    for rank in (0, 1):
        cmd, env = launch_cmd(1, tmp_path, data, *SCHEDULE)
        env |= {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env["OMP_NUM_THREADS"] = "1"  # the user's setting wins over launch.sh's (which would be every core)
        nodes.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr.decode()[-2000:]
    assert [(e["processes"], e["threads"]) for e in start_events(tmp_path)] == [(2, 1)]
    assert_close_params(load_checkpoint(one_process / "ckpt.pt"), load_checkpoint(tmp_path / "ckpt.pt"))


def test_kill9_never_leaves_an_unreadable_checkpoint(data, tmp_path):
    """kill -9 at several points of a run that saves every step (so some kills land inside a save): ckpt.pt
    always loads, and resuming after the last kill ends bitwise equal to an uninterrupted run."""
    args = ["-m", "trainer.train", "--config", str(EMPTY_CONFIG), *TINY, data, *LONG, "train.save_every=1"]
    killed_at = []
    for step in (20, 45, 70):
        process = subprocess.Popen(
            [sys.executable, *args, f"out_dir={tmp_path / 'killed'}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_step(tmp_path / "killed", step, process)
        process.kill()
        process.wait()
        killed_at.append(load_checkpoint(tmp_path / "killed" / "ckpt.pt")["step"])  # always readable
    # a kill inside the save of step k leaves step k-1: the file is always whole
    assert killed_at == sorted(killed_at) and killed_at[-1] >= 69
    # the resume and the uninterrupted run go in this process (the same arguments): a launch costs seconds
    assert run_train(data, *LONG, "train.save_every=1", f"out_dir={tmp_path / 'killed'}") == 0
    assert run_train(data, *LONG, "train.save_every=1", f"out_dir={tmp_path / 'straight'}") == 0
    # each launch after a kill began at the step its predecessor had saved last
    assert [e["resumed_from"] for e in start_events(tmp_path / "killed")] == [None, *killed_at]
    resumed = load_checkpoint(tmp_path / "killed" / "ckpt.pt")
    straight = load_checkpoint(tmp_path / "straight" / "ckpt.pt")
    assert resumed["step"] == straight["step"] == 120
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # leftovers of cut saves are cleaned up


def test_batch_must_divide_over_processes(data, tmp_path):
    result = launch(2, tmp_path / "run", data, "train.batch_size=7")
    assert result.returncode != 0
    assert "error: train.batch_size=7 does not divide over 2 processes" in result.stderr
    assert not (tmp_path / "run").exists()


def test_launch_help():
    result = subprocess.run([str(ROOT / "launch.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "NPROC" in result.stdout and "NNODES" in result.stdout


def test_launch_missing_config():
    result = subprocess.run([str(ROOT / "launch.sh"), "configs/nope.yaml"], capture_output=True, text=True)
    assert result.returncode == 2 and "not found" in one_line_error(result.stderr)
