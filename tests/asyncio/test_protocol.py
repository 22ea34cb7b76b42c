"""The callback handler style of the asyncio flavour: a SessionProtocol per peer, called on
the loop, with no task per peer or per message."""

from __future__ import annotations

import asyncio
import sys

import pytest

import dtlskit
from dtlskit.asyncio import connect, serve
from tests.asyncio.test_route import WAIT, eventually, run


class Echo(dtlskit.SessionProtocol):
    made: list[Echo] = []
    lost: list[BaseException | None] = []

    def connection_made(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.channel = channel
        Echo.made.append(self)

    def message_received(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("a handler bug")
        self.channel.send_nowait(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        Echo.lost.append(exc)


def test_protocol_echo_without_a_task_per_peer(server_config, client_config):
    Echo.made, Echo.lost = [], []

    async def main() -> None:
        async with serve(Echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            clients = [await connect("127.0.0.1", port, config=client_config) for _ in range(4)]
            tasks_before = len(asyncio.all_tasks())
            for index, client in enumerate(clients):
                await client.send(b"hello %d" % index)
                assert await asyncio.wait_for(client.recv(), WAIT) == b"hello %d" % index
            assert len(asyncio.all_tasks()) == tasks_before
            assert not server._tasks  # no handler task per peer
            await clients[1].send(b"boom")
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                await asyncio.wait_for(clients[1].recv(), WAIT)
            await clients[2].send(b"still served")
            assert await asyncio.wait_for(clients[2].recv(), WAIT) == b"still served"
            clients[3].close()
            await eventually(lambda: len(Echo.lost) == 2)
            assert Echo.lost == [None, None]
            for client in clients:
                client.close()
        assert len(Echo.made) == 4

    run(main())


class ThreeThenClose(dtlskit.SessionProtocol):
    """Several replies per message, then (for b"last") a close: the replies collected while the
    batch was read must leave before the close_notify the close sends."""

    def connection_made(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.channel = channel

    def message_received(self, data: bytes) -> None:
        for index in range(3):
            self.channel.send_nowait(data + b"-%d" % index)
        if data == b"last":
            self.channel.close()


def test_protocol_replies_keep_their_order_before_a_close(server_config, client_config):
    async def main() -> None:
        async with serve(ThreeThenClose, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with await connect("127.0.0.1", port, config=client_config) as client:
                await client.send(b"first")
                for index in range(3):
                    assert await asyncio.wait_for(client.recv(), WAIT) == b"first-%d" % index
                await client.send(b"last")
                for index in range(3):
                    assert await asyncio.wait_for(client.recv(), WAIT) == b"last-%d" % index
                with pytest.raises(dtlskit.ConnectionClosedByPeer):
                    await asyncio.wait_for(client.recv(), WAIT)
            assert server.statistics().drops.get("send_failed", 0) == 0

    run(main())


class Burst(dtlskit.SessionProtocol):
    def connection_made(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.channel = channel

    def message_received(self, data: bytes) -> None:
        for index in range(int(data)):
            self.channel.send_nowait(b"%d" % index)


def test_client_reads_a_burst_in_batches_in_order(server_config, client_config):
    """The asyncio client reads its socket in batches (add_reader + recv_batch, recvmmsg with
    the accelerator), as the server does: a burst of replies larger than one batch arrives
    whole and in order, and once established a batch that only took the engine's fast path
    runs no transmit/drain/re-arm step (no flush from the read path)."""
    read_flushes: list[str] = []

    async def main() -> None:
        async with serve(Burst, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client:
                driver = client._endpoint
                flush = driver.flush

                def counting_flush():  # type: ignore[no-untyped-def]
                    caller = sys._getframe(1).f_code.co_name
                    if caller in ("on_readable", "datagram_received"):  # the read path
                        read_flushes.append(caller)
                    return flush()

                driver.flush = counting_flush
                await client.send(b"150")
                received = [await asyncio.wait_for(client.recv(), WAIT) for _ in range(150)]
                assert received == [b"%d" % index for index in range(150)]
                assert client.statistics().drops == {}
            assert server.statistics().drops == {}

    run(main())
    assert read_flushes == []


def test_handler_task_endings_are_logged_and_close_the_channel(
    server_config, client_config, caplog
):
    """The iterator style's task runs the handler's own coroutine: a handler that raises is
    logged with its traceback and its peer gets close_notify; one that ends with a
    ConnectionClosed is a DEBUG line; an object with an async ``__call__`` is a handler too;
    every other peer is still served."""

    class CallableHandler:
        async def __call__(self, channel) -> None:  # type: ignore[no-untyped-def]
            async for message in channel:
                if message == b"boom":
                    raise RuntimeError("a bug in a callable handler")
                await channel.send(message)
                if message == b"last":
                    await channel.recv()  # raises ConnectionClosedByPeer once the peer closes

    async def handler(channel) -> None:  # type: ignore[no-untyped-def]
        async for message in channel:
            if message == b"boom":
                raise RuntimeError("a bug in the handler")
            await channel.send(message)
            if message == b"last":
                await channel.recv()  # raises ConnectionClosedByPeer once the peer closes

    async def main(chosen) -> None:  # type: ignore[no-untyped-def]
        async with serve(chosen, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            first = await connect("127.0.0.1", port, config=client_config)
            second = await connect("127.0.0.1", port, config=client_config)
            await first.send(b"boom")
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                await asyncio.wait_for(first.recv(), WAIT)
            await second.send(b"last")
            assert await asyncio.wait_for(second.recv(), WAIT) == b"last"
            second.close()
            await eventually(lambda: not server._tasks)
            first.close()

    for chosen, text in ((handler, "a bug in the handler"), (CallableHandler(), "callable")):
        caplog.clear()
        with caplog.at_level("DEBUG", logger="dtlskit.server"):
            run(main(chosen))
        failed = [r for r in caplog.records if r.getMessage().startswith("handler failed for")]
        assert len(failed) == 1 and failed[0].levelname == "ERROR"
        assert failed[0].exc_info is not None and text in str(failed[0].exc_info[1])
        ended = [r for r in caplog.records if "ended in its handler" in r.getMessage()]
        assert len(ended) == 1 and ended[0].levelname == "DEBUG"
        assert "closed the connection" in ended[0].getMessage()
