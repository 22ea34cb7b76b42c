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


def test_a_bug_met_for_one_datagram_is_counted_and_others_are_served(
    server_config, client_config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """The asyncio twin of tests/sync/test_server.py's: an exception escaping the engine for one
    datagram (injected into our own demultiplexer) is logged and counted per datagram, and the
    rest of the read batch and every other peer are served."""
    import logging
    import socket

    from dtlskit.core import ServerEngine

    bad_ports: set[int] = set()
    real_receive = ServerEngine._receive_other  # (a datagram off the fast path)

    def receive(self: ServerEngine, data: bytes, address: tuple, conn: object, now: float) -> None:  # type: ignore[type-arg]
        if address[1] in bad_ports:
            raise RuntimeError("injected engine bug")
        real_receive(self, data, address, conn, now)

    monkeypatch.setattr(ServerEngine, "_receive_other", receive)
    caplog.set_level(logging.ERROR, logger="dtlskit")

    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            port = server.sockets[0].getsockname()[1]
            async with aio.connect("127.0.0.1", port, config=client_config) as channel:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trigger:
                    trigger.bind(("127.0.0.1", 0))
                    bad_ports.add(trigger.getsockname()[1])
                    for _ in range(3):
                        trigger.sendto(b"\x16\xfe\xfd" + bytes(20), ("127.0.0.1", port))
                    while server.statistics().drops.get("internal_error", 0) < 3:
                        await asyncio.sleep(0.01)
                    await channel.send(b"still served")
                    assert await channel.recv() == b"still served"
            async with aio.connect("127.0.0.1", port, config=client_config) as again:
                await again.send(b"new peer")
                assert await again.recv() == b"new peer"

    run(asyncio.wait_for(main(), WAIT * 3))
    assert any("internal error handling a datagram" in r.getMessage() for r in caplog.records)
