"""ICMP errors after the handshake (port unreachable, others) end a session with
`ConnectionLost` naming the cause, in both flavours; socket errors map by engine state.

Every server runs on loopback, every wait is bounded, and every process a test starts runs in a
session of its own and is ended through its own process group.
"""

import asyncio
import errno
import select
import socket
import threading
import time

import pytest

import dtlskit
from dtlskit import asyncio as aio
from dtlskit import sync
from tests.helpers import WAIT, aecho, run, secho

# -- 3. ICMP errors after the handshake ---------------------------------------------------------


class Relay:
    """A UDP relay between one client and a server on loopback. :meth:`vanish` closes it without
    a word, as a crashed peer would: the client's next datagram draws ICMP port unreachable."""

    def __init__(self, server_port: int) -> None:
        self._server = ("127.0.0.1", server_port)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            try:
                data, address = self._sock.recvfrom(65536)
                if address == self._server:
                    if client is not None:
                        self._sock.sendto(data, client)
                else:
                    client = address
                    self._sock.sendto(data, self._server)
            except OSError:
                continue

    def vanish(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self._sock.close()


def test_asyncio_peer_vanishing_after_the_handshake_is_connection_lost(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            relay = Relay(server.addresses[0][1])
            try:
                async with aio.connect("127.0.0.1", relay.port, config=client_config) as channel:
                    await channel.send(b"x")
                    assert await asyncio.wait_for(channel.recv(), WAIT) == b"x"
                    relay.vanish()
                    with pytest.raises(dtlskit.ConnectionLost, match="port unreachable"):
                        await channel.send(b"anyone there?")
                        await asyncio.wait_for(channel.recv(), WAIT)
                    with pytest.raises(dtlskit.ConnectionLost):
                        await channel.send(b"again")
                    with pytest.raises(dtlskit.ConnectionLost):
                        async for _ in channel:
                            pass
            finally:
                relay.vanish()

    run(main())


def test_sync_peer_vanishing_after_the_handshake_is_connection_lost(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    with sync.serve(secho, "127.0.0.1", 0, config=server_config) as server:
        relay = Relay(server.addresses[0][1])
        try:
            with sync.connect("127.0.0.1", relay.port, config=client_config, timeout=WAIT) as ch:
                ch.send(b"x")
                assert ch.recv(timeout=WAIT) == b"x"
                relay.vanish()
                with pytest.raises(dtlskit.ConnectionLost, match="port unreachable"):
                    ch.send(b"anyone there?")
                    ch.recv(timeout=WAIT)
                with pytest.raises(dtlskit.ConnectionLost):
                    ch.send(b"again")
        finally:
            relay.vanish()


UNREACHABLE = OSError(errno.EHOSTUNREACH, "No route to host")


def test_asyncio_other_icmp_error_after_the_handshake_is_connection_lost(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with aio.connect("127.0.0.1", port, config=client_config) as channel:
                driver = channel._endpoint  # as its read of the socket reports it
                driver._socket_failed(UNREACHABLE)
                driver.flush()
                with pytest.raises(dtlskit.ConnectionLost, match="No route to host"):
                    await asyncio.wait_for(channel.recv(), WAIT)

    run(main())


def test_sync_other_icmp_error_after_the_handshake_is_connection_lost(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    with (
        sync.serve(secho, "127.0.0.1", 0, config=server_config) as server,
        sync.connect("127.0.0.1", server.addresses[0][1], config=client_config) as channel,
    ):
        io = channel._io
        with io.lock:
            io._socket_failed_locked(UNREACHABLE)  # type: ignore[attr-defined]
            io.pump_locked()
        with pytest.raises(dtlskit.ConnectionLost, match="No route to host"):
            channel.recv(timeout=WAIT)


def test_socket_errors_map_by_engine_state(client_config: dtlskit.DTLSConfiguration) -> None:
    from dtlskit._frontend.channel_base import client_socket_error
    from dtlskit.core.connection import DTLSConnection, State

    peer = ("127.0.0.1", 9)
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    for exc, expected in ((refused, dtlskit.ConnectionRefused), (UNREACHABLE, OSError)):
        engine = DTLSConnection(client_config, server=False, peer_address=peer)
        engine.connect(time.monotonic())
        assert engine.state is State.HANDSHAKING
        error = client_socket_error(engine, exc, peer)
        assert isinstance(error, expected) and isinstance(error, dtlskit.DTLSError)
        assert not isinstance(error, dtlskit.ConnectionClosed)
        assert engine.error is error  # the handshake fails at once
        assert error.__cause__ is exc
    engine = DTLSConnection(client_config, server=False, peer_address=peer)
    too_large = OSError(errno.EMSGSIZE, "Message too long")
    error = client_socket_error(engine, too_large, peer)
    assert isinstance(error, dtlskit.TransportError) and "mtu" in str(error)
    assert engine.error is None  # a datagram too large ends nothing
