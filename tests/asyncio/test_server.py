"""``dtlskit.asyncio.server``: ``serve()`` with a handler, ``listen()`` and ``accept()``,
statistics, and closing (``close_timeout`` bounds the wait for handlers, then they are
cancelled). Real OpenSSL, real loopback sockets."""

from __future__ import annotations

import asyncio

import pytest

import dtlskit
from dtlskit import asyncio as aio
from tests.helpers import WAIT, aecho, run


def test_serve_runs_the_handler_per_peer_and_counts_handshakes(server_config, client_config):
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            assert server.is_serving()
            port = server.addresses[0][1]
            for index in range(3):
                async with aio.connect("127.0.0.1", port, config=client_config) as channel:
                    await channel.send(b"n%d" % index)
                    assert await channel.recv() == b"n%d" % index
            assert server.statistics().handshakes_completed == 3
        assert not server.is_serving()

    run(main())


def test_accept_waits_for_a_peer_and_stops_at_close(server_config, client_config):
    async def main() -> None:
        listener = await aio.listen("127.0.0.1", 0, config=server_config)
        with pytest.raises(dtlskit.DTLSTimeoutError):
            await listener.accept(timeout=0)
        port = listener.addresses[0][1]
        async with aio.connect("127.0.0.1", port, config=client_config) as channel:
            accepted = await listener.accept(timeout=WAIT)
            await channel.send(b"to the listener")
            assert await accepted.recv() == b"to the listener"
            accepted.close()
        listener.close()
        with pytest.raises(dtlskit.ConnectionClosedLocally):
            await listener.accept(timeout=WAIT)
        await listener.wait_closed()

    run(main())


def test_close_cancels_a_handler_that_outlives_close_timeout(server_config, client_config):
    outcome: list[str] = []

    async def main() -> None:
        started = asyncio.Event()

        async def stubborn(channel: aio.Channel) -> None:
            started.set()
            try:
                await asyncio.Event().wait()  # never set: only a cancel ends it
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        server = await aio.serve(stubborn, "127.0.0.1", 0, config=server_config)
        server.close_timeout = 0.1
        port = server.addresses[0][1]
        async with aio.connect("127.0.0.1", port, config=client_config):
            await asyncio.wait_for(started.wait(), WAIT)
            server.close()
            await server.wait_closed()
        assert outcome == ["cancelled"]

    run(main())
