"""``dtlskit.asyncio.client``: ``connect()`` awaited or used as a context manager, its
deadline, ICMP refusals, and the local address option. Real OpenSSL, real loopback sockets."""

from __future__ import annotations

import socket

import pytest

import dtlskit
from dtlskit import asyncio as aio
from tests.helpers import WAIT, aecho, run


def test_connect_awaited_and_as_a_context_manager(server_config, client_config) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            channel = await aio.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
            try:
                await channel.send(b"awaited")
                assert await channel.recv() == b"awaited"
                assert channel.getpeername() == ("127.0.0.1", port)
                assert channel.version == "DTLSv1.2" and not channel.session_reused
            finally:
                channel.close()
                await channel.wait_closed()
            async with aio.connect("127.0.0.1", port, config=client_config) as managed:
                await managed.send(b"managed")
                assert await managed.recv() == b"managed"
            assert managed.closed

    run(main())


def test_a_silent_port_ends_in_a_handshake_timeout(client_config) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]

        async def main() -> None:
            with pytest.raises(dtlskit.HandshakeTimeout) as info:
                await aio.connect("127.0.0.1", port, config=client_config, timeout=0.5)
            assert isinstance(info.value, dtlskit.DTLSTimeoutError)

        run(main())


def test_a_closed_port_is_refused_at_once(client_config) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed below: nothing listens

    async def main() -> None:
        with pytest.raises(dtlskit.ConnectionRefused):
            await aio.connect("127.0.0.1", port, config=client_config, timeout=WAIT)

    run(main())


def test_local_addr_is_the_source_of_the_session(server_config, client_config) -> None:
    async def main() -> None:
        async with aio.listen("127.0.0.1", 0, config=server_config) as listener:
            port = listener.addresses[0][1]
            async with aio.connect(
                "127.0.0.1", port, config=client_config, local_addr=("127.0.0.2", 0)
            ) as channel:
                accepted = await listener.accept(timeout=WAIT)
                assert accepted.getpeername() == channel.getsockname()
                assert channel.getsockname()[0] == "127.0.0.2"
                accepted.close()

    run(main())
