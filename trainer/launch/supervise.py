"""Run a launch and pass the user's stop on: SIGTERM and SIGINT go to the training processes only (not to
torchrun or accelerate, which would kill them and exit non-zero, or restart them); they finish the step, save
and exit 0. A worker blocked inside a collective (a peer hung) never runs its handler: STOP_GRACE seconds after
the first signal, the launcher and its workers are killed by pid, and ckpt.pt holds the last whole save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import psutil

DEFAULT_STOP_GRACE = 30  # seconds the workers get to save after a signal


def workers(leader: int) -> list[int]:
    """The training processes: the launcher's children (torchrun and accelerate start each in a session of its
    own), or the leader itself when it trains alone."""
    try:
        children = psutil.Process(leader).children()
    except psutil.NoSuchProcess:
        return []
    return [child.pid for child in children] or [leader]


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def run_supervised(command: list[str], env: dict[str, str], stop_grace: float) -> tuple[int, bool]:
    """Run `command` in a session of its own with the stop forwarding: (its exit status, 128 + N for signal N;
    whether a stop signal came)."""
    leader = subprocess.Popen(command, env={**os.environ, **env}, start_new_session=True)
    timer: list[threading.Timer] = []

    def give_up(name: str) -> None:
        print(
            f"charlstm: the workers did not stop within STOP_GRACE={stop_grace:g} s of {name} (blocked in a "
            "collective?): killed; ckpt.pt holds the last whole save",
            file=sys.stderr,
            flush=True,
        )
        _kill([*workers(leader.pid), leader.pid], signal.SIGKILL)

    def forward(signum: int, frame) -> None:
        _kill(workers(leader.pid), signum)  # passed on as it is: the workers say which signal stopped them
        if not timer:
            timer.append(threading.Timer(stop_grace, give_up, [signal.Signals(signum).name]))
            timer[0].daemon = True
            timer[0].start()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = leader.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if timer:
            timer[0].cancel()
    return (128 - status if status < 0 else status), bool(timer)
