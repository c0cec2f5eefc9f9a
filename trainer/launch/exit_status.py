"""`python -m trainer.launch.exit_status torchrun|accelerate ARGS...`: torchrun's or accelerate's launch, run in this
process so that its outcome is one line and an exit status the launcher can act on, instead of torch's
ChildFailedError traceback:
  0  every worker finished;
  2  an error a restart would meet again: a user's error (bad config, another text on one machine, a full
     disk, ...) or a training error (10 non-finite steps in a row, weights not finite at a save, a checkpoint
     that cannot be written): the workers said what is wrong, once per machine, and wrote it to
     $CHARLSTM_USER_ERROR_FILE; nothing is restarted;
  1  a worker died or lost a peer: trainer/launch/cli.py restarts the workers (MAX_RESTARTS), which resume.
torchelastic itself restarts on any failure (it has no error class that is not retried), so it runs with no
restarts of its own and the launcher decides."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

USER_ERROR_FILE = "CHARLSTM_USER_ERROR_FILE"  # where a worker writes a user's or training error's line
DONE_DIR = "CHARLSTM_DONE_DIR"  # where each worker marks that its training ended (done, or stopped and saved)
DATA_NOTED = "CHARLSTM_DATA_NOTED"  # the machine's encode step has said what its corpus left out


def mark_done() -> None:
    """Called by a worker once its run has ended and ckpt.pt holds it: a crash after this point (gloo's teardown
    can abort a process at exit) must not restart a finished run."""
    folder = os.environ.get(DONE_DIR)
    if folder:
        with open(os.path.join(folder, f"rank-{os.environ.get('RANK', '0')}"), "w"):
            pass


def ended_before_failing(failures: dict) -> bool:
    folder = os.environ.get(DONE_DIR)
    return bool(folder) and all(os.path.exists(os.path.join(folder, f"rank-{rank}")) for rank in failures)


def quiet_torchelastic() -> None:
    """torchelastic logs every failure with the stack of its agent; the one line below says it instead."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic") or name.startswith("torch.distributed.launcher"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def describe(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit {exitcode}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    which, args = argv[0], argv[1:]
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    quiet_torchelastic()
    try:
        if which == "torchrun":
            torchrun.run(torchrun.parse_args(args))
        else:
            from accelerate.commands.launch import launch_command, launch_command_parser

            launch_command(launch_command_parser().parse_args(args))
    except ChildFailedError as e:
        marker = os.environ.get(USER_ERROR_FILE)
        if marker and os.path.exists(marker):
            return 2  # the workers have said it
        rank, failure = e.get_first_failure()
        if ended_before_failing(e.failures):
            print(
                f"charlstm: worker {rank} on {socket.gethostname()} ended its run, then failed on the way out "
                f"({describe(failure.exitcode)}); the run is complete",
                file=sys.stderr,
            )
            return 0
        host = socket.gethostname()
        print(f"charlstm: worker {rank} on {host} failed ({describe(failure.exitcode)})", file=sys.stderr)
        return 1
    except SignalException as e:
        return 128 + e.sigval
    return 0


if __name__ == "__main__":
    sys.exit(main())
