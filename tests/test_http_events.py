"""How a stream's events leave the service: a stream pauses between events but not after its completion ends
(its last characters are sent once they exist), and the listening socket is TCP by name, so that asyncio turns
Nagle's algorithm off on every connection (with it on, an event waits for the ACK of the one before)."""

from __future__ import annotations

import asyncio
import socket
import threading

from serve.http.__main__ import bind
from serve.http.completion import Notifier


def test_a_pause_ends_when_the_completion_ends():
    async def main() -> tuple[bool, bool]:
        notifier = Notifier(asyncio.get_running_loop())
        threading.Timer(0.05, notifier.end).start()  # the scheduler thread, when the text is whole
        pausing = asyncio.ensure_future(notifier.pause(600))
        done, _ = await asyncio.wait({pausing}, timeout=30)
        ended_early = pausing in done
        await asyncio.wait_for(notifier.pause(600), timeout=30)  # once ended, a pause returns at once
        await asyncio.wait_for(notifier.wait(), timeout=30)  # and the end woke the reader
        return ended_early, notifier.sleeper is None

    ended_early, cleared = asyncio.run(main())
    assert ended_early and cleared


def test_a_pause_lasts_its_seconds_without_an_end():
    async def main() -> bool:
        notifier = Notifier(asyncio.get_running_loop())
        notifier.wake()  # characters come, the completion goes on
        pausing = asyncio.ensure_future(notifier.pause(600))
        done, _ = await asyncio.wait({pausing}, timeout=0.2)
        pausing.cancel()
        return pausing in done

    assert asyncio.run(main()) is False


def test_connections_to_the_service_do_not_wait_for_acks():
    sock = bind("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP

    async def main() -> int:
        seen: list[int] = []

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connection = writer.get_extra_info("socket")
            seen.append(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return seen[0]

    assert asyncio.run(main()) == 1
