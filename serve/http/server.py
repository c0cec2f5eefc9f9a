"""uvicorn's Server, with SIGTERM (or a first Ctrl-C) draining before it stops. The listener stays open while
draining, so new requests get a 503 instead of a refused connection; a second signal stops at once."""

from __future__ import annotations

import asyncio
import signal

import uvicorn

from serve.http.beams import BeamWorker
from serve.http.scheduler import Scheduler


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace: float, beams: BeamWorker):
        super().__init__(config)
        self.scheduler = scheduler
        self.beams = beams
        self.grace = grace  # seconds the running requests get to finish
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame) -> None:
        # a signal handler: it only sets flags and schedules the drain on the event loop (taking the
        # scheduler's lock here could deadlock with the code it interrupted). Unlike uvicorn's own, it does not
        # re-raise the signal after the shutdown, so a drained server exits 0.
        if self.scheduler.draining or self.loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            self.force_exit = self.scheduler.draining
            self.should_exit = True
            return
        self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        self.scheduler.begin_drain(self.grace)
        self.beams.begin_drain(self.grace)
        self.loop.run_in_executor(None, self.exit_when_drained)

    def exit_when_drained(self) -> None:
        self.scheduler.drained.wait()
        self.beams.wait_drained()
        self.should_exit = True
