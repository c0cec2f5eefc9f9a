"""The launcher's choice as a pure function: every machine and scheduler case without starting anything, SLURM's
compressed host lists, the precedence of the variables; and ./launch.sh --dry-run."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from helpers import ROOT, one_line_error

from trainer.launch.cli import is_override
from trainer.launch.plan import LaunchError, plan, slurm_hosts

PY = "python"
ARGS = ["configs/tiny.yaml", "train.max_steps=5"]
TRAIN = ["-m", "trainer.train", "--config", "configs/tiny.yaml", "train.max_steps=5"]  # a module: from any folder


def after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_a_cpu_runs_one_process():
    chosen = plan({}, gpus=0, cores=8, args=ARGS, python=PY)
    assert chosen.command == [PY, "-m", "trainer.train", "--config", "configs/tiny.yaml", "train.max_steps=5"]
    assert chosen.pre_encode is None and chosen.env == {} and chosen.launcher == "python"


def test_nproc_on_a_cpu_is_torchrun_sharing_the_cores():
    chosen = plan({"NPROC": "2"}, gpus=0, cores=8, args=ARGS, python=PY)
    wrapper = [PY, "-m", "trainer.launch.exit_status"]
    assert chosen.command[:6] == [*wrapper, "torchrun", "--standalone", "--nproc_per_node"]
    assert after(chosen.command, "--nproc_per_node") == "2" and after(chosen.command, "--max-restarts") == "0"
    assert chosen.restarts == 3  # the launcher restarts dead workers, torchrun does not (it would retry errors)
    assert chosen.command[-5:] == TRAIN
    assert chosen.env == {"OMP_NUM_THREADS": "4"}  # 8 cores shared by 2 processes
    assert chosen.pre_encode[-3:] == ["--processes", "2", "train.max_steps=5"]
    assert "NPROC" in chosen.choice and "4 thread(s)" in chosen.choice
    # the user's thread count wins; never fewer than one thread
    assert plan({"NPROC": "2", "OMP_NUM_THREADS": "3"}, 0, 8, ARGS, PY).env == {}
    assert plan({"NPROC": "4"}, 0, 2, ARGS, PY).env == {"OMP_NUM_THREADS": "1"}


def test_gpus():
    assert plan({}, gpus=1, cores=8, args=ARGS, python=PY).launcher == "python"
    several = plan({}, gpus=4, cores=8, args=ARGS, python=PY)
    assert several.command[:5] == [PY, "-m", "trainer.launch.exit_status", "accelerate", "--multi_gpu"]
    assert after(several.command, "--max_restarts") == "0" and several.restarts == 3
    assert after(several.command, "--num_processes") == "4" and after(several.command, "--mixed_precision") == "no"
    assert "--num_machines" not in several.command and several.command[-5:] == TRAIN
    assert after(plan({"NPROC": "2"}, 4, 8, ARGS, PY).command, "--num_processes") == "2"
    with pytest.raises(LaunchError, match="one process per GPU"):
        plan({"NPROC": "5"}, gpus=4, cores=8, args=ARGS, python=PY)


def test_several_machines():
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    cpu = plan(env, gpus=0, cores=4, args=ARGS, python=PY).command
    assert cpu[4:12] == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1", "--master_port", "1234"]
    gpu = plan(env, gpus=8, cores=4, args=ARGS, python=PY).command
    assert after(gpu, "--num_processes") == "16" and after(gpu, "--machine_rank") == "1"
    assert after(gpu, "--main_process_ip") == "10.0.0.1" and after(gpu, "--main_process_port") == "1234"
    assert after(plan({**env, "MASTER_PORT": ""}, 0, 4, ARGS, PY).command, "--master_port") == "29500"
    for missing, word in (("NODE_RANK", "NODE_RANK"), ("MASTER_ADDR", "MASTER_ADDR")):
        with pytest.raises(LaunchError, match=word):
            plan({**env, missing: ""}, gpus=0, cores=4, args=ARGS, python=PY)
    with pytest.raises(LaunchError, match="NODE_RANK"):
        plan({**env, "NODE_RANK": "2"}, gpus=0, cores=4, args=ARGS, python=PY)


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("gpu[07-08,10]", ["gpu07", "gpu08", "gpu10"]),
        ("node1,node2", ["node1", "node2"]),
        ("a[1-2],b[3-4],c", ["a1", "a2", "b3", "b4", "c"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("gpu-[009-011]", ["gpu-009", "gpu-010", "gpu-011"]),
        ("single", ["single"]),
    ],
)
def test_slurm_host_lists(nodelist, hosts):
    assert slurm_hosts(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["x[3-1]", "x[a-b]", "", "x[1-"])
def test_slurm_host_lists_that_cannot_be_read(nodelist):
    with pytest.raises(LaunchError):
        slurm_hosts(nodelist)


SLURM = {
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NODELIST": "gpu[07-08,10]",
    "SLURM_NNODES": "3",
    "SLURM_NODEID": "2",
    "SLURM_STEP_ID": "0",  # inside an srun step
    "SLURM_GPUS_ON_NODE": "4",
    "SLURM_CPUS_ON_NODE": "32",
}


def test_slurm_across_nodes():
    chosen = plan(SLURM, gpus=4, cores=64, args=ARGS, python=PY)
    command = chosen.command
    assert after(command, "--num_machines") == "3" and after(command, "--machine_rank") == "2"
    assert after(command, "--main_process_ip") == "gpu07"  # the first host: where node 0 runs
    assert after(command, "--main_process_port") == str(15000 + 123456 % 15000)
    assert after(command, "--num_processes") == "12"
    for source in ("SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID", "SLURM_GPUS_ON_NODE"):
        assert source in chosen.choice
    cpu = plan({**SLURM, "SLURM_GPUS_ON_NODE": "", "NPROC": "2"}, gpus=0, cores=64, args=ARGS, python=PY)
    assert cpu.launcher == "torchrun" and after(cpu.command, "--master_addr") == "gpu07"
    assert cpu.env == {"OMP_NUM_THREADS": "16"}  # the 32 CPUs SLURM granted, not the machine's 64


def test_slurm_many_nodes_outside_an_srun_step_is_refused():
    for step in ({"SLURM_STEP_ID": ""}, {"SLURM_STEP_ID": "4294967294"}):
        with pytest.raises(LaunchError, match="srun"):
            plan({**SLURM, **step}, gpus=4, cores=64, args=ARGS, python=PY)
    one_node = {**SLURM, "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_STEP_ID": ""}
    assert "--num_machines" not in plan(one_node, gpus=4, cores=64, args=ARGS, python=PY).command


def test_kubeflow_pytorchjob():
    env = {
        "PET_NNODES": "2",
        "PET_NODE_RANK": "1",
        "PET_NPROC_PER_NODE": "auto",
        "MASTER_ADDR": "job-master-0",
        "MASTER_PORT": "23456",
        "WORLD_SIZE": "8",  # processes, not machines: never read
        "RANK": "5",
    }
    chosen = plan(env, gpus=4, cores=16, args=ARGS, python=PY)
    assert after(chosen.command, "--num_machines") == "2" and after(chosen.command, "--machine_rank") == "1"
    assert after(chosen.command, "--main_process_ip") == "job-master-0"
    assert after(chosen.command, "--num_processes") == "8"  # `auto`: one per GPU
    assert "PET_NNODES" in chosen.choice and "RANK=5" not in chosen.choice
    numeric = plan({**env, "PET_NPROC_PER_NODE": "2"}, gpus=4, cores=16, args=ARGS, python=PY)
    assert after(numeric.command, "--num_processes") == "4"


def test_the_kubeflow_example_leaves_restarts_to_the_launcher_except_signals():
    """examples/kubernetes/pytorchjob.yaml: one pod per machine running ./launch.sh, every replica under
    `restartPolicy: ExitCode` (training-operator v1 recreates a pod only after an exit of 128 or more: a signal).
    OnFailure would restart the pod on the launcher's exit 2 (a user's or a training error, which it never
    restarts) and 1 (its own MAX_RESTARTS spent)."""
    job = yaml.safe_load((ROOT / "examples" / "kubernetes" / "pytorchjob.yaml").read_text(encoding="utf-8"))
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    for name, replica in replicas.items():
        assert replica["restartPolicy"] == "ExitCode", name
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch" and container["command"][0] == "./launch.sh", name


def test_the_projects_variables_win_then_pet_then_slurm():
    env = {**SLURM, "PET_NNODES": "4", "PET_NODE_RANK": "3", "PET_MASTER_ADDR": "pet-host", "NODE_RANK": "0"}
    chosen = plan(env, gpus=4, cores=64, args=ARGS, python=PY)
    assert after(chosen.command, "--num_machines") == "4"  # PET_NNODES over SLURM_NNODES
    assert after(chosen.command, "--machine_rank") == "0"  # NODE_RANK over PET_NODE_RANK and SLURM_NODEID
    assert after(chosen.command, "--main_process_ip") == "pet-host"  # PET_MASTER_ADDR over the SLURM host list
    assert after(plan({**env, "NPROC": "1"}, 4, 64, ARGS, PY).command, "--num_processes") == "4"


@pytest.mark.parametrize("env", [{"NPROC": "0"}, {"NPROC": "two"}, {"NPROC": "2", "MAX_RESTARTS": "x"}])
def test_bad_values_are_named(env):
    with pytest.raises(LaunchError, match=list(env)[-1]):
        plan(env, gpus=0, cores=4, args=ARGS, python=PY)


def launch_sh(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        ["./launch.sh", *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_dry_run_prints_the_command_and_exits():
    result = launch_sh("--dry-run", "configs/tiny.yaml", "train.max_steps=5", env={"NPROC": "2"})
    assert result.returncode == 0 and result.stderr == ""
    [line] = result.stdout.splitlines()
    assert "trainer.launch.exit_status torchrun --standalone --nproc_per_node 2" in line
    assert line.endswith("train.max_steps=5")


@pytest.mark.parametrize(
    "args, env, word",
    [
        (["nope.yaml"], {}, "not found"),
        (["configs/tiny.yaml"], {"STOP_GRACE": "soon"}, "STOP_GRACE"),
        (["configs/tiny.yaml"], {"NPROC": "-1"}, "NPROC"),
        (["configs/tiny.yaml"], {"NNODES": "2"}, "NODE_RANK"),
    ],
)
def test_launch_errors_are_one_line(args, env, word):
    result = launch_sh(*args, env=env)
    assert result.returncode == 2 and word in one_line_error(result.stderr)


def test_the_quickstart_trains_the_tiny_config():
    result = launch_sh("--dry-run")
    assert result.returncode == 0
    [line] = result.stdout.splitlines()
    assert line.endswith("-m trainer.train --config configs/tiny.yaml data.path=tinyshakespeare")
    # overrides alone are the quickstart's, after its own so that they win; a config's name or path is not one
    [line] = launch_sh("--dry-run", "out_dir=runs/mine", "train.max_minutes=1").stdout.splitlines()
    assert line.endswith("--config configs/tiny.yaml data.path=tinyshakespeare out_dir=runs/mine train.max_minutes=1")
    assert [is_override(a) for a in ("out_dir=x", "train.lr=1", "tiny", "configs/a=b.yaml", "=x")] == [1, 1, 0, 0, 0]


def test_an_offline_quickstart_trains_into_a_folder_of_its_own(monkeypatch):
    """Without the network the quickstart trains the Python documentation into runs/tiny_python_docs, so that a
    later quickstart with the network trains Tiny Shakespeare into runs/tiny (and does not meet a run on another
    text there); export and sample follow the out_dir, the user's own out_dir too."""
    import trainer.launch.cli as cli

    launched, ran = [], []
    monkeypatch.setattr(cli, "launch", lambda args, dry_run: launched.append(args) or 0)

    def offline(command, **kwargs):
        ran.append(command)
        return subprocess.CompletedProcess(command, 1 if command[1:3] == ["-m", "trainer.data"] else 0)

    monkeypatch.setattr(cli.subprocess, "run", offline)
    assert cli.quickstart(False) == 0
    assert launched[-1] == ["tiny", "data.path=builtin:python-docs", "out_dir=runs/tiny_python_docs"]
    assert ran[1][-1] == "runs/tiny_python_docs/best.pt" and ran[2][3] == "runs/tiny_python_docs/best.onnx"
    assert cli.quickstart(False, ["out_dir=runs/mine"]) == 0
    assert launched[-1][-1] == "out_dir=runs/mine" and ran[-1][3] == "runs/mine/best.onnx"
    before = len(ran)
    assert cli.quickstart(False, ["data.path=mine.txt"]) == 0  # the user's own text: no download tried
    assert [command[-1] for command in ran[before:]][:1] == ["runs/tiny/best.pt"] and len(ran) - before == 2


@pytest.mark.parametrize("ended", [True, False])
def test_a_worker_that_fails_after_its_run_ended_is_not_a_failure(tmp_path, ended):
    """gloo's teardown can abort a process at exit after a run that finished: that must not restart it. A worker
    that aborts before it marked its run as ended is a failure (exit 1: the launcher restarts)."""
    import os
    import sys

    worker = tmp_path / "worker.py"
    mark = "from trainer.launch.exit_status import mark_done; mark_done(); " if ended else ""
    worker.write_text(f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); {mark}os.abort()\n")
    done = tmp_path / "done"
    done.mkdir()
    command = [sys.executable, "-m", "trainer.launch.exit_status", "torchrun", "--standalone", "--nproc_per_node", "1"]
    result = subprocess.run(
        [*command, "--max-restarts", "0", str(worker)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CHARLSTM_DONE_DIR": str(done)},
        timeout=120,
    )
    assert result.returncode == (0 if ended else 1), result.stderr
    line = one_line_error(result.stderr) if ended else result.stderr.strip().splitlines()[-1]
    assert ("ended its run, then failed on the way out" in line) == ended and "SIGABRT" in line
    assert "Traceback" not in result.stderr
