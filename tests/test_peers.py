"""A lost peer on NCCL ends in gloo's one line (trainer/dist/peer_faults.py), checked on the CPU: the environment
asked for before the process group starts, the process group's error read after a collective (a fake group, so that
the test needs no GPU), and the one line main() gives for it."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from helpers import EMPTY_CONFIG, one_line_error
from torch._C._distributed_c10d import ErrorType

import trainer.train
from trainer.config import Config
from trainer.dist.peer_faults import PeerError, check_peers, process_group_env
from trainer.launch.plan import plan

VARIABLE = "TORCH_NCCL_ASYNC_ERROR_HANDLING"
KEPT = "the last checkpoint is kept: rerun to resume"


def test_cuda_asks_nccl_to_clean_up_only_unless_the_user_chose():
    assert process_group_env({}, "cuda") == {VARIABLE: "2"}
    assert process_group_env({"PATH": "/bin"}, "cuda") == {VARIABLE: "2"}
    for name in (VARIABLE, "NCCL_ASYNC_ERROR_HANDLING"):  # torch's name, and the old one it still reads
        for value in ("0", "1", "3"):
            assert process_group_env({name: value}, "cuda") == {}, (name, value)
    for device in ("cpu", "mps"):
        assert process_group_env({}, device) == {}


def test_the_launch_on_gpus_sets_it_for_torchelastic_and_the_cpu_launch_does_not():
    """torchelastic gives its workers 1 (abort the process) unless its own environment has the variable."""
    args = ["configs/tiny.yaml"]
    assert plan({}, gpus=2, cores=8, args=args, python="python").env == {VARIABLE: "2"}
    assert plan({VARIABLE: "1"}, gpus=2, cores=8, args=args, python="python").env == {}
    assert VARIABLE not in plan({"NPROC": "2"}, gpus=0, cores=8, args=args, python="python").env


def test_the_cpu_path_leaves_the_environment_alone(monkeypatch):
    from trainer.dist.precision import make_accelerator

    monkeypatch.delenv(VARIABLE, raising=False)
    before = dict(os.environ)
    accelerator, _ = make_accelerator(Config())
    assert accelerator.device.type == "cpu" and dict(os.environ) == before


class FakeBackend:
    def __init__(self, error):
        self.error = error

    def get_error(self):
        return self.error


class FakeGroup:
    def __init__(self, backend):
        self.backend = backend

    def _get_backend(self, device: torch.device):
        assert device.type == "cuda"  # NCCL's backend is the CUDA device's
        return self.backend


def on_nccl(monkeypatch, backend, processes: int = 2, device: str = "cuda"):
    """A fake accelerator on `device` whose initialized default group has `backend` for CUDA."""
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_group", lambda: FakeGroup(backend))
    return SimpleNamespace(num_processes=processes, device=torch.device(device))


@pytest.mark.parametrize(
    "error, timed_out",
    [(ErrorType.TIMEOUT, True), (ErrorType.COMM_ERROR, False), (ErrorType.REMOTE_ERROR, False)],
    ids=["TIMEOUT", "COMM_ERROR", "REMOTE_ERROR"],
)
def test_an_error_of_the_process_group_is_raised(monkeypatch, error, timed_out):
    with pytest.raises(PeerError) as raised:
        check_peers(on_nccl(monkeypatch, FakeBackend(error)))
    assert raised.value.timed_out is timed_out and error.name in str(raised.value)


def test_nothing_is_raised_without_an_error_or_a_way_to_ask(monkeypatch):
    check_peers(on_nccl(monkeypatch, FakeBackend(ErrorType.SUCCESS)))
    check_peers(on_nccl(monkeypatch, object()))  # a torch whose backend has no get_error (the CPU wheel's gloo)
    check_peers(on_nccl(monkeypatch, FakeBackend(ErrorType.TIMEOUT), processes=1))  # no peer to lose
    check_peers(on_nccl(monkeypatch, FakeBackend(ErrorType.TIMEOUT), device="cpu"))  # gloo raises by itself
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    check_peers(SimpleNamespace(num_processes=2, device=torch.device("cuda")))


@pytest.mark.parametrize(
    "timed_out, why",
    [
        (True, "waited train.collective_timeout=7 s for another process in a collective"),
        (False, "lost another process in a collective"),
    ],
    ids=["timeout", "lost"],
)
def test_main_says_it_in_one_line_and_exits_1(monkeypatch, capsys, timed_out, why):
    """Every process that saw it says it (the peer at fault may be the main one), as on gloo."""

    def fails(cfg):
        raise PeerError("NCCL's watchdog reported SOMETHING", timed_out=timed_out)

    monkeypatch.setattr(trainer.train, "train", fails)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("GROUP_RANK", "1")
    assert trainer.train.main(["--config", str(EMPTY_CONFIG), "train.collective_timeout=7"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("error: node 1 (") and "process 3" in line and why in line, line
    assert "NCCL's watchdog reported SOMETHING" in line and line.endswith(KEPT)


def test_an_nccl_timeout_raised_by_a_wait_is_a_timeout_too():
    """Where NCCL raises instead (a blocking wait), its timeout reads as gloo's does."""
    error = dist.DistBackendError(
        "[PG ID 0 PG GUID 0 Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, "
        "OpType=ALLREDUCE, NumelIn=4, NumelOut=4, Timeout(ms)=7000) ran for 7012 milliseconds before timing out."
    )
    line = trainer.train.collective_failure(error, 7)
    assert "waited train.collective_timeout=7 s for another process" in line and "WorkNCCL(SeqNum=9" in line
