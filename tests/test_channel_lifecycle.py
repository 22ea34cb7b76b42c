"""Objects after close raise dtlskit errors (never a raw OSError); unclosed servers and
accepted channels warn and close; handler channels are not collected under their handler.

Every server runs on loopback, every wait is bounded, and every process a test starts runs in a
session of its own and is ended through its own process group.
"""

import asyncio
import errno
import gc
import warnings

import pytest

import dtlskit
from dtlskit import asyncio as aio
from tests.helpers import WAIT, aecho, run

# -- 4. asyncio objects after close: no raw OSError ---------------------------------------------


def test_asyncio_server_and_listener_after_close(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            addresses = server.addresses
            async with aio.connect("127.0.0.1", addresses[0][1], config=client_config) as ch:
                await ch.send(b"x")
                await asyncio.wait_for(ch.recv(), WAIT)
        assert server.addresses == addresses
        assert "closed" in repr(server) and str(addresses[0][1]) in repr(server)
        for call in (ch.getsockname, ch.fileno, ch.get_ttl, ch.error):
            with pytest.raises(dtlskit.TransportError, match="closed") as info:
                call()
            assert info.value.errno == errno.EBADF
        async with aio.listen("127.0.0.1", 0, config=server_config) as listener:
            assert listener.getsockname() == listener.addresses[0]
        for call in (listener.getsockname, listener.get_recv_buffer_size, listener.fileno):
            with pytest.raises(dtlskit.TransportError, match="closed"):
                call()
        with pytest.raises(dtlskit.TransportError, match="closed"):
            listener.set_ttl(5)

    run(main())


def test_asyncio_server_collected_unclosed_warns(
    server_config: dtlskit.DTLSConfiguration,
) -> None:
    """The warning survives sockets closed first (as when the loop's transports are collected
    before the server): repr() no longer reads addresses from the closed sockets."""

    async def main() -> str:
        server = await aio.serve(aecho, "127.0.0.1", 0, config=server_config)  # never closed
        for endpoint in server._endpoints:
            endpoint.abort()
        await asyncio.sleep(0)
        return repr(server)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = run(main())
        gc.collect()
    assert text.startswith("<Server 127.0.0.1:")
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith("unclosed <Server 127.0.0.1:") for m in messages), messages


# -- 6. an accepted channel dropped unclosed ----------------------------------------------------


def test_asyncio_dropped_accepted_channel_warns_and_closes(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.listen("127.0.0.1", 0, config=server_config) as listener:
            port = listener.addresses[0][1]
            async with aio.connect("127.0.0.1", port, config=client_config) as client:
                accepted = await listener.accept(timeout=WAIT)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    del accepted
                    gc.collect()
                messages = [str(w.message) for w in caught]
                assert any(m.startswith("unclosed <Channel 127.0.0.1:") for m in messages)
                with pytest.raises(dtlskit.ConnectionClosedByPeer):
                    await asyncio.wait_for(client.recv(), WAIT)
                assert listener.statistics().sessions == 0

    run(main())


def test_asyncio_handler_channel_is_not_collected(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    received = asyncio.Event()
    collected = asyncio.Event()

    async def slow_echo(channel: aio.Channel) -> None:
        message = await channel.recv()
        received.set()
        await collected.wait()  # the test collects garbage meanwhile
        await channel.send(message)

    async def main() -> None:
        async with aio.serve(slow_echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with aio.connect("127.0.0.1", port, config=client_config) as client:
                await client.send(b"hold on")
                await asyncio.wait_for(received.wait(), WAIT)
                gc.collect()  # while the handler holds only its channel, waiting
                collected.set()
                assert await asyncio.wait_for(client.recv(), WAIT) == b"hold on"

    run(main())
