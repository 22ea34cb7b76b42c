"""dtlskit.tls (asyncio) on real loopback TCP sockets with real OpenSSL."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

import dtlskit
import dtlskit.tls


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


async def echo(channel: dtlskit.tls.Channel) -> None:
    async for data in channel:
        await channel.send(data)


def test_echo_stream_and_properties(server_config, client_config) -> None:
    async def main() -> None:
        async with dtlskit.tls.serve(echo, "127.0.0.1", 0, config=server_config) as server:
            async with dtlskit.tls.connect(
                "127.0.0.1", server.port, config=client_config
            ) as channel:
                assert channel.version == "TLSv1.3"
                await channel.send(b"hello\nworld\n")
                assert await channel.read_until(b"\n") == b"hello\n"
                assert await channel.read_exactly(6) == b"world\n"
                payload = bytes(range(256)) * 1000
                await channel.send(payload)
                assert await channel.read_exactly(len(payload)) == payload
                assert channel.getpeername()[1] == server.port
            stats = server.statistics()
            assert stats.handshakes_completed == 1 and stats.accepted == 1

    run(main())


def test_framed_messages_and_read_until_eof(server_config, client_config) -> None:
    async def sender(channel: dtlskit.tls.Channel) -> None:
        await channel.send(b"one")
        await channel.send(b"two")

    async def main() -> None:
        async with (
            dtlskit.tls.serve(
                sender, "127.0.0.1", 0, config=server_config, framing="length-prefixed"
            ) as server,
            dtlskit.tls.connect(
                "127.0.0.1", server.port, config=client_config, framing="length-prefixed"
            ) as channel,
        ):
            assert [m async for m in channel] == [b"one", b"two"]
            with pytest.raises(dtlskit.UsageError):
                await channel.read_exactly(1)
        async with dtlskit.tls.serve(sender, "127.0.0.1", 0, config=server_config) as server:
            channel = await dtlskit.tls.connect("127.0.0.1", server.port, config=client_config)
            assert await channel.read_until_eof() == b"onetwo"
            await channel.__aexit__()

    run(main())


def test_listen_accept_and_limits(server_config, client_config) -> None:
    limited = server_config.replace(
        limits=dtlskit.Limits(max_sessions_per_address=1), handshake_timeout=1.0
    )

    async def main() -> None:
        async with dtlskit.tls.listen("127.0.0.1", 0, config=limited) as listener:
            port = listener.port
            # A silent TCP client holds one slot (per address) until the handshake deadline,
            # and blocks no one else: the next client from the same address is refused.
            loop = asyncio.get_running_loop()
            silent = socket.create_connection(("127.0.0.1", port))
            # Non-blocking, as loop.sock_recv needs: a blocking recv before the server's close
            # would block the loop, and so the close it waits for (a hang under load).
            silent.setblocking(False)
            await asyncio.sleep(0)  # let the server take it
            while listener.statistics().connections == 0:
                await asyncio.sleep(0.01)
            with pytest.raises((dtlskit.HandshakeError, dtlskit.ConnectionClosed)):
                await dtlskit.tls.connect("127.0.0.1", port, config=client_config)
            assert listener.statistics().refused["max_sessions_per_address"] == 1
            # The silent one is dropped at its deadline, counted.
            while listener.statistics().refused.get("handshake_timeout", 0) == 0:
                await asyncio.sleep(0.05)
            assert await loop.sock_recv(silent, 10) == b""
            silent.close()
            async with dtlskit.tls.connect("127.0.0.1", port, config=client_config) as channel:
                server_side = await listener.accept(timeout=10)
                await channel.send(b"ping")
                assert await server_side.recv() == b"ping"
                server_side.close()
                with pytest.raises(dtlskit.ConnectionClosedByPeer):
                    await channel.recv()
            with pytest.raises(dtlskit.DTLSTimeoutError):
                await listener.accept(timeout=0.01)

    run(main())


def test_truncation_is_connection_lost(server_config, client_config) -> None:
    async def rude(channel: dtlskit.tls.Channel) -> None:
        await channel.send(b"partial")
        channel._protocol.transport.abort()  # type: ignore[union-attr]  # no close_notify

    async def main() -> None:
        async with dtlskit.tls.serve(rude, "127.0.0.1", 0, config=server_config) as server:
            channel = await dtlskit.tls.connect("127.0.0.1", server.port, config=client_config)
            with pytest.raises(dtlskit.ConnectionLost, match="truncated"):
                await channel.read_until_eof()
            await channel.__aexit__()

    run(main())


def test_garbage_client_gets_error_and_server_keeps_serving(server_config, client_config) -> None:
    async def main() -> None:
        async with dtlskit.tls.serve(echo, "127.0.0.1", 0, config=server_config) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x16\x03\x01\x00\x05hello" + b"garbage" * 10)
            await writer.drain()
            answer = await reader.read(100)  # a fatal alert, then EOF
            assert answer[:1] == b"\x15"
            writer.close()
            async with dtlskit.tls.connect(
                "127.0.0.1", server.port, config=client_config
            ) as channel:
                await channel.send(b"still here")
                assert await channel.recv() == b"still here"
            assert server.statistics().handshakes_failed >= 1

    run(main())


def test_connect_refused(client_config) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(dtlskit.ConnectionRefused):
        run(dtlskit.tls.connect("127.0.0.1", port, config=client_config))


def test_dtls_only_field_refused(server_config) -> None:
    async def main() -> None:
        with pytest.raises(dtlskit.ConfigurationError, match="mtu"):
            await dtlskit.tls.serve(echo, "127.0.0.1", 0, config=server_config.replace(mtu=1400))

    run(main())


def test_ipv6(server_config, client_config) -> None:
    async def main() -> None:
        async with (
            dtlskit.tls.serve(echo, "::1", 0, config=server_config) as server,
            dtlskit.tls.connect("::1", server.port, config=client_config) as channel,
        ):
            assert channel.getpeername()[0] == "::1"
            await channel.send(b"six")
            assert await channel.read_exactly(3) == b"six"

    run(main())


def test_close_does_not_wait_forever_for_a_peer_that_does_not_read(
    server_config, client_config, monkeypatch
) -> None:
    """Closing a connection whose peer reads nothing resets it after CLOSE_GRACE seconds
    (a close would otherwise wait for the peer forever, holding the buffered bytes)."""
    import dtlskit.tls.channel as channel_module

    monkeypatch.setattr(channel_module, "CLOSE_GRACE", 0.2)
    done = asyncio.Event()

    async def flood(channel: dtlskit.tls.Channel) -> None:
        for _ in range(300):  # ~5 MB queued in the transport: the peer reads none of it
            channel.send_nowait(b"x" * 16_384)
        channel.close()
        await channel.wait_closed()  # returns once the grace ran out and the reset happened
        done.set()

    async def main() -> None:
        async with dtlskit.tls.serve(flood, "127.0.0.1", 0, config=server_config) as server:
            loop = asyncio.get_running_loop()
            raw = socket.create_connection(("127.0.0.1", server.port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            context = ssl.create_default_context(cafile=str(client_config.cafile))
            tls_sock = await loop.run_in_executor(
                None, lambda: context.wrap_socket(raw, server_hostname="localhost")
            )
            await asyncio.wait_for(done.wait(), 20)
            tls_sock.close()

    run(main())


def test_recv_into(server_config, client_config) -> None:
    async def main() -> None:
        framed = "length-prefixed"
        async with (
            dtlskit.tls.serve(echo, "127.0.0.1", 0, config=server_config, framing=framed) as s,
            dtlskit.tls.connect("127.0.0.1", s.port, config=client_config, framing=framed) as c,
        ):
            await c.send(b"0123456789")
            with pytest.raises(dtlskit.BufferTooSmall):
                await c.recv_into(bytearray(4))
            big = bytearray(12)
            assert await c.recv_into(big, offset=2) == 10 and big[2:] == b"0123456789"

    run(main())


def test_reads_larger_than_the_queue_limit_complete(server_config, client_config) -> None:
    """read_exactly / read_until_eof of more than limits.max_queued_bytes: reading goes on up
    to what the reader asked for (its own bound) instead of pausing at the queue limit."""
    small = dtlskit.Limits(max_queued_bytes=10_000)
    payload = bytes(range(256)) * 2_000  # 512 kB

    async def sender(channel: dtlskit.tls.Channel) -> None:
        await channel.send(payload)
        await channel.send(payload)

    async def main() -> None:
        async with dtlskit.tls.serve(sender, "127.0.0.1", 0, config=server_config) as server:
            channel = await dtlskit.tls.connect(
                "127.0.0.1", server.port, config=client_config.replace(limits=small)
            )
            assert await channel.read_exactly(len(payload)) == payload
            assert await channel.read_until_eof() == payload
            await channel.__aexit__()

    run(main())
