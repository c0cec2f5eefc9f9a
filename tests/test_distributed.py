"""N processes on CPU (torchrun + gloo through launch.sh): sharded streams compute what one process
computes; elastic resume; preemption; kill -9."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import EMPTY_CONFIG, ROOT, TINY, assert_resumed, one_line_error, run_train, start_events

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
    "train.eval_chars=4000",  # of a 12,000-character split: each of the 8 streams' first 500, sharded 4 + 4
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
    for weights in ("model", "train_weights"):  # train_weights: with train.ema_decay
        assert (weights in a) == (weights in b), weights
        for key, value in a.get(weights, {}).items():
            scale = value.abs().max().clamp_min(1e-12)
            assert (value - b[weights][key]).abs().max() <= rel * scale, (weights, key)


def events_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_losses(out):
    events = events_of(out)
    return [e["train_loss"] for e in events if "train_loss" in e], [e["val_loss"] for e in events if "val_loss" in e]


def val_losses(out) -> dict[int, tuple[float, int]]:
    """{step: (validation loss, characters scored)} of the evaluations in out_dir's metrics.jsonl."""
    return {e["step"]: (e["val_loss"], e["val_chars"]) for e in events_of(out) if "val_loss" in e}


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
    # train.eval_chars: exactly 4,000 of the split's 12,000 characters at each evaluation, on 1 and 2 processes
    assert {chars for _, chars in val_losses(one_process).values()} == {4000}
    assert {chars for _, chars in val_losses(two_processes).values()} == {4000}
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
    # the bounded part is the same after the resume: the evaluations agree with the uninterrupted run's
    for step, (loss, chars) in val_losses(tmp_path).items():
        assert chars == 4000 and loss == pytest.approx(val_losses(one_process)[step][0], rel=1e-5), step


def wait_for_step(out, step: int, process, timeout: float = 120, since: int = 0) -> None:
    """Until metrics.jsonl logs `step` (in its events after the first `since`)."""
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be interrupted"
        if metrics.exists():
            lines = metrics.read_text().splitlines()[since:]
            steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
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
    with one line; rerunning resumes there and ends with the same weights as an uninterrupted run (after
    SIGTERM: the checkpoint either signal writes is the same save)."""
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
    if stop == signal.SIGINT:
        return
    resumed = launch_ok(2, tmp_path, data, *LONG)
    assert_resumed(tmp_path, stopped_at)
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
    result = launch(2, tmp_path, data, "train.max_steps=auto", "train.max_minutes=0.1", "train.eval_every=100")
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    plans = [e for e in events if "seconds_per_step" in e]
    assert plans and plans[0]["revised"] is None
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["max_steps"] == plans[-1]["max_steps"]
    # Two processes on two busy cores: the last steps may slow down after the last revision, and then the clock,
    # which both processes also obey together, ends the run; the schedule ends it otherwise.
    if "(stopped by train.max_minutes=0.1)" in result.stdout.strip().splitlines()[-1]:
        assert plans[-1]["step"] <= ckpt["step"] < ckpt["max_steps"]
    else:
        assert ckpt["step"] == ckpt["max_steps"]


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


@pytest.fixture(scope="module")
def shards(corpus_100k, tmp_path_factory) -> list[str]:
    """The English text as a folder of shards as people keep them (JSON Lines .gz, Parquet, CSV .zst), whose
    rows joined with data.separator="" are the text itself: the data.path overrides that read it."""
    import csv
    import gzip
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    text = corpus_100k.read_text(encoding="utf-8")
    rows = [text[i : i + 1000] for i in range(0, len(text), 1000)]
    third = len(rows) // 3
    folder = tmp_path_factory.mktemp("shards")
    jsonl = "".join(json.dumps({"id": i, "text": row}) + "\n" for i, row in enumerate(rows[:third]))
    (folder / "part-0.jsonl.gz").write_bytes(gzip.compress(jsonl.encode()))
    pq.write_table(pa.table({"text": rows[third : 2 * third]}), folder / "part-1.parquet", row_group_size=16)
    table = io.StringIO(newline="")
    csv.writer(table).writerows([["text"], *[[row] for row in rows[2 * third :]]])
    (folder / "part-2.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(table.getvalue().encode()))
    return [f"data.path={folder}", "data.separator="]


@pytest.mark.skipif(
    "two_hosts_unavailable() is None", reason="test_two_hosts_with_their_own_disks_stop_resume_and_finish covers it"
)
def test_two_machines_on_loopback(one_process, shards, tmp_path):
    """NNODES=2: two launch.sh processes (node ranks 0 and 1, one process each) on 127.0.0.1, reading the text
    as shards, compute what one process computes from the plain text. Each "machine" gets one thread: two
    processes that each take every core of one machine wait on each other at every step (20 s to a minute
    instead of 8 s on 2 cores)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = []
    for rank in (0, 1):
        cmd, env = launch_cmd(1, tmp_path, *shards, *SCHEDULE)
        env |= {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env["OMP_NUM_THREADS"] = "1"  # the user's setting wins over launch.sh's (which would be every core)
        nodes.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr.decode()[-2000:]
    assert [(e["processes"], e["threads"]) for e in start_events(tmp_path)] == [(2, 1)]
    one, two = load_checkpoint(one_process / "ckpt.pt"), load_checkpoint(tmp_path / "ckpt.pt")
    assert two["corpus_sha256"] == one["corpus_sha256"]  # the shards hold the plain text, to the byte
    assert_close_params(one, two)


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
    """launch.sh checks the config against the process count before it starts a worker: one line, exit 2."""
    result = launch(2, tmp_path / "run", data, "train.batch_size=7")
    assert result.returncode == 2
    assert one_line_error(result.stderr) == "error: train.batch_size=7 does not divide over 2 processes"
    assert not (tmp_path / "run").exists()


def test_launch_help():
    result = subprocess.run([str(ROOT / "launch.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "NPROC" in result.stdout and "NNODES" in result.stdout


def test_launch_missing_config():
    result = subprocess.run([str(ROOT / "launch.sh"), "configs/nope.yaml"], capture_output=True, text=True)
    assert result.returncode == 2 and "not found" in one_line_error(result.stderr)


# ---------------------------------------------------------------- machines as they really are: faults


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the training processes started under a launch.sh."""
    import psutil

    found = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            env, cmdline = child.environ(), " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "LOCAL_RANK" in env and "trainer.train" in cmdline:
            found[int(env["RANK"])] = child.pid
    return found


def end_tree(launcher: subprocess.Popen, *pids: int) -> None:
    """SIGKILL a launch.sh, every process under it and `pids` (workers seen earlier: torchrun starts each in a
    session of its own, so one may outlive its launcher), by pid. SIGKILL also ends a stopped process."""
    import psutil

    tree = []
    for pid in (launcher.pid, *pids):
        try:
            tree += [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for process in tree:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    launcher.wait(timeout=30)


def start_launch(tmp_path, name: str, cmd, env) -> tuple[subprocess.Popen, object]:
    """A launch.sh in the background, its stderr into a file (a pipe could fill and block it)."""
    err = open(tmp_path / f"{name}.err", "w+")  # noqa: SIM115 (closed by the caller)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err), err


def error_lines(log) -> list[str]:
    """The `error:` lines of a launch's stderr: a line may follow the progress bar of a process killed in the middle
    of it, or its carriage returns."""
    import re

    return re.findall(r"(?:^|(?<=[\r\n\]]))error: [^\r\n]*", log.read_text())


def test_a_dead_worker_is_restarted_and_resumes(data, tmp_path, two_processes_long):
    """kill -9 of the main worker of a 2-process run that saves every step (so the kill may land inside a save):
    the other worker says so in one line, torchrun's agent (MAX_RESTARTS, 3 by default) restarts both, they
    resume from ckpt.pt (always whole) and the job ends by itself with exit 0, no temp file left, and the
    weights and carried state of an uninterrupted run, bitwise (the redone steps are pure functions of the
    step): resuming on the same number of processes is exact."""
    cmd, env = launch_cmd(2, tmp_path, data, *LONG, "train.save_every=1")
    env.pop("MAX_RESTARTS", None)  # the default
    process, err = start_launch(tmp_path, "run", cmd, env)
    try:
        wait_for_step(tmp_path, 40, process)
        os.kill(worker_pids(process)[0], signal.SIGKILL)
        assert process.wait(timeout=240) == 0, (tmp_path / "run.err").read_text()[-3000:]
    finally:
        end_tree(process)  # nothing is left when it passed
        err.close()
    resumed_at = start_events(tmp_path)[-1]["resumed_from"]
    assert 39 <= resumed_at < 120  # the last whole save before the kill
    assert_resumed(tmp_path, resumed_at, killed=True)
    errors = error_lines(tmp_path / "run.err")
    assert len(errors) == 1 and "lost another process in a collective" in errors[0]  # one restart, which worked
    log = (tmp_path / "run.err").read_text()
    assert "restarting the workers (1 of MAX_RESTARTS=3)" in log and "Traceback" not in log, log[-3000:]
    assert not list(tmp_path.glob(".*.tmp"))  # the save the kill cut short was cleaned up
    final = load_checkpoint(tmp_path / "ckpt.pt")
    for key in two_processes_long["model"]:
        assert torch.equal(two_processes_long["model"][key], final["model"][key]), key
    for key in ("h", "c"):
        assert torch.equal(two_processes_long["streams"][key], final["streams"][key])


def test_a_hung_peer_ends_the_run_and_a_rerun_resumes(data, tmp_path, two_processes_long):
    """One worker of a 2-process run stopped (SIGSTOP: alive, never answering). (1) SIGTERM then ends the run
    within STOP_GRACE: the other worker, blocked in a collective, never runs its handler, so launch.sh kills the
    session. (2) On the rerun, with train.collective_timeout=4 and no restarts, the worker left waiting ends by
    itself within the timeout with one line naming it. Each time ckpt.pt loads, and (3) a last rerun resumes
    from it and ends with the weights of an uninterrupted run, bitwise."""
    cmd, env = launch_cmd(2, tmp_path, data, *LONG, "train.collective_timeout=60")
    env |= {"MAX_RESTARTS": "0", "STOP_GRACE": "2"}
    process, err = start_launch(tmp_path, "sigterm", cmd, env)
    pids = {}
    try:
        wait_for_step(tmp_path, 60, process)  # past the save of step 50
        pids = worker_pids(process)
        os.kill(pids[1], signal.SIGSTOP)
        time.sleep(0.5)  # the other worker reaches the step's collective and waits in it
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) != 0
        assert time.monotonic() - signalled < 2 + 15  # STOP_GRACE and a margin, not collective_timeout's 60 s
    finally:
        end_tree(process, *pids.values())
        err.close()
    assert "did not stop within STOP_GRACE=2 s of SIGTERM" in (tmp_path / "sigterm.err").read_text()
    saved = load_checkpoint(tmp_path / "ckpt.pt")["step"]  # whole: the last save before the stop
    assert saved in (50, 100)

    cmd, env = launch_cmd(2, tmp_path, data, *LONG, "train.collective_timeout=4")
    env |= {"MAX_RESTARTS": "0"}
    logged = len(events_of(tmp_path))
    process, err = start_launch(tmp_path, "timeout", cmd, env)
    pids = {}
    try:
        wait_for_step(tmp_path, saved + 10, process, since=logged)
        pids = worker_pids(process)
        os.kill(pids[1], signal.SIGSTOP)
        stopped = time.monotonic()
        import psutil

        survivor = psutil.Process(pids[0])
        survivor.wait(timeout=4 + 30)  # the timeout and a margin; gloo's own default would be 30 minutes
        assert time.monotonic() - stopped < 4 + 30
    finally:
        end_tree(process, *pids.values())  # torchrun would SIGKILL the stopped worker itself, 30 s after SIGTERM
        err.close()
    errors = error_lines(tmp_path / "timeout.err")
    assert len(errors) == 1 and "waited train.collective_timeout=4 s for another process in a collective" in errors[0]
    resumed_from = load_checkpoint(tmp_path / "ckpt.pt")["step"]  # whole, and at a save

    assert launch(2, tmp_path, data, *LONG).returncode == 0
    assert [e["resumed_from"] for e in start_events(tmp_path)][-1] == resumed_from
    final = load_checkpoint(tmp_path / "ckpt.pt")
    for key in two_processes_long["model"]:
        assert torch.equal(two_processes_long["model"][key], final["model"][key]), key


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes_with_restarts(tmp_path, node_args: list[list[str]]) -> list[int]:
    """NNODES=2 over 127.0.0.1, one process each, node i trained with node_args[i], the launcher's default
    restarts (MAX_RESTARTS unset); their exit statuses. Logs in tmp_path/node{i}.err; every process ended."""
    port, nodes, errs = free_port(), [], []
    try:
        for rank, args in enumerate(node_args):
            cmd, env = launch_cmd(1, tmp_path / "run", *args)
            env |= {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            env |= {"OMP_NUM_THREADS": "1"}
            env.pop("MAX_RESTARTS", None)  # the default: restarts allowed, and none may happen
            node, err = start_launch(tmp_path, f"node{rank}", cmd, env)
            nodes.append(node)
            errs.append(err)
        return [node.wait(timeout=120) for node in nodes]
    finally:
        for node, err in zip(nodes, errs):
            end_tree(node)
            err.close()


def test_a_node_with_another_text_is_refused_before_any_step(shards, tmp_path):
    """NNODES=2 where node 1's data.path holds another version of the shards (one character of one Parquet row
    changed: the same vocabulary, another sha256): a user's error, so with restarts allowed (MAX_RESTARTS, 3 by
    default) nothing is restarted: each node says it in one line naming node 1 and both digests, no traceback,
    exit 2, and nothing trained."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.data import ReadOptions, load_corpus

    folder = Path(shards[0].split("=", 1)[1])
    other = tmp_path / "other_shards"
    shutil.copytree(folder, other)
    rows = pq.read_table(other / "part-1.parquet")["text"].to_pylist()
    rows[3] = rows[3][:10] + ("x" if rows[3][10] != "x" else "y") + rows[3][11:]
    pq.write_table(pa.table({"text": rows}), other / "part-1.parquet")
    node_args = [[f"data.path={path}", *shards[1:], *SCHEDULE] for path in (folder, other)]
    assert two_nodes_with_restarts(tmp_path, node_args) == [2, 2]
    digests = [load_corpus(str(path), options=ReadOptions(separator="")).sha256[:16] for path in (folder, other)]
    for rank in (0, 1):
        log = (tmp_path / f"node{rank}.err").read_text()
        errors = error_lines(tmp_path / f"node{rank}.err")
        assert len(errors) == 1, log
        assert errors[0].startswith("error: node 1 (") and "trains on another text than the main process" in errors[0]
        assert f"sha256 {digests[1]}" in errors[0] and f"sha256 {digests[0]}" in errors[0] and "on node 0" in errors[0]
        assert "Traceback" not in log and "restarting" not in log and "ChildFailedError" not in log, log
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the run began


def test_a_diverged_run_is_not_restarted(data, tmp_path):
    """NNODES=2 (one process each, over 127.0.0.1) whose loss goes non-finite at once (train.weight_decay=1e40:
    every step after the first is non-finite on this config, as with train.lr=1e37 before train.lr was bounded by
    1): a training error, which a restart from the last checkpoint would meet again, so with restarts allowed
    (MAX_RESTARTS, 3 by default) nothing is restarted: each node says "10 non-finite steps in a row" in one line,
    no traceback, exit 2, and the run started once."""
    diverge = ["train.weight_decay=1e40", "train.min_lr=0", "train.warmup_steps=0"]
    assert two_nodes_with_restarts(tmp_path, [[data, *diverge]] * 2) == [2, 2]
    for rank in (0, 1):
        log = (tmp_path / f"node{rank}.err").read_text()
        errors = error_lines(tmp_path / f"node{rank}.err")
        assert len(errors) == 1 and errors[0].startswith("error: 10 non-finite steps in a row at step 10"), log
        assert "Traceback" not in log and "restarting" not in log and "ChildFailedError" not in log, log
    assert len(start_events(tmp_path / "run")) == 1  # one launch of the workers: no restart
    assert not (tmp_path / "run" / "ckpt.pt").exists()  # nothing non-finite was saved


# ---------------------------------------------------------------- two hosts on a network, each with its own disk


def two_hosts_unavailable() -> str | None:
    """Why two network namespaces cannot be built here, or None."""
    import shutil

    if os.geteuid() != 0:
        return "needs root (ip netns, unshare -m, mount --bind); CI runs as root"
    missing = [tool for tool in ("ip", "unshare", "mount") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (iproute2, util-linux)"
    probe = f"chlprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "ip netns add is not permitted here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def two_hosts(tmp_path):
    """Two network namespaces joined by a veth pair, 10.213.N.1 and 10.213.N.2 inside them and nowhere else
    (no route leaves them), and a private disk for each host: the same path, disk/, is bind-mounted from disk0/
    or disk1/ in a mount namespace of each host's own. Yields a function that runs a command on host r."""
    reason = two_hosts_unavailable()
    if reason:
        pytest.skip(reason)
    tag = os.getpid() % 100_000
    names, links = [f"chl{tag}a", f"chl{tag}b"], [f"chv{tag}a", f"chv{tag}b"]
    addresses = [f"10.213.{tag % 250}.1", f"10.213.{tag % 250}.2"]
    setup = [
        ["ip", "netns", "add", names[0]],
        ["ip", "netns", "add", names[1]],
        ["ip", "link", "add", links[0], "type", "veth", "peer", "name", links[1]],
    ]
    for name, link, address in zip(names, links, addresses):
        setup += [
            ["ip", "link", "set", link, "netns", name],
            ["ip", "-n", name, "addr", "add", f"{address}/24", "dev", link],
            ["ip", "-n", name, "link", "set", link, "up"],
            ["ip", "-n", name, "link", "set", "lo", "up"],
        ]
    (tmp_path / "disk").mkdir()
    try:
        for command in setup:
            subprocess.run(command, check=True, capture_output=True)

        def on_host(rank: int, command: list[str], env: dict, log) -> subprocess.Popen:
            disk = tmp_path / f"disk{rank}"
            disk.mkdir(exist_ok=True)
            env = env | {"GLOO_SOCKET_IFNAME": links[rank], "MASTER_ADDR": addresses[0]}
            env |= {"CHARLSTM_CACHE_DIR": str(tmp_path / "disk" / "cache")}  # each host's own cache, on its disk
            private_disk = 'mount --bind "$0" "$1" && shift && exec "$@"'  # $0: the disk, $1: where it goes
            wrapped = ["ip", "netns", "exec", names[rank], "unshare", "--mount", "--propagation", "private"]
            wrapped += ["sh", "-c", private_disk, str(disk), str(tmp_path / "disk"), *command]
            return subprocess.Popen(wrapped, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)

        yield on_host
    finally:
        for name in names:  # deleting a namespace deletes its end of the veth pair; its processes are ended first
            for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def wait_for_hosts(hosts: list[subprocess.Popen], timeout: float, logs: list[Path]) -> list[int]:
    """Every host's exit status, or, once one host failed or the time is up, an AssertionError that shows each
    host's log (a host left waiting for a peer that failed would otherwise only time out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [host.poll() for host in hosts]
        if None not in statuses:
            return statuses
        if any(status not in (None, 0) for status in statuses):
            break
        time.sleep(0.1)
    tails = "\n".join(f"--- {log.name}:\n{log.read_text()[-1500:]}" for log in logs)
    raise AssertionError(f"the hosts ended {[host.poll() for host in hosts]} within {timeout:g} s\n{tails}")


def test_two_hosts_with_their_own_disks_stop_resume_and_finish(two_hosts, shards, data, tmp_path):
    """NNODES=2 on two hosts joined by a network, each with its own disk: train on shards, SIGTERM both (as a
    scheduler does), rerun both to the end. The main process alone reads and writes out_dir, so host 1's disk
    holds only its own corpus cache, and the rerun resumes from host 0's ckpt.pt. The result is one process's
    on the plain text the shards hold."""
    out = tmp_path / "disk" / "out"  # the same path on both hosts: host 0's disk0/out, host 1's disk1/out

    def launch_both(name: str, port: int) -> list[subprocess.Popen]:
        hosts = []
        for rank in (0, 1):
            # a peer stalled in a collective ends the run in its own words well before the test gives up
            cmd, env = launch_cmd(1, out, *shards, *LONG, "train.collective_timeout=60")
            # each run its own rendezvous port: the first run's may still be held on host 0 when the rerun starts
            env |= {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
            log = open(tmp_path / f"{name}{rank}.err", "w")  # noqa: SIM115
            hosts.append(two_hosts(rank, cmd, env, log))
            log.close()
        return hosts

    hosts = launch_both("first", 29511)
    try:
        wait_for_step(tmp_path / "disk0" / "out", 60, hosts[0])
        for host in hosts:
            host.send_signal(signal.SIGTERM)
        logs = [tmp_path / f"first{rank}.err" for rank in (0, 1)]
        assert wait_for_hosts(hosts, 120, logs) == [0, 0], logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
    finally:
        for host in hosts:
            end_tree(host)
    stopped_at = load_checkpoint(tmp_path / "disk0" / "out" / "ckpt.pt")["step"]
    assert 60 <= stopped_at < 120
    assert not (tmp_path / "disk1" / "out").exists()  # host 1 wrote nothing of the run, only its cache
    assert any((tmp_path / "disk1" / "cache" / "ids").glob("*.ids.npy"))
    assert any((tmp_path / "disk1" / "cache" / "sources").glob("*.json"))  # the shards' text, named once read

    hosts = launch_both("rerun", 29512)
    try:
        logs = [tmp_path / f"rerun{rank}.err" for rank in (0, 1)]
        assert wait_for_hosts(hosts, 180, logs) == [0, 0], logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
    finally:
        for host in hosts:
            end_tree(host)
    assert_resumed(tmp_path / "disk0" / "out", stopped_at)
    assert [(e["processes"], e["threads"]) for e in start_events(tmp_path / "disk0" / "out")] == [(2, 1)] * 2

    assert run_train(data, *LONG, f"out_dir={tmp_path / 'one'}") == 0  # one process, here
    train_two, val_two = train_losses(tmp_path / "disk0" / "out")
    train_one, val_one = train_losses(tmp_path / "one")
    assert val_two == pytest.approx(val_one, rel=1e-5)
    assert train_two[-len(train_one) :] == pytest.approx(train_one[-len(train_two) :], rel=1e-5)
    assert_close_params(
        load_checkpoint(tmp_path / "one" / "ckpt.pt"), load_checkpoint(tmp_path / "disk0" / "out" / "ckpt.pt")
    )
