"""Adversarial review of the datagram route (asyncio flavour): what a peer makes the server
hold goes back to the server's byte budget however the session ends."""

from __future__ import annotations

import gc
import warnings

from dtlskit.asyncio import connect, listen
from dtlskit.core.inbox import MESSAGE_OVERHEAD
from tests.asyncio.test_route import WAIT, engines, eventually, run
from tests.sync.test_route import LIMITS


def test_an_ended_channel_dropped_unclosed_gives_its_bytes_back(server_config, client_config):
    async def main() -> None:
        config = server_config.replace(limits=LIMITS)
        server = await listen("127.0.0.1", 0, config=config)
        try:
            client = await connect("127.0.0.1", server.addresses[0][1], config=client_config)
            for _ in range(3):
                await client.send(b"x" * 1_000)
            client.close()
            channel = await server.accept(timeout=WAIT)
            inbox = channel._inbox
            await eventually(lambda: inbox.ended)
            budget = engines(server)[0].budget
            assert budget.held == 3 * (1_000 + MESSAGE_OVERHEAD)  # all three queued
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                del channel
                gc.collect()
            await eventually(lambda: budget.held == 0)
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_a_channel_closed_with_unread_messages_gives_their_bytes_back(
    server_config, client_config
):
    async def main() -> None:
        config = server_config.replace(limits=LIMITS)
        server = await listen("127.0.0.1", 0, config=config)
        client = None
        try:
            client = await connect("127.0.0.1", server.addresses[0][1], config=client_config)
            channel = await server.accept(timeout=WAIT)
            for _ in range(3):
                await client.send(b"x" * 1_000)
            budget = engines(server)[0].budget
            await eventually(lambda: budget.held == 3 * (1_000 + MESSAGE_OVERHEAD))
            channel.close()
            assert await channel.recv() == b"x" * 1_000  # still readable after close
            del channel
            gc.collect()
            await eventually(lambda: budget.held == 0)
        finally:
            if client is not None:
                client.close()
            server.close()
            await server.wait_closed()

    run(main())
