"""Reviewer B's reproducers for the QUIC branch (B-Q1, B-Q2), kept as tests."""

from __future__ import annotations

import asyncio
import gc
import socket
import time

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

import dtlskit
import dtlskit.quic as quic
from dtlskit.quic._engine import source_key


def run(coro, bound=60.0):
    return asyncio.run(asyncio.wait_for(coro, bound))


async def echo(channel):
    async for message in channel:
        await channel.send(message)


def test_cancelled_recv_does_not_pin_a_future_each(quic_server_config, quic_client_config):
    """B-Q1: a cancelled recv() (a polling loop of wait_for) leaves no waiter behind."""

    async def quiet(channel):
        await channel.wait_closed()

    async def main():
        async with quic.serve(quiet, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                for _ in range(2000):
                    task = asyncio.ensure_future(channel.recv())
                    await asyncio.sleep(0)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                for _ in range(200):
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(channel.accept_stream(), 0)
                gc.collect()
                assert channel._waiters == []

    run(main())


def attack_initials(port: int, count: int, source: str = "127.0.0.1") -> socket.socket:
    """``count`` client Initials from one socket that never says anything more."""
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind((source, 0))
    for _ in range(count):
        conn = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=["hq-interop"])
        )
        conn.connect(("127.0.0.1", port), now=time.monotonic())
        for data, _ in conn.datagrams_to_send(now=time.monotonic()):
            attacker.sendto(data, ("127.0.0.1", port))
    return attacker


def test_one_source_cannot_hold_every_half_open_slot(quic_server_config, quic_client_config):
    """B-Q2 (RELIABILITY rule 16): one source fills the whole half-open pool; a client from
    another address still gets in, by evicting the most-represented source's oldest."""
    slots = 16
    config = quic_server_config.replace(limits=dtlskit.Limits(max_half_open=slots))

    async def main():
        async with quic.serve(echo, "127.0.0.1", 0, config=config) as srv:
            port = srv.addresses[0][1]
            attacker = attack_initials(port, slots)
            try:
                for _ in range(500):  # until the server has taken every attacking Initial
                    if srv._endpoint.engine._half_open_by_source.get("127.0.0.1", {}).__len__(
                    ) == slots:
                        break
                    await asyncio.sleep(0.01)
                honest = quic_client_config.replace(handshake_timeout=10.0)
                async with quic.connect(
                    "127.0.0.1", port, config=honest, local_address=("127.0.0.2", 0)
                ) as channel:
                    await channel.send(b"let me in")
                    assert await channel.recv() == b"let me in"
                drops = srv.statistics().drops
                assert drops["half_open_evicted"] >= 1
                assert drops["max_half_open"] == 0
            finally:
                attacker.close()

    run(main())


def test_per_source_half_open_cap(quic_server_config, quic_client_config):
    config = quic_server_config.replace(limits=dtlskit.Limits(max_half_open_per_address=4))

    async def main():
        async with quic.serve(echo, "127.0.0.1", 0, config=config) as srv:
            port = srv.addresses[0][1]
            attacker = attack_initials(port, 10)
            try:
                for _ in range(500):
                    if srv.statistics().drops["max_half_open_per_address"] >= 6:
                        break
                    await asyncio.sleep(0.01)
                assert srv.statistics().drops["max_half_open_per_address"] == 6
                async with quic.connect(
                    "127.0.0.1", port, config=quic_client_config, local_address=("127.0.0.3", 0)
                ) as channel:
                    await channel.send(b"in")
                    assert await channel.recv() == b"in"
            finally:
                attacker.close()

    run(main())


def test_source_keys():
    assert source_key(("127.0.0.1", 1)) == ("127.0.0.1", False)
    assert source_key(("::ffff:10.0.0.1", 1, 0, 0)) == ("10.0.0.1", False)
    assert source_key(("2001:db8:1:2:3:4:5:6", 1, 0, 0)) == ("2001:db8:1:2::/64", True)


def test_sync_server_io_thread_survives_a_handler_that_cannot_start(
    quic_server_config, quic_client_config, monkeypatch
):
    """B-Q3: a handler thread that cannot start (a threads limit) fails that connection only;
    the I/O thread goes on serving the others, and close() works."""
    import threading

    from dtlskit.sync import quic as squic

    def echo_sync(channel):
        for message in channel:
            channel.send(message)

    real = threading.Thread
    started = []

    class Limited(real):  # fault injection at the thread start only
        def start(self):
            if self.name == "dtlskit-quic-handler":
                started.append(1)
                if len(started) == 2:
                    raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(squic.threading, "Thread", Limited)
    with squic.serve(echo_sync, "127.0.0.1", 0, config=quic_server_config) as server:
        port = server.addresses[0][1]
        with squic.connect("127.0.0.1", port, config=quic_client_config, timeout=20) as first:
            first.send(b"one")
            assert first.recv(timeout=20) == b"one"
            with (
                pytest.raises(dtlskit.ConnectionLost, match="server overloaded"),
                squic.connect("127.0.0.1", port, config=quic_client_config, timeout=20) as second,
            ):
                second.send(b"two")
                second.recv(timeout=20)
            first.send(b"still served")
            assert first.recv(timeout=20) == b"still served"
            with squic.connect("127.0.0.1", port, config=quic_client_config, timeout=20) as third:
                third.send(b"three")
                assert third.recv(timeout=20) == b"three"
        assert server.statistics().drops["handler_thread_unavailable"] == 1
