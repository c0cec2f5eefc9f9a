"""How the processes of a run join and talk: the process group (under torchrun, each restart's keys apart),
the all-or-none start (`all_or_none`: an error on any process ends every process with the same one line, since
a process that stopped alone would leave the others waiting in their next collective), and one reader
handing its payload to all (`broadcast_from_main`: on machines that do not share a disk, only the main process's node
has out_dir and, usually, train.init_from).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import torch

from trainer.errors import UserError

T = TypeVar("T")


def node_name() -> str:
    """This process's node and host, for messages: torchrun's GROUP_RANK is the node's rank."""
    node = os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0"))
    return f"node {node} ({socket.gethostname()}, process {os.environ.get('RANK', '0')})"


def gather_objects(accelerator, item: Any) -> list[Any]:
    """Every process's `item`, in process order (a list of one on one process). Collective."""
    if accelerator.num_processes == 1:
        return [item]
    from accelerate.utils import gather_object

    return gather_object([item])


def attempt(action: Callable[[], T]) -> tuple[T | None, str | None]:
    """(action(), None), or (None, the message) when it raised UserError: for `all_or_none` to share."""
    try:
        return action(), None
    except UserError as e:
        return None, str(e)


def raise_first(gathered: list[tuple[str, str | None]]) -> None:
    """Raise the first process's error of (where, message) pairs in process order, named by its node unless it
    is the main process."""
    for rank, (where, message) in enumerate(gathered):
        if message is not None:
            raise UserError(message if rank == 0 else f"{where}: {message}")


def all_or_none(accelerator, action: Callable[[], T]) -> T:
    """action() on every process; a UserError on any of them is raised on all, with the message of the first
    (named by its node when it is not the main process). Collective."""
    result, error = attempt(action)
    raise_first(gather_objects(accelerator, (node_name(), error)))
    return result


class _Slot(NamedTuple):
    """Where a tensor was in a payload handed out: its index in the order sent, shape and dtype."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def broadcast_from_main(payload: T, accelerator) -> T:
    """The main process's payload (plain data and CPU tensors, nested in dicts and lists) on every process:
    its structure goes as one pickled object, its tensors by broadcast on the run's device. Collective."""
    if accelerator.num_processes == 1:
        return payload
    import torch.distributed as dist

    tensors: list[torch.Tensor] = []

    def strip(value):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return _Slot(len(tensors) - 1, tuple(value.shape), value.dtype)
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(strip(item) for item in value)
        return value

    box = [strip(payload) if accelerator.is_main_process else None]
    dist.broadcast_object_list(box, src=0, device=accelerator.device if accelerator.device.type == "cuda" else None)
    received: list[torch.Tensor] = []

    def collect(value):
        if isinstance(value, _Slot):
            if accelerator.is_main_process:
                buffer = tensors[value.index].to(accelerator.device)
            else:
                buffer = torch.empty(value.shape, dtype=value.dtype, device=accelerator.device)
            dist.broadcast(buffer, src=0)
            received.append(buffer.cpu())
            return received[-1]
        if isinstance(value, dict):
            return {key: collect(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(collect(item) for item in value)
        return value

    return collect(box[0])


def join_process_group(timeout: timedelta) -> None:
    """Under torchrun, join the process group through the launcher's store, with this attempt's keys apart.

    The workers of torchrun share its store (TORCHELASTIC_USE_AGENT_STORE), which outlives a restart of the
    workers (MAX_RESTARTS): a restarted worker that joined as accelerate does would find the addresses of the
    workers it replaced and fail to connect to them. So every attempt keeps its keys under its own prefix
    (the agents of all machines count their restarts alike: one failure restarts every machine's workers).
    Elsewhere accelerate joins the group itself."""
    import torch.distributed as dist

    env = os.environ
    if dist.is_initialized() or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(env.get("WORLD_SIZE", 1)) < 2:
        return
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    attempt = dist.PrefixStore(f"charlstm/attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(env.get("LOCAL_RANK", 0)))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=attempt, rank=rank, world_size=world, timeout=timeout)
