"""asyncio front end on real loopback sockets: echo, channel properties, errors, close rules."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from cryptography.x509.oid import NameOID

import dtlskit
from dtlskit.asyncio import Channel, connect, listen, serve
from dtlskit.certs import PKIFiles
from tests.helpers import WAIT
from tests.peers import free_udp_port

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], bound: float = 30.0) -> T:
    """Run one test's coroutine on a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, bound))


async def echo(channel: Channel) -> None:
    async for message in channel:
        await channel.send(message)


async def eventually(condition: Callable[[], bool], what: str, bound: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``bound`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- 1. echo and properties ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_echo_round_trip_and_channel_properties(
    host: str,
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
) -> None:
    seen_by_server: list[tuple[Any, ...]] = []

    async def handler(channel: Channel) -> None:
        seen_by_server.append(channel.getpeername())
        assert channel.peer_certificate is None  # the server asked for no client certificate
        await echo(channel)

    async def main() -> None:
        async with serve(handler, host, 0, config=server_config) as server:
            assert server.is_serving()
            port = server.addresses[0][1]
            assert port != 0
            async with connect(host, port, config=client_config) as channel:
                messages = [b"one", b"two" * 300, bytes(range(256)), b"\x00"]
                for message in messages:
                    await channel.send(message)
                    assert await asyncio.wait_for(channel.recv(), WAIT) == message
                assert channel.version == "DTLSv1.2"
                assert channel.cipher in dtlskit.DEFAULT_CIPHERS.split(":")
                subject = channel.peer_certificate.subject
                assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
                assert len(channel.peer_certificate_chain) >= 1
                assert channel.getpeername()[:2] == (host, port)
                local = channel.getsockname()
                assert local[0] == host and local[1] != 0
                assert channel.mtu == 1200
                assert 0 < channel.cleartext_mtu < channel.mtu
                assert channel.session_reused is False
                assert channel.alpn_protocol is None
                assert channel.pending() == 0
                assert not channel.closed
                stats = channel.statistics()
                assert stats.messages_sent == len(messages)
                assert stats.messages_received == len(messages)
                assert stats.handshake_seconds is not None
                assert stats.datagrams_sent >= 2 + len(messages)
                assert seen_by_server[0][:2] == local[:2]
            assert channel.closed
            await eventually(lambda: server.statistics().sessions == 0, "server forgot the peer")
            server_stats = server.statistics()
            assert server_stats.handshakes_completed == 1
            assert server_stats.hello_verify_requests_sent >= 1
        assert not server.is_serving()

    run(main())


def test_await_forms_and_listen_accept(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        listener = await listen("127.0.0.1", 0, config=server_config)
        try:
            port = listener.getsockname()[1]
            with pytest.raises(dtlskit.DTLSTimeoutError):
                await listener.accept(timeout=0.05)
            client = await connect("127.0.0.1", port, config=client_config)
            try:
                peer = await listener.accept(timeout=WAIT)
                async with peer:
                    await client.send(b"ping")
                    assert await asyncio.wait_for(peer.recv(), WAIT) == b"ping"
                    await peer.send(b"pong")
                    assert await asyncio.wait_for(client.recv(), WAIT) == b"pong"
                    assert peer.getpeername()[:2] == client.getsockname()[:2]
            finally:
                client.close()
                await client.wait_closed()
        finally:
            listener.close()
            await listener.wait_closed()
        with pytest.raises(dtlskit.ConnectionClosedLocally):
            await listener.accept(timeout=1)

    run(main())


# -- 4. a failing handler -----------------------------------------------------------------------


def test_handler_that_raises_ends_only_its_own_session(
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(channel: Channel) -> None:
        async for message in channel:
            if message == b"boom":
                raise RuntimeError("handler bug on purpose")
            await channel.send(message)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with connect("127.0.0.1", port, config=client_config) as survivor:
                await survivor.send(b"before")
                assert await asyncio.wait_for(survivor.recv(), WAIT) == b"before"
                async with connect("127.0.0.1", port, config=client_config) as victim:
                    await victim.send(b"boom")
                    with pytest.raises(dtlskit.ConnectionClosedByPeer):
                        await asyncio.wait_for(victim.recv(), WAIT)
                # An open session and a new one are both still served.
                await survivor.send(b"after")
                assert await asyncio.wait_for(survivor.recv(), WAIT) == b"after"
                async with connect("127.0.0.1", port, config=client_config) as newcomer:
                    await newcomer.send(b"next")
                    assert await asyncio.wait_for(newcomer.recv(), WAIT) == b"next"
                assert server.is_serving()

    with caplog.at_level(logging.ERROR, logger="dtlskit.server"):
        run(main())
    failures = [r for r in caplog.records if r.name == "dtlskit.server" and r.exc_info]
    assert len(failures) == 1
    exc_info = failures[0].exc_info
    assert exc_info is not None and isinstance(exc_info[1], RuntimeError)


# -- 5, 6. refused port and silent peer -------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_closed_port_fails_fast_with_connection_refused(
    host: str, client_config: dtlskit.DTLSConfiguration
) -> None:
    port = free_udp_port(host)
    config = client_config.replace(handshake_timeout=30.0)

    async def main() -> None:
        with pytest.raises(dtlskit.ConnectionRefused) as info:
            # The handshake deadline is 30 s: a missed ICMP error would end in HandshakeTimeout,
            # not ConnectionRefused (no time bound here: a loaded machine may be slow).
            await connect(host, port, config=config)
        assert isinstance(info.value, ConnectionRefusedError)
        assert str(port) in str(info.value)

    run(main())


def test_silent_peer_gives_handshake_timeout(client_config: dtlskit.DTLSConfiguration) -> None:
    config = client_config.replace(handshake_timeout=1.5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]

        async def main() -> None:
            with pytest.raises(dtlskit.HandshakeTimeout) as info:
                await asyncio.wait_for(connect("127.0.0.1", port, config=config), WAIT)
            assert "1.5 s" in str(info.value)
            with pytest.raises(dtlskit.HandshakeTimeout) as info:
                await asyncio.wait_for(connect("127.0.0.1", port, timeout=0.3), WAIT)
            assert "0.3 s" in str(info.value)

        run(main())
        silent.setblocking(False)
        received = 0
        while True:
            try:
                silent.recv(65536)
            except BlockingIOError:
                break
            received += 1
        # The ClientHello, its retransmission after 1 s, and the second client's ClientHello.
        assert received >= 3


# -- 7. close semantics -------------------------------------------------------------------------


def test_client_close_ends_the_handlers_iteration(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[list[bytes]] = loop.create_future()

        async def handler(channel: Channel) -> None:
            got = [message async for message in channel]
            ended.set_result(got)
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                await channel.recv()

        async with serve(handler, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            channel = await connect("127.0.0.1", port, config=client_config)
            await channel.send(b"a")
            await channel.send(b"b")
            channel.close()
            channel.close()  # idempotent
            await channel.wait_closed()
            assert await asyncio.wait_for(ended, WAIT) == [b"a", b"b"]
            with pytest.raises(dtlskit.ConnectionClosedLocally):
                await channel.recv()
            with pytest.raises(dtlskit.ConnectionClosedLocally):
                await channel.send(b"late")
            assert [m async for m in channel] == []

    run(main())


def test_server_close_reaches_the_client_as_close_notify(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        handler_saw: list[BaseException | None] = []

        async def handler(channel: Channel) -> None:
            try:
                await echo(channel)  # ends cleanly when the server closes the session
            except BaseException as exc:  # pragma: no cover - the failure being tested for
                handler_saw.append(exc)
                raise
            handler_saw.append(None)

        server = await serve(handler, "127.0.0.1", 0, config=server_config)
        port = server.addresses[0][1]
        async with connect("127.0.0.1", port, config=client_config) as channel:
            await channel.send(b"x")
            assert await asyncio.wait_for(channel.recv(), WAIT) == b"x"
            server.close()
            server.close()  # idempotent
            await asyncio.wait_for(server.wait_closed(), WAIT)
            with pytest.raises(dtlskit.ConnectionClosedByPeer) as info:
                await asyncio.wait_for(channel.recv(), WAIT)
            assert info.value.alert == "close notify"
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                await channel.recv()  # stays raised
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                await channel.send(b"y")
            assert channel.closed
        assert handler_saw == [None]
        assert server.statistics().sessions == 0

    run(main())


def test_queued_messages_survive_the_peer_closing(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def handler(channel: Channel) -> None:
        for index in range(3):
            await channel.send(b"m%d" % index)
        channel.close()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with connect("127.0.0.1", port, config=client_config) as channel:
                await eventually(lambda: channel.closed, "the server's close_notify arrived")
                assert channel.pending() == 3
                assert [m async for m in channel] == [b"m0", b"m1", b"m2"]

    run(main())


def test_concurrent_recv_and_oversized_message(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with connect("127.0.0.1", port, config=client_config) as channel:
                first = asyncio.create_task(channel.recv())
                await eventually(lambda: channel._waiter is not None, "first recv() waits")
                with pytest.raises(dtlskit.ConcurrencyError):
                    await channel.recv()
                await channel.send(b"for the first reader")
                assert await asyncio.wait_for(first, WAIT) == b"for the first reader"

                limit = channel.cleartext_mtu
                with pytest.raises(dtlskit.MessageTooLarge) as info:
                    await channel.send(b"x" * (limit + 1))
                assert info.value.limit == limit
                await channel.send(b"y" * limit)  # exactly the limit fits
                assert await asyncio.wait_for(channel.recv(), WAIT) == b"y" * limit
                with pytest.raises(dtlskit.InvalidMessage, match="encode"):
                    await channel.send("text")  # type: ignore[arg-type]

                # A reader cancelled while waiting leaves the channel usable.
                waiting = asyncio.create_task(channel.recv())
                await eventually(lambda: channel._waiter is not None, "second recv() waits")
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                await channel.send(b"z")
                assert await asyncio.wait_for(channel.recv(), WAIT) == b"z"

    run(main())


# -- 8. certificate failures --------------------------------------------------------------------


def test_wrong_ca_is_a_certificate_verification_error(
    server_config: dtlskit.DTLSConfiguration, other_pki: PKIFiles
) -> None:
    config = dtlskit.DTLSConfiguration.client(cafile=other_pki.ca_cert, server_hostname="localhost")

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            with pytest.raises(dtlskit.CertificateVerificationError) as info:
                await asyncio.wait_for(connect("127.0.0.1", port, config=config), WAIT)
            assert "local issuer certificate" in str(info.value)
            assert info.value.reason is dtlskit.VerificationReason.UNKNOWN_ISSUER
            assert "local issuer certificate" in str(info.value)
            await eventually(
                lambda: server.statistics().handshakes_failed == 1, "server saw the failure"
            )

    run(main())


def test_wrong_hostname_is_a_certificate_verification_error(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            with pytest.raises(dtlskit.CertificateVerificationError) as info:
                await asyncio.wait_for(
                    connect(
                        "127.0.0.1", port, config=client_config, server_hostname="wrong.example"
                    ),
                    WAIT,
                )
            assert "hostname mismatch" in str(info.value)

    run(main())


# -- 9. no leaks --------------------------------------------------------------------------------


def test_no_leaked_fds_or_tasks(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    gc.collect()
    before = open_fds()

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            channels = [await connect("127.0.0.1", port, config=client_config) for _ in range(5)]
            assert open_fds() >= before + 6  # the measurement sees every socket
            for index, channel in enumerate(channels):
                await channel.send(b"%d" % index)
                assert await asyncio.wait_for(channel.recv(), WAIT) == b"%d" % index
            for channel in channels[:2]:  # some closed by the client, the rest by the server
                channel.close()
                await channel.wait_closed()
        for channel in channels[2:]:
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                await asyncio.wait_for(channel.recv(), WAIT)
            channel.close()
            await channel.wait_closed()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []

    asyncio.run(main())
    gc.collect()
    assert open_fds() == before


def test_unclosed_channel_warns(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            channel = await connect("127.0.0.1", port, config=client_config)
            with pytest.warns(ResourceWarning, match="unclosed"):
                del channel
                gc.collect()

    run(main())


def test_configuration_errors_are_raised_early(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        with pytest.raises(dtlskit.ConfigurationError):
            await connect("127.0.0.1", 9, config=client_config, timeout=0)
        with pytest.raises(dtlskit.TransportError):
            await connect("no-such-host.invalid", 9, config=client_config)
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            with pytest.raises(dtlskit.TransportError, match="already in use"):
                await serve(echo, "127.0.0.1", port, config=server_config)
            assert not hasattr(server, "accept")  # a handler server: listen() accepts

    run(main())
    with pytest.raises(dtlskit.ConfigurationError, match="fixed port"):
        run_server_with_workers_on_port_zero(server_config)


def run_server_with_workers_on_port_zero(config: dtlskit.DTLSConfiguration) -> None:
    from dtlskit.asyncio import run_server

    async def never(channel: Channel) -> None:  # pragma: no cover - never started
        pass

    run_server(never, "127.0.0.1", 0, config=config, workers=2)


# -- binding and accept queue -------------------------------------------------------------------


def test_dual_stack_and_wildcard_listening(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with serve(echo, "::", 0, config=server_config) as server:
            assert len(server.sockets) == 1
            port = server.addresses[0][1]
            for host in ("127.0.0.1", "::1"):  # IPv4 arrives IPv4-mapped on the one socket
                async with connect(host, port, config=client_config) as channel:
                    await channel.send(host.encode())
                    assert await asyncio.wait_for(channel.recv(), WAIT) == host.encode()
        async with serve(echo, None, 0, config=server_config) as server:
            families = sorted(sock.family for sock in server.sockets)
            assert families == [socket.AF_INET, socket.AF_INET6]
            ports = {address[1] for address in server.addresses}
            assert len(ports) == 1  # port 0: every socket gets the port the first one got
            port = ports.pop()
            async with (
                connect("127.0.0.1", port, config=client_config) as v4,
                connect("::1", port, config=client_config) as v6,
            ):
                for channel in (v4, v6):
                    await channel.send(b"hi")
                    assert await asyncio.wait_for(channel.recv(), WAIT) == b"hi"
                stats = server.statistics()  # the two sockets' counters added up
                assert stats.sessions == 2
                assert stats.handshakes_completed == 2

    run(main())


def test_full_accept_backlog_refuses_and_counts(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    config = server_config.replace(limits=dtlskit.Limits(accept_backlog=1))

    async def main() -> None:
        async with listen("127.0.0.1", 0, config=config) as listener:
            port = listener.getsockname()[1]
            async with connect("127.0.0.1", port, config=client_config) as first:
                async with connect("127.0.0.1", port, config=client_config) as refused:
                    with pytest.raises(dtlskit.ConnectionClosedByPeer):
                        await asyncio.wait_for(refused.recv(), WAIT)
                # (The refused client's answering close_notify, arriving after the server forgot
                # the association, may be counted too, as "not_client_hello".)
                assert listener.statistics().drops["accept_backlog_full"] == 1
                async with await listener.accept(timeout=WAIT) as accepted:
                    await first.send(b"queued peer is live")
                    received = await asyncio.wait_for(accepted.recv(), WAIT)
                    assert received == b"queued peer is live"

    run(main())


def test_large_mtu_caps_messages_at_the_record_limit(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    # One record carries at most 2**14 bytes of plaintext, whatever the MTU: a larger message
    # must raise MessageTooLarge and leave the session usable (it used to kill the session).
    big_server = server_config.replace(mtu=65507)
    big_client = client_config.replace(mtu=65507)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, config=big_server) as server:
            port = server.addresses[0][1]
            async with connect("127.0.0.1", port, config=big_client) as channel:
                assert channel.cleartext_mtu == 2**14
                with pytest.raises(dtlskit.MessageTooLarge):
                    await channel.send(b"x" * (2**14 + 1))
                message = bytes(range(256)) * 64  # exactly 2**14 bytes
                await channel.send(message)
                assert await asyncio.wait_for(channel.recv(), WAIT) == message

    run(main())


# -- recv_into ---------------------------------------------------------------------------------


def test_recv_into_offset_length_and_keyword_only(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with listen("127.0.0.1", 0, config=server_config) as listener:
            port = listener.getsockname()[1]
            async with connect("127.0.0.1", port, config=client_config) as client:
                server_side = await listener.accept(timeout=WAIT)
                async with server_side:
                    buffer = bytearray(b"." * 16)
                    await server_side.send(b"abc")
                    received = client.recv_into(buffer, offset=4, length=8)
                    assert await asyncio.wait_for(received, WAIT) == 3
                    assert buffer == b"....abc........."
                    await server_side.send(b"0123456789")
                    with pytest.raises(dtlskit.BufferTooSmall) as info:
                        await asyncio.wait_for(client.recv_into(buffer, offset=10), WAIT)
                    assert info.value.size == 10 and info.value.available == 6
                    assert client.pending() == 1  # not lost
                    # ported from socket.recv_into(buffer, nbytes): fails, consumes nothing
                    with pytest.raises(TypeError):
                        await client.recv_into(buffer, 8)  # type: ignore[misc]
                    assert client.pending() == 1
                    with pytest.raises(ValueError, match="length"):
                        await client.recv_into(buffer, offset=8, length=9)
                    received = client.recv_into(memoryview(buffer)[2:], length=12)
                    assert await asyncio.wait_for(received, WAIT) == 10
                    assert buffer[2:12] == b"0123456789"
                    server_side.close()
                    with pytest.raises(dtlskit.ConnectionClosedByPeer):
                        await asyncio.wait_for(client.recv_into(buffer), WAIT)

    run(main())
