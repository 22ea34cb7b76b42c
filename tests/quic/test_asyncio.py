"""dtlskit.quic (asyncio) on real sockets on loopback, against itself."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import dtlskit
import dtlskit.quic as quic
from dtlskit.quic import StreamError

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], bound: float = 30.0) -> T:
    """Run with an upper bound so that a hang fails instead of blocking the suite."""
    return asyncio.run(asyncio.wait_for(coro, bound))


async def echo_messages(channel: quic.QuicChannel) -> None:
    async for message in channel:
        await channel.send(message)


async def echo_streams(channel: quic.QuicChannel) -> None:
    """Seed 002's server: each stream read to FIN, echoed on the same stream with FIN."""
    while True:
        stream = await channel.accept_stream()
        try:
            await stream.write(await stream.read(), end=True)
        except StreamError:
            continue  # that stream was refused or reset; the connection goes on


def test_messages_are_streams_both_ways(quic_server_config, quic_client_config):
    async def main() -> None:
        async with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                assert channel.alpn_protocol == "hq-interop"
                for size in (1, 1000, 100_000):
                    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
                    await channel.send(payload)
                    assert await channel.recv() == payload
                stats = channel.statistics()
                assert stats.messages_sent == 3 and stats.messages_received == 3
                assert stats.buffered_bytes == 0

    run(main())


def test_request_answer_on_the_same_stream(quic_server_config, quic_client_config):
    async def main() -> None:
        async with quic.serve(echo_streams, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("localhost", port, config=quic_client_config) as channel:
                answers = await asyncio.gather(
                    *(channel.request(f"message {i}".encode()) for i in range(10))
                )
                assert answers == [f"message {i}".encode() for i in range(10)]
                # send() + recv() also works against a same-stream echo: the answer on the
                # stream send() opened is the next message
                await channel.send(b"via send")
                assert await channel.recv() == b"via send"

    run(main())


def test_streams_directly(quic_server_config, quic_client_config):
    async def server(channel: quic.QuicChannel) -> None:
        stream = await channel.accept_stream()
        await stream.write(b"part one, ")
        data = await stream.read()
        await stream.write(data.upper(), end=True)

    async def main() -> None:
        async with quic.serve(server, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                stream = channel.open_stream()
                await stream.write(b"abc")
                await stream.write(b"def", end=True)
                assert await stream.read() == b"part one, ABCDEF"

    run(main())


def test_datagrams_when_asked(quic_server_config, quic_client_config):
    async def server(channel: quic.QuicChannel) -> None:
        while True:
            await channel.send_datagram(await channel.recv_datagram())

    async def main() -> None:
        async with quic.serve(
            server, "127.0.0.1", 0, config=quic_server_config, datagrams=True
        ) as srv:
            port = srv.addresses[0][1]
            async with quic.connect(
                "127.0.0.1", port, config=quic_client_config, datagrams=True
            ) as channel:
                await channel.send_datagram(b"unreliable")
                assert await channel.recv_datagram() == b"unreliable"
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as plain:
                with pytest.raises(dtlskit.UsageError, match="datagrams=True"):
                    await plain.send_datagram(b"x")

    run(main())


def test_alpn_mismatch_names_both_sides(quic_server_config, quic_client_config, caplog):
    caplog.set_level(logging.INFO, logger="dtlskit.quic")

    async def main() -> None:
        async with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            config = quic_client_config.replace(alpn_protocols=["h3", "smtp"])
            with pytest.raises(dtlskit.HandshakeFailure) as info:
                await quic.connect("127.0.0.1", port, config=config)
            assert info.value.alert == "no_application_protocol"
            message = str(info.value)
            assert "['h3', 'smtp']" in message
            assert "['http/1.0', 'hq-interop']" in message
            # the server names both sides too
            for _ in range(200):  # the server logs it when its side of the handshake ends
                if any("client offered ['h3', 'smtp']" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            logged = [r.getMessage() for r in caplog.records]
            assert any(
                "client offered ['h3', 'smtp']" in m and "['http/1.0', 'hq-interop']" in m
                for m in logged
            ), logged
            # and it goes on serving
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                await channel.send(b"still here")
                assert await channel.recv() == b"still here"

    run(main())


def test_handshake_timeout_against_a_silent_peer(quic_client_config):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    config = quic_client_config.replace(handshake_timeout=0.5)

    async def main() -> None:
        with pytest.raises(dtlskit.HandshakeTimeout, match=r"did not complete within 0\.5 s"):
            await quic.connect("127.0.0.1", port, config=config)

    try:
        run(main())
        assert silent.recv(2048)  # the client did try
    finally:
        silent.close()


def test_peer_connection_close_carries_code_and_reason(quic_server_config, quic_client_config):
    async def server(channel: quic.QuicChannel) -> None:
        await channel.recv()
        channel.close(42, "go away")

    async def main() -> None:
        async with quic.serve(server, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                await channel.send(b"hello")
                with pytest.raises(dtlskit.ConnectionLost) as info:
                    await channel.recv()
                assert info.value.error_code == 42
                assert info.value.reason_phrase == "go away"
                assert "0x2a" in str(info.value) and "go away" in str(info.value)
                with pytest.raises(dtlskit.ConnectionLost):
                    await channel.send(b"again")

    run(main())


def test_clean_close_by_peer_ends_iteration(quic_server_config, quic_client_config):
    async def server(channel: quic.QuicChannel) -> None:
        await channel.send(b"one")
        await channel.send(b"two")
        await asyncio.sleep(0.2)  # let both streams be acknowledged before closing

    async def main() -> None:
        async with quic.serve(server, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                received = [message async for message in channel]
                assert sorted(received) == [b"one", b"two"]
                with pytest.raises(dtlskit.ConnectionClosedByPeer) as info:
                    await channel.recv()
                assert info.value.error_code == 0

    run(main())


def test_wrong_ca_is_a_verification_error(quic_server_config, other_pki):
    async def main() -> None:
        async with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            config = dtlskit.DTLSConfiguration.client(
                cafile=other_pki.ca_cert, server_hostname="localhost", alpn_protocols=["hq-interop"]
            )
            with pytest.raises(dtlskit.CertificateVerificationError) as info:
                await quic.connect("127.0.0.1", port, config=config)
            assert info.value.reason is dtlskit.VerificationReason.UNKNOWN_ISSUER
            wrong_name = config.replace(cafile=quic_server_config.certfile, server_hostname="a.b")
            with pytest.raises(dtlskit.CertificateVerificationError) as info:
                await quic.connect("127.0.0.1", port, config=wrong_name)
            assert info.value.reason is dtlskit.VerificationReason.HOSTNAME_MISMATCH

    run(main())


def test_oversized_stream_is_refused_and_the_connection_goes_on(
    quic_server_config, quic_client_config
):
    async def main() -> None:
        async with quic.serve(
            echo_streams, "127.0.0.1", 0, config=quic_server_config, max_stream_bytes=4096
        ) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                with pytest.raises(StreamError) as info:
                    await channel.request(b"x" * 100_000)
                assert info.value.error_code is not None
                assert await channel.request(b"small") == b"small"
                assert srv.statistics().drops["stream_too_large"] == 1

    run(main())


def test_garbage_datagrams_are_dropped_and_counted(quic_server_config, quic_client_config):
    async def main() -> None:
        async with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                junk.setblocking(False)
                try:
                    junk.sendto(b"", ("127.0.0.1", port))
                    junk.sendto(b"\xff" * 5, ("127.0.0.1", port))  # truncated long header
                    junk.sendto(b"\x40" + b"\x00" * 40, ("127.0.0.1", port))  # unknown CID
                    junk.sendto(b"\xc0\x00\x00\x00\x01" + b"\x08" * 60, ("127.0.0.1", port))
                    junk.sendto(b"\xc0\xff\x00\x00\x99" + b"\x04abcd\x04efgh" + bytes(1200),
                                ("127.0.0.1", port))  # unknown version: Version Negotiation
                    reply = await asyncio.get_running_loop().sock_recv(junk, 2048)
                    assert reply[1:5] == b"\x00\x00\x00\x00"  # a VN packet
                finally:
                    junk.close()
                await channel.send(b"unaffected")
                assert await channel.recv() == b"unaffected"
                drops = srv.statistics().drops
                assert drops["malformed_datagram"] >= 2
                assert drops["unknown_connection"] >= 1
                assert drops["initial_too_small"] == 1
                assert drops["unsupported_version"] == 1

    run(main())


def test_vanished_peer_ends_with_connection_lost(quic_server_config, quic_client_config):
    ended: asyncio.Queue[BaseException] = asyncio.Queue()

    async def server(channel: quic.QuicChannel) -> None:
        try:
            await channel.recv()
            await channel.recv()
        except dtlskit.DTLSError as exc:
            ended.put_nowait(exc)
            raise

    async def main() -> None:
        config = quic_server_config.replace(idle_timeout=1.0)
        async with quic.serve(server, "127.0.0.1", 0, config=config) as srv:
            port = srv.addresses[0][1]
            channel = await quic.connect("127.0.0.1", port, config=quic_client_config)
            await channel.send(b"one")
            # vanish: the socket goes away without a CONNECTION_CLOSE
            channel._endpoint.transport.abort()  # type: ignore[union-attr]
            error = await ended.get()
            assert isinstance(error, dtlskit.ConnectionLost)
            assert "went silent" in str(error)
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as other:
                await other.send(b"x")

    run(main())


def test_session_resumption_with_a_ticket(quic_server_config, quic_client_config):
    async def main() -> None:
        async with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as first:
                await first.send(b"a")
                await first.recv()
                assert not first.session_resumed
                ticket = first.session
            assert ticket is not None
            async with quic.connect(
                "127.0.0.1", port, config=quic_client_config, session=ticket
            ) as second:
                assert second.session_resumed
                await second.send(b"b")
                assert await second.recv() == b"b"

    run(main())


def test_two_readers_is_a_concurrency_error(quic_server_config, quic_client_config):
    async def main() -> None:
        async with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                first = asyncio.ensure_future(channel.recv())
                await asyncio.sleep(0)
                with pytest.raises(dtlskit.ConcurrencyError):
                    await channel.recv()
                await channel.send(b"for the first")
                assert await first == b"for the first"

    run(main())


def test_bad_messages_are_refused(quic_server_config, quic_client_config):
    async def main() -> None:
        async with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as srv:
            port = srv.addresses[0][1]
            async with quic.connect("127.0.0.1", port, config=quic_client_config) as channel:
                with pytest.raises(dtlskit.InvalidMessage):
                    await channel.send(b"")
                with pytest.raises(dtlskit.InvalidMessage):
                    await channel.send("text")  # type: ignore[arg-type]
            with pytest.raises(dtlskit.ConnectionClosedLocally):
                await channel.send(b"after close")

    run(main())
