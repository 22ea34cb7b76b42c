"""Bad input on real TCP connections to our servers (both flavours): garbage, a client that
stalls mid-handshake, a peer that closes mid-record, a record over the limit, a framed
message over the limit. Each gets a clear error in the server's handler or statistics, and
the server keeps serving another client meanwhile."""

from __future__ import annotations

import asyncio
import queue
import socket
import time

import pytest

import dtlskit
import dtlskit.tls
from dtlskit.core import events as ev
from dtlskit.core.tls import TLSConnection
from dtlskit.sync import tls

WAIT = 10.0


def raw_tls_client(
    port: int, config: dtlskit.DTLSConfiguration
) -> tuple[socket.socket, TLSConnection]:
    """Our engine over a plain socket, so a test can send exactly the bytes it wants."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    engine = TLSConnection(config, server=False)
    engine.connect(time.monotonic())
    while not engine.handshake_completed:
        sock.sendall(engine.data_to_send())
        data = sock.recv(65536)
        assert data, "the server closed during the handshake"
        engine.receive_data(data, time.monotonic())
    sock.sendall(engine.data_to_send())
    return sock, engine


BAD = ["garbage", "stall", "mid-record", "oversized record", "oversized frame"]


def misbehave(case: str, port: int, client_config: dtlskit.DTLSConfiguration) -> socket.socket:
    if case in ("garbage", "stall"):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        if case == "garbage":
            sock.sendall(b"\x16\x03\x01\x40\x00" + b"\xff" * 64)  # a mangled ClientHello
        else:
            sock.sendall(b"\x16\x03\x01\x00\x80")  # half a record header's worth, then nothing
        return sock
    sock, engine = raw_tls_client(port, client_config)  # stream: it forges frame headers
    if case == "mid-record":
        engine.send(b"y" * 5000)
        record = engine.data_to_send()
        sock.sendall(record[: len(record) // 2])
        sock.shutdown(socket.SHUT_WR)
    elif case == "oversized record":
        sock.sendall(b"\x17\x03\x03" + (2**14 + 2049).to_bytes(2, "big") + b"\0" * 200)
    else:
        engine.send((10**6).to_bytes(4, "big") + b"abc")  # announces 1 MB; the limit is 1 kB
        sock.sendall(engine.data_to_send())
    return sock


EXPECTED = {
    "garbage": dtlskit.HandshakeFailure,
    "stall": dtlskit.HandshakeTimeout,
    "mid-record": dtlskit.ConnectionLost,
    "oversized record": dtlskit.ConnectionLost,
    "oversized frame": dtlskit.ConnectionLost,
}


@pytest.mark.parametrize("case", BAD)
def test_sync_server(case: str, server_config, client_config) -> None:
    ends: queue.Queue[BaseException] = queue.Queue()
    framing = "length-prefixed" if case == "oversized frame" else "stream"

    def handler(channel: tls.Channel) -> None:
        try:
            for data in channel:
                channel.send(data)
        except dtlskit.DTLSError as exc:
            ends.put(exc)

    cfg = server_config.replace(handshake_timeout=1.0)
    with tls.serve(
        handler, "127.0.0.1", 0, config=cfg, framing=framing, max_message_size=1024
    ) as server:
        bad = misbehave(case, server.port, client_config)
        # Meanwhile another client is served.
        with tls.connect("127.0.0.1", server.port, config=client_config, framing=framing) as good:
            good.send(b"served")
            assert good.recv(timeout=WAIT) == b"served"
        if case in ("garbage", "stall"):
            assert bad.recv(100)[:1] in (b"", b"\x15")  # an alert or the close, in time
            deadline = time.monotonic() + WAIT
            while server.statistics().handshakes_failed == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.statistics().handshakes_failed == 1
            if case == "stall":
                assert server.statistics().refused["handshake_timeout"] == 1
        else:
            error = ends.get(timeout=WAIT)
            assert isinstance(error, EXPECTED[case]), error
            assert ("truncated" if case == "mid-record" else "") in str(error)
        bad.close()


@pytest.mark.parametrize("case", BAD)
def test_asyncio_server(case: str, server_config, client_config) -> None:
    framing = "length-prefixed" if case == "oversized frame" else "stream"

    async def main() -> None:
        ends: asyncio.Queue[BaseException] = asyncio.Queue()

        async def handler(channel: dtlskit.tls.Channel) -> None:
            try:
                async for data in channel:
                    await channel.send(data)
            except dtlskit.DTLSError as exc:
                ends.put_nowait(exc)

        cfg = server_config.replace(handshake_timeout=1.0)
        async with dtlskit.tls.serve(
            handler, "127.0.0.1", 0, config=cfg, framing=framing, max_message_size=1024
        ) as server:
            loop = asyncio.get_running_loop()
            bad = await loop.run_in_executor(None, misbehave, case, server.port, client_config)
            async with dtlskit.tls.connect(
                "127.0.0.1", server.port, config=client_config, framing=framing
            ) as good:
                await good.send(b"served")
                assert await good.recv() == b"served"
            if case in ("garbage", "stall"):
                bad.setblocking(False)
                answer = await loop.sock_recv(bad, 100)
                assert answer[:1] in (b"", b"\x15")
                while server.statistics().handshakes_failed == 0:
                    await asyncio.sleep(0.01)
                if case == "stall":
                    assert server.statistics().refused["handshake_timeout"] == 1
            else:
                error = await ends.get()
                assert isinstance(error, EXPECTED[case]), error
                assert ("truncated" if case == "mid-record" else "") in str(error)
            bad.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_engine_event_names_are_shared() -> None:
    """The TLS engine speaks the DTLS engine's events (one vocabulary for the front ends)."""
    assert issubclass(dtlskit.tls.SessionTicketReceived, ev.Event)


def test_partial_frames_are_bounded_across_connections(server_config, client_config) -> None:
    """Partly sent framed messages of all connections are charged to the server's
    ``limits.max_buffered_bytes``: the connection that would pass it ends, named; the
    others keep going."""
    limits = dtlskit.Limits(max_buffered_bytes=100_000)

    async def main() -> None:
        ends: asyncio.Queue[BaseException] = asyncio.Queue()

        async def handler(channel: dtlskit.tls.Channel) -> None:
            try:
                async for data in channel:
                    await channel.send(data)
            except dtlskit.DTLSError as exc:
                ends.put_nowait(exc)

        async with dtlskit.tls.serve(
            handler,
            "127.0.0.1",
            0,
            config=server_config.replace(limits=limits),
            framing="length-prefixed",
            max_message_size=80_000,
        ) as server:
            loop = asyncio.get_running_loop()

            def partial() -> socket.socket:
                sock, engine = raw_tls_client(server.port, client_config)
                engine.send((80_000).to_bytes(4, "big") + b"p" * 60_000)  # 60 of 80 kB
                sock.sendall(engine.data_to_send())
                return sock

            first = await loop.run_in_executor(None, partial)
            second = await loop.run_in_executor(None, partial)  # 120 kB > 100 kB: refused
            error = await ends.get()
            assert isinstance(error, dtlskit.ConnectionLost), error
            assert "max_buffered_bytes" in str(error)
            async with dtlskit.tls.connect(
                "127.0.0.1", server.port, config=client_config, framing="length-prefixed"
            ) as good:
                await good.send(b"still served")
                assert await good.recv() == b"still served"
            assert server._budget.held == 60_004  # the first one's partial message only
            first.close()
            second.close()
            while server.statistics().connections:
                await asyncio.sleep(0.01)
            assert server._budget.held == 0

    asyncio.run(asyncio.wait_for(main(), 30))


def test_unread_data_stops_reading_and_is_bounded(server_config, client_config) -> None:
    """A handler that does not read: its connection stops reading its socket past
    ``max_queued_bytes`` (TCP's flow control holds the rest back), and the server's total
    stays within its budget."""
    limits = dtlskit.Limits(max_queued_bytes=50_000, max_buffered_bytes=200_000)

    async def main() -> None:
        release = asyncio.Event()

        async def lazy(channel: dtlskit.tls.Channel) -> None:
            await release.wait()
            total = 0
            while total < 2_000_000:
                total += len(await channel.recv())

        async with (
            dtlskit.tls.serve(
                lazy, "127.0.0.1", 0, config=server_config.replace(limits=limits)
            ) as server,
            dtlskit.tls.connect("127.0.0.1", server.port, config=client_config) as channel,
        ):
            chunk = b"z" * 100_000
            sent = 0
            while sent < 2_000_000:  # far more than the limits
                channel.send_nowait(chunk)
                sent += len(chunk)
                await asyncio.sleep(0)
                # one connection's limit, plus at most one socket read and one record
                assert server._budget.held <= 50_000 + 65_536 + 16_384 + 64 * 8
            release.set()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_sync_partial_frames_are_bounded_across_connections(server_config, client_config):
    ends: queue.Queue[BaseException] = queue.Queue()

    def handler(channel: tls.Channel) -> None:
        try:
            for data in channel:
                channel.send(data)
        except dtlskit.DTLSError as exc:
            ends.put(exc)

    limits = dtlskit.Limits(max_buffered_bytes=100_000)
    with tls.serve(
        handler,
        "127.0.0.1",
        0,
        config=server_config.replace(limits=limits),
        framing="length-prefixed",
        max_message_size=80_000,
    ) as server:
        socks = []
        for _ in range(2):  # 60 kB of an 80 kB message each: the second passes 100 kB
            sock, engine = raw_tls_client(server.port, client_config)
            engine.send((80_000).to_bytes(4, "big") + b"p" * 60_000)
            sock.sendall(engine.data_to_send())
            socks.append(sock)
        error = ends.get(timeout=WAIT)
        assert isinstance(error, dtlskit.ConnectionLost) and "max_buffered_bytes" in str(error)
        with tls.connect(
            "127.0.0.1", server.port, config=client_config, framing="length-prefixed"
        ) as good:
            good.send(b"still served")
            assert good.recv(timeout=WAIT) == b"still served"
        assert server._budget.held == 60_004
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + WAIT
        while server._budget.held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server._budget.held == 0
