"""dtlskit.sync.tls (blocking) on real loopback TCP sockets with real OpenSSL."""

from __future__ import annotations

import socket
import threading

import pytest

import dtlskit
from dtlskit.sync import tls


def echo(channel: tls.Channel) -> None:
    for data in channel:
        channel.send(data)


def test_echo_stream_and_helpers(server_config, client_config) -> None:
    with tls.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        with tls.connect("127.0.0.1", server.port, config=client_config) as channel:
            assert channel.version == "TLSv1.3"
            channel.send(b"hello\nworld\n")
            assert channel.read_until(b"\n", timeout=10) == b"hello\n"
            assert channel.read_exactly(6, timeout=10) == b"world\n"
            payload = bytes(range(256)) * 1000
            channel.send(payload)
            assert channel.read_exactly(len(payload), timeout=10) == payload
            with pytest.raises(dtlskit.DTLSTimeoutError):
                channel.recv(timeout=0.05)
            channel.send(b"still usable")
            assert channel.read_exactly(12, timeout=10) == b"still usable"
        assert server.statistics().handshakes_completed == 1


def test_framed_and_read_until_eof(server_config, client_config) -> None:
    def sender(channel: tls.Channel) -> None:
        channel.send(b"one")
        channel.send(b"two")

    framed = "length-prefixed"
    with tls.serve(sender, "127.0.0.1", 0, config=server_config, framing=framed) as s:
        channel = tls.connect("127.0.0.1", s.port, config=client_config, framing=framed)
        assert list(channel) == [b"one", b"two"]
        channel.close()
    with tls.serve(sender, "127.0.0.1", 0, config=server_config) as s:
        channel = tls.connect("127.0.0.1", s.port, config=client_config)
        assert channel.read_until_eof(timeout=10) == b"onetwo"
        channel.close()


def test_silent_client_blocks_no_one_and_limits_count(server_config, client_config) -> None:
    limited = server_config.replace(
        limits=dtlskit.Limits(max_sessions_per_address=1), handshake_timeout=1.0
    )
    with tls.listen("127.0.0.1", 0, config=limited) as listener:
        silent = socket.create_connection(("127.0.0.1", listener.port))
        silent.settimeout(10)
        # The silent client holds the one slot of 127.0.0.1: the next is refused, counted.
        # (Wait for the server to have taken it; the refusal is then certain.)
        for _ in range(1000):
            if listener.statistics().connections:
                break
            threading.Event().wait(0.01)
        with pytest.raises(
            (dtlskit.HandshakeError, dtlskit.ConnectionClosed, dtlskit.TransportError)
        ):
            tls.connect("127.0.0.1", listener.port, config=client_config)
        assert listener.statistics().refused["max_sessions_per_address"] == 1
        assert silent.recv(10) == b""  # dropped at the handshake deadline
        silent.close()
        for _ in range(1000):
            if listener.statistics().connections == 0:
                break
            threading.Event().wait(0.01)
        assert listener.statistics().refused["handshake_timeout"] == 1
        with tls.connect("127.0.0.1", listener.port, config=client_config) as channel:
            peer = listener.accept(timeout=10)
            channel.send(b"ping")
            assert peer.recv(timeout=10) == b"ping"
            peer.close()
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                channel.recv(timeout=10)
        with pytest.raises(dtlskit.DTLSTimeoutError):
            listener.accept(timeout=0.01)


def test_idle_client_is_closed(server_config, client_config) -> None:
    with tls.listen("127.0.0.1", 0, config=server_config.replace(idle_timeout=0.3)) as listener:
        with tls.connect("127.0.0.1", listener.port, config=client_config) as channel:
            peer = listener.accept(timeout=10)
            # Nobody reads on the server side: the accept thread's sweep closes it.
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                channel.recv(timeout=10)
            assert peer.closed
        assert listener.statistics().refused["idle_timeout"] == 1


def test_truncation(server_config, client_config) -> None:
    def rude(channel: tls.Channel) -> None:
        channel.send(b"partial")
        channel._sock.shutdown(socket.SHUT_RDWR)  # FIN without close_notify

    with tls.serve(rude, "127.0.0.1", 0, config=server_config) as server:
        channel = tls.connect("127.0.0.1", server.port, config=client_config)
        with pytest.raises(dtlskit.ConnectionLost, match="truncated"):
            channel.read_until_eof(timeout=10)
        channel.close()


def test_garbage_then_good_client(server_config, client_config) -> None:
    with tls.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.settimeout(10)
            raw.sendall(b"\x16\x03\x01\x00\x05hello" + b"garbage" * 10)
            assert raw.recv(100)[:1] == b"\x15"  # a fatal alert
        with tls.connect("127.0.0.1", server.port, config=client_config) as channel:
            channel.send(b"ok")
            assert channel.recv(timeout=10) == b"ok"
        assert server.statistics().handshakes_failed >= 1


def test_resumption_with_tls13_ticket(server_config, client_config) -> None:
    with tls.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        with tls.connect("127.0.0.1", server.port, config=client_config) as first:
            first.send(b"x")
            first.recv(timeout=10)  # the tickets came before the echo
            session = first.session
        assert session is not None
        with tls.connect("127.0.0.1", server.port, config=client_config, session=session) as second:
            assert second.session_reused


def test_refused(client_config) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(dtlskit.ConnectionRefused):
        tls.connect("127.0.0.1", port, config=client_config)


def test_handler_stuck_sending_blocks_neither_accept_nor_close(server_config, client_config):
    """A handler blocked in send() to a client that never reads holds only its own thread:
    the accept thread (whose idle sweep never waits for a busy channel) keeps accepting, the
    idle deadline shuts the stuck connection down, and close() returns."""
    stuck = threading.Event()
    outcome: list[BaseException] = []

    def flood(channel: tls.Channel) -> None:
        line = channel.read_until(b"\n", timeout=10)
        if line == b"flood\n":
            stuck.set()
            try:
                for _ in range(10_000):  # ~160 MB: far more than the socket buffers hold
                    channel.send(b"x" * 16_384)
            except dtlskit.DTLSError as exc:
                outcome.append(exc)
            return
        channel.send(line)

    cfg = server_config.replace(idle_timeout=0.5)
    server = tls.serve(flood, "127.0.0.1", 0, config=cfg)
    try:
        silent = tls.connect("127.0.0.1", server.port, config=client_config)
        silent.send(b"flood\n")  # and never read again
        assert stuck.wait(10)
        with tls.connect("127.0.0.1", server.port, config=client_config) as other:
            other.send(b"served\n")
            assert other.read_until(b"\n", timeout=10) == b"served\n"
        for _ in range(1000):  # the idle sweep ends the stuck send (bounded wait)
            if outcome:
                break
            threading.Event().wait(0.01)
        assert outcome and isinstance(outcome[0], dtlskit.ConnectionClosed), outcome
        silent.close()
    finally:
        server.close()


def test_ipv6_and_every_interface(server_config, client_config) -> None:
    with tls.serve(echo, None, 0, config=server_config) as server:
        families = {len(address) for address in server.addresses}
        assert len({a[1] for a in server.addresses}) == 1  # one port for every family
        for host in ("127.0.0.1", "::1") if 4 in families else ("127.0.0.1",):
            with tls.connect(host, server.port, config=client_config) as channel:
                channel.send(b"v6?")
                assert channel.read_exactly(3, timeout=10) == b"v6?"


def test_recv_into(server_config, client_config) -> None:
    with (
        tls.serve(echo, "127.0.0.1", 0, config=server_config) as server,
        tls.connect("127.0.0.1", server.port, config=client_config) as channel,
    ):
        channel.send(b"abcdef")
        buffer = bytearray(10)
        got = 0
        while got < 6:
            got += channel.recv_into(buffer, offset=2 + got, length=6 - got, timeout=10)
        assert buffer == b"\0\0abcdef\0\0"
    framed = "length-prefixed"
    with (
        tls.serve(echo, "127.0.0.1", 0, config=server_config, framing=framed) as server,
        tls.connect("127.0.0.1", server.port, config=client_config, framing=framed) as ch,
    ):
        ch.send(b"0123456789")
        with pytest.raises(dtlskit.BufferTooSmall):
            ch.recv_into(bytearray(4), timeout=10)
        big = bytearray(20)
        assert ch.recv_into(big, timeout=10) == 10 and big[:10] == b"0123456789"
