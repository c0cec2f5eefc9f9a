"""Which launcher, with which arguments: a pure function of the environment, the machine and the command line,
so that every case (a CPU, GPUs, several machines, SLURM, Kubeflow's PyTorchJob) is tested without starting
anything. trainer/launch/cli.py runs what it returns."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainer.dist.peer_faults import process_group_env

DEFAULT_PORT = 29500  # torchrun's and accelerate's default rendezvous port
SLURM_PORTS = (15000, 15000)  # a SLURM job's port: 15000 + job id mod 15000, below Linux's ephemeral range
BATCH_STEP = "4294967294"  # SLURM_STEP_ID of an sbatch script's own step (not an srun step)


class LaunchError(Exception):
    """A launch that cannot work as asked: one line, exit 2."""


@dataclass(frozen=True)
class Plan:
    """What to run on this machine."""

    command: list[str]  # the program and its arguments
    env: dict[str, str] = field(default_factory=dict)  # variables to set for it
    launcher: str = "python"  # python, torchrun or accelerate
    nproc: int = 1  # processes on this machine
    nnodes: int = 1  # machines
    node_rank: int = 0  # this machine's index
    restarts: int = 0  # times the launcher restarts the workers after one died (never after a user's error)
    pre_encode: list[str] | None = None  # the command that encodes the corpus first (runs of several processes)
    choice: str = ""  # one line: what was chosen, and from which variables


def slurm_hosts(nodelist: str) -> list[str]:
    """SLURM's compressed host list, e.g. `gpu[07-08,10],cpu1` -> gpu07, gpu08, gpu10, cpu1 (zero padding kept;
    several bracket groups in one name expand as a product, as Slurm's hostlist does)."""
    depth = 0
    for ch in nodelist:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r}: its brackets do not match")
    if depth:
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r}: its brackets do not match")
    hosts: list[str] = []
    for name in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        expanded = [""]
        for text, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", name):
            if not text and not ranges:
                continue
            values = [""] if not ranges else [v for part in ranges.split(",") for v in _expand_range(part, nodelist)]
            expanded = [done + text + value for done in expanded for value in values]
        hosts.extend(expanded)
    if not hosts:
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts


def _expand_range(part: str, nodelist: str) -> list[str]:
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
    if not match:
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read the range {part!r}")
    first, last = match.group(1), match.group(2) or match.group(1)
    if int(last) < int(first):
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r}: the range {part!r} runs backwards")
    return [str(i).zfill(len(first)) for i in range(int(first), int(last) + 1)]


class Sources:
    """Reads a setting by precedence: the project's own variable, then Kubeflow's PET_*, then SLURM's; and
    remembers where each value came from, for the line every launch prints."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        self.used: list[str] = []

    def get(self, *names: str) -> tuple[str, str] | None:
        for name in names:
            value = self.environ.get(name, "").strip()
            if value:
                return name, value
        return None

    def integer(self, label: str, *names: str, low: int = 0) -> int | None:
        found = self.get(*names)
        if found is None:
            return None
        name, value = found
        if not value.isdigit() or int(value) < low:
            raise LaunchError(f"{name} must be an integer >= {low}, got {value!r}")
        self.used.append(label if name == label else f"{label}={value} from {name}")
        return int(value)


def _slurm_in_srun_step(environ: Mapping[str, str]) -> bool:
    step = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID")
    return bool(step) and step != BATCH_STEP


def nodes(sources: Sources) -> tuple[int, int, str, int]:
    """(machines, this machine's rank, the rendezvous address, its port)."""
    environ = sources.environ
    nnodes = sources.integer("NNODES", "NNODES", "PET_NNODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES", low=1) or 1
    if nnodes == 1:
        return 1, 0, "", DEFAULT_PORT
    if not any(environ.get(n) for n in ("NNODES", "PET_NNODES")) and not _slurm_in_srun_step(environ):
        raise LaunchError(
            f"SLURM gave this job {nnodes} nodes, but this is the batch script, not an srun step: start one launch "
            "per node (srun --ntasks-per-node=1 ./launch.sh ...; see examples/slurm/train.sbatch)"
        )
    rank = sources.integer("NODE_RANK", "NODE_RANK", "PET_NODE_RANK", "SLURM_NODEID")
    if rank is None or rank >= nnodes:
        raise LaunchError(f"NODE_RANK must be set, between 0 and {nnodes - 1}, with NNODES={nnodes}")
    address = sources.get("MASTER_ADDR", "PET_MASTER_ADDR")
    if address is None and environ.get("SLURM_JOB_NODELIST"):
        address = ("SLURM_JOB_NODELIST", slurm_hosts(environ["SLURM_JOB_NODELIST"])[0])
    if address is None:
        raise LaunchError(f"MASTER_ADDR must be set with NNODES={nnodes}: the address of the machine of NODE_RANK 0")
    sources.used.append("MASTER_ADDR" if address[0] == "MASTER_ADDR" else f"MASTER_ADDR={address[1]} from {address[0]}")
    port = sources.integer("MASTER_PORT", "MASTER_PORT", "PET_MASTER_PORT", low=1)
    if port is None and environ.get("SLURM_JOB_ID", "").isdigit():
        port = SLURM_PORTS[0] + int(environ["SLURM_JOB_ID"]) % SLURM_PORTS[1]
        sources.used.append(f"MASTER_PORT={port} from SLURM_JOB_ID")
    return nnodes, rank, address[1], port or DEFAULT_PORT


def processes(sources: Sources, gpus: int) -> int:
    """Processes on this machine: NPROC, PyTorchJob's PET_NPROC_PER_NODE, SLURM's GPUs, else one per GPU or 1."""
    pet = sources.environ.get("PET_NPROC_PER_NODE", "")
    names = ["NPROC"] + (["PET_NPROC_PER_NODE"] if pet.isdigit() else []) + ["SLURM_GPUS_ON_NODE"]
    nproc = sources.integer("NPROC", *names, low=1)
    if nproc is None:
        nproc = max(gpus, 1)
    if gpus > 0 and nproc > gpus:
        raise LaunchError(f"NPROC={nproc} but this machine has {gpus} GPU(s): one process per GPU at most")
    return nproc


def plan(environ: Mapping[str, str], gpus: int, cores: int, args: list[str], python: str) -> Plan:
    """The launch for `args` (CONFIG [key=value ...]) on a machine with `gpus` GPUs and `cores` usable cores."""
    if not args:
        raise LaunchError("give a config file: ./launch.sh CONFIG [key=value ...] (no arguments: the quickstart)")
    sources = Sources(environ)
    cores = sources.integer("SLURM_CPUS_ON_NODE", "SLURM_CPUS_ON_NODE", low=1) or cores
    nproc = processes(sources, gpus)
    nnodes, rank, address, port = nodes(sources)
    total = nproc * nnodes
    config, overrides = args[0], args[1:]
    train = ["-m", "trainer.train", "--config", config, *overrides]  # a module: it runs from any folder
    if total == 1:
        how = "1 process on the GPU" if gpus else f"1 process on the CPU, {cores} core(s)"
        return Plan([python, "-m", "trainer.train", "--config", config, *overrides], choice=f"{how}{_from(sources)}")
    restarts = sources.integer("MAX_RESTARTS", "MAX_RESTARTS")
    restarts = 3 if restarts is None else restarts
    # each machine encodes its copy of the corpus first (and checks the config): a restart would only repeat a
    # bad config, and a long first encode would otherwise happen while the other processes wait in a collective
    encode = [python, "-m", "trainer.data", "--config", config, "--processes", str(total), *overrides]
    where = f"{nnodes} machine(s) x {nproc} process(es), this is machine {rank}" if nnodes > 1 else f"{nproc} processes"
    if gpus > 0:
        wrapper = [python, "-m", "trainer.launch.exit_status"]
        command = [*wrapper, "accelerate", "--multi_gpu", "--num_processes", str(total)]
        # the trainer chooses the precision itself (train.mixed_precision): accelerate's own stays `no`; the
        # launcher restarts dead workers itself (trainer/launch/exit_status.py says why)
        command += ["--mixed_precision", "no", "--max_restarts", "0"]
        if nnodes > 1:
            command += ["--num_machines", str(nnodes), "--machine_rank", str(rank)]
            command += ["--main_process_ip", address, "--main_process_port", str(port)]
        choice = f"accelerate launch, {where}, one per GPU (NCCL)"
        # torchelastic gives its workers TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (abort the process on a timeout) unless
        # it has the variable itself: set 2 here, so that a lost peer ends in one line (trainer/dist/peer_faults.py)
        env = process_group_env(environ, "cuda")
        return Plan(command + train, env, "accelerate", nproc, nnodes, rank, restarts, encode, choice + _from(sources))
    env = {}
    if not environ.get("OMP_NUM_THREADS"):
        # torchrun would give every process 1 thread: share the cores out (never more threads than cores)
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    threads = env.get("OMP_NUM_THREADS") or environ["OMP_NUM_THREADS"]
    rendezvous = ["--standalone"]
    if nnodes > 1:
        rendezvous = ["--nnodes", str(nnodes), "--node_rank", str(rank), "--master_addr", address]
        rendezvous += ["--master_port", str(port)]
    command = [python, "-m", "trainer.launch.exit_status", "torchrun", *rendezvous, "--nproc_per_node", str(nproc)]
    command += ["--max-restarts", "0", *train]
    choice = f"torchrun (gloo), {where} on the CPU, {threads} thread(s) each"
    return Plan(command, env, "torchrun", nproc, nnodes, rank, restarts, encode, choice + _from(sources))


def _from(sources: Sources) -> str:
    return f" (from {', '.join(sources.used)})" if sources.used else ""
