"""dtlskit.sync channels on real loopback sockets: echo over IPv4 and IPv6, the listen/accept
model, recv/recv_into/pending, channel properties, close semantics and concurrency errors."""

from __future__ import annotations

import gc
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509

import dtlskit
from dtlskit import sync
from dtlskit.sync import BufferTooSmall, Channel
from tests.helpers import WAIT, has_ipv6


def echo(channel: Channel) -> None:
    for message in channel:
        channel.send(message)


HOSTS = [
    "127.0.0.1",
    pytest.param(
        "::1", marks=pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this host")
    ),
]


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the bound")
        time.sleep(0.01)


@pytest.fixture
def echo_server(server_config: dtlskit.DTLSConfiguration) -> Iterator[sync.Server]:
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        yield server


@pytest.fixture
def listener(server_config: dtlskit.DTLSConfiguration) -> Iterator[sync.Listener]:
    with sync.listen("127.0.0.1", 0, config=server_config) as lst:
        yield lst


@pytest.fixture
def pair(
    listener: sync.Listener, client_config: dtlskit.DTLSConfiguration
) -> Iterator[tuple[Channel, Channel]]:
    """(client channel, server channel) of one session."""
    port = listener.getsockname()[1]
    with (
        sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client,
        listener.accept(timeout=WAIT) as server_side,
    ):
        yield client, server_side


# -- echo ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_echo_round_trip(host: str, server_config, client_config) -> None:
    with sync.serve(echo, host, 0, config=server_config) as server:
        address = server.addresses[0]
        assert address[0] == host
        with sync.connect(host, address[1], config=client_config, timeout=WAIT) as channel:
            for message in (b"hello", b"\x00", bytes(range(256)) * 4):
                channel.send(message)
                assert channel.recv(timeout=WAIT) == message
            assert channel.getpeername()[:2] == address[:2]
            assert channel.getsockname()[0] == host
        stats = server.statistics()
    assert stats.handshakes_completed == 1
    assert stats.hello_verify_requests_sent == 1


def test_channel_properties(echo_server: sync.Server, client_config) -> None:
    port = echo_server.addresses[0][1]
    channel = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
    try:
        assert channel.version == "DTLSv1.2"
        assert channel.cipher is not None and (
            "GCM" in channel.cipher or "CHACHA" in channel.cipher
        )
        assert channel.mtu == client_config.mtu
        assert 0 < channel.cleartext_mtu < channel.mtu
        assert channel.session_reused is False
        assert channel.closed is False
        cert = channel.peer_certificate
        assert isinstance(cert, x509.Certificate)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in names.get_values_for_type(x509.DNSName)
        assert channel.peer_certificate_chain[0] == cert
        assert channel.getpeername() == ("127.0.0.1", port)
        assert channel.error() == 0
        channel.send(b"x")
        assert channel.recv(timeout=WAIT) == b"x"
        stats = channel.statistics()
        assert stats.messages_sent == 1 and stats.messages_received == 1
        assert stats.handshake_seconds is not None
        assert "established" in repr(channel)
    finally:
        channel.close()
    assert channel.closed is True
    assert "closed" in repr(channel)


# -- listen / accept -------------------------------------------------------------------------------


def test_listen_accept_flow(listener: sync.Listener, client_config) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(dtlskit.DTLSTimeoutError):
        listener.accept(timeout=0.05)
    with sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client:
        server_side = listener.accept(timeout=WAIT)
        with server_side:
            assert server_side.getpeername() == client.getsockname()
            assert server_side.getsockname() == listener.getsockname()
            with pytest.raises(dtlskit.DTLSTimeoutError):
                server_side.recv(timeout=0.05)
            client.send(b"ping")
            assert server_side.recv(timeout=WAIT) == b"ping"
            server_side.send(b"pong")
            assert client.recv(timeout=WAIT) == b"pong"
            # A timeout leaves the session usable.
            with pytest.raises(TimeoutError):
                client.recv(timeout=0.01)
            client.send(b"again")
            assert server_side.recv(timeout=WAIT) == b"again"
    assert listener.statistics().handshakes_completed == 1


def test_accept_backlog_full_closes_the_association(server_config, client_config) -> None:
    config = server_config.replace(limits=dtlskit.Limits(accept_backlog=1))
    with sync.listen("127.0.0.1", 0, config=config) as lst:
        port = lst.getsockname()[1]
        with (
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as first,
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as second,
        ):
            # The second handshake completed, found the queue full and was closed.
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                second.recv(timeout=WAIT)
            assert lst.statistics().drops.get("accept_backlog_full") == 1
            assert lst.pending() == 1
            with lst.accept(timeout=WAIT) as accepted:
                first.send(b"still fine")
                assert accepted.recv(timeout=WAIT) == b"still fine"


def test_listener_close_wakes_accept_and_ends_sessions(server_config, client_config) -> None:
    lst = sync.listen("127.0.0.1", 0, config=server_config)
    port = lst.getsockname()[1]
    client = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
    server_side = lst.accept(timeout=WAIT)
    errors: list[BaseException] = []

    def accept() -> None:
        try:
            lst.accept()
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=accept)
    waiter.start()
    lst.close()
    lst.close()  # idempotent
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert isinstance(errors[0], dtlskit.ConnectionClosedLocally)
    with pytest.raises(dtlskit.ConnectionClosedByPeer):
        client.recv(timeout=WAIT)
    with pytest.raises(dtlskit.ConnectionClosed):
        server_side.recv(timeout=WAIT)
    with pytest.raises(dtlskit.TransportError, match="closed"):
        lst.getsockname()
    server_side.close()
    client.close()


# -- recv_into, pending ----------------------------------------------------------------------------


def test_recv_into_offset_and_length(pair: tuple[Channel, Channel]) -> None:
    client, server_side = pair
    buffer = bytearray(b"." * 16)
    server_side.send(b"abc")
    assert client.recv_into(buffer, offset=4, length=8, timeout=WAIT) == 3
    assert buffer == b"....abc........."
    server_side.send(b"0123456789")
    with pytest.raises(BufferTooSmall) as info:
        client.recv_into(buffer, offset=10, timeout=WAIT)  # 6 bytes left after offset 10
    assert info.value.size == 10 and info.value.available == 6
    assert "10 bytes" in str(info.value) and "6" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, dtlskit.DTLSError)
    assert client.pending() == 1  # not lost
    view = memoryview(buffer)
    assert client.recv_into(view[2:], length=12, timeout=WAIT) == 10
    assert buffer[2:12] == b"0123456789"
    with pytest.raises(ValueError, match="offset"):
        client.recv_into(buffer, offset=17)
    with pytest.raises(ValueError, match="length"):
        client.recv_into(buffer, offset=8, length=9)
    with pytest.raises(TypeError):
        client.recv_into(b"read-only")
    with pytest.raises(dtlskit.DTLSTimeoutError):
        client.recv_into(buffer, timeout=0.01)


def test_recv_into_takes_no_positional_size(pair: tuple[Channel, Channel]) -> None:
    """Code ported from ``socket.recv_into(buffer, nbytes)`` fails loudly and consumes nothing."""
    client, server_side = pair
    buffer = bytearray(16)
    server_side.send(b"abc")
    wait_until(lambda: client.pending() == 1)
    with pytest.raises(TypeError):
        client.recv_into(buffer, 8)  # type: ignore[misc]
    assert client.pending() == 1
    assert client.recv_into(buffer, length=8, timeout=WAIT) == 3


def test_pending_counts_queued_messages(pair: tuple[Channel, Channel]) -> None:
    client, server_side = pair
    assert client.pending() == 0
    for index in range(3):
        server_side.send(b"m%d" % index)
    wait_until(lambda: client.pending() == 3)
    assert [client.recv(timeout=WAIT) for _ in range(3)] == [b"m0", b"m1", b"m2"]
    assert client.pending() == 0


def test_queue_limit_drops_and_counts(
    server_config, client_config: dtlskit.DTLSConfiguration
) -> None:
    config = client_config.replace(limits=dtlskit.Limits(max_queued_messages=2))
    with sync.listen("127.0.0.1", 0, config=server_config) as lst:
        port = lst.getsockname()[1]
        with (
            sync.connect("127.0.0.1", port, config=config, timeout=WAIT) as client,
            lst.accept(timeout=WAIT) as server_side,
        ):
            for index in range(5):
                server_side.send(b"%d" % index)
                # One at a time, so that each is drained from the engine before the next
                # arrives: only the channel's own bound can hold them back.
                wait_until(lambda n=index + 1: client.statistics().messages_received == n)
            assert client.pending() == 2
            assert client.statistics().drops.get("queue_full") == 3
            assert client.recv(timeout=WAIT) == b"0"


# -- close semantics -----------------------------------------------------------------------------


def test_client_close_reaches_server(pair: tuple[Channel, Channel]) -> None:
    client, server_side = pair
    client.send(b"last words")
    client.close()
    client.close()  # idempotent
    # Messages received before the close_notify are still returned, then iteration ends.
    assert list(server_side) == [b"last words"]
    with pytest.raises(dtlskit.ConnectionClosedByPeer):
        server_side.recv(timeout=WAIT)
    with pytest.raises(dtlskit.ConnectionClosedByPeer):
        server_side.send(b"too late")
    assert server_side.closed
    with pytest.raises(dtlskit.ConnectionClosedLocally):
        client.recv(timeout=WAIT)
    with pytest.raises(dtlskit.ConnectionClosed):
        client.send(b"x")


def test_server_close_reaches_client(pair: tuple[Channel, Channel]) -> None:
    client, server_side = pair
    server_side.close()
    with pytest.raises(dtlskit.ConnectionClosedByPeer) as info:
        client.recv(timeout=WAIT)
    assert info.value.alert == "close notify"
    assert client.closed
    client.close()
    with pytest.raises(dtlskit.ConnectionClosed):
        client.recv(timeout=0)


def test_messages_received_before_close_are_still_returned(pair: tuple[Channel, Channel]) -> None:
    client, server_side = pair
    server_side.send(b"one")
    server_side.send(b"two")
    wait_until(lambda: client.pending() == 2)
    client.close()
    assert client.closed
    assert client.recv(timeout=0) == b"one"
    assert list(client) == [b"two"]  # then iteration ends: closed with close_notify
    with pytest.raises(dtlskit.ConnectionClosedLocally):
        client.recv(timeout=0)


def test_close_wakes_every_waiter(pair: tuple[Channel, Channel]) -> None:
    client, _ = pair
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            client.recv()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    # Wait until the reader is inside recv: a second reader is then refused.
    deadline = time.monotonic() + WAIT
    while True:
        try:
            client.recv(timeout=0)
        except dtlskit.ConcurrencyError:
            break
        except dtlskit.DTLSTimeoutError:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    client.close()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], dtlskit.ConnectionClosedLocally)


def test_concurrent_recv_is_refused(pair: tuple[Channel, Channel]) -> None:
    client, server_side = pair
    results: list[bytes] = []
    thread = threading.Thread(target=lambda: results.append(client.recv(timeout=WAIT)))
    thread.start()
    deadline = time.monotonic() + WAIT
    refused = None
    while refused is None:
        try:
            client.recv_into(bytearray(10), timeout=0)
        except dtlskit.ConcurrencyError as exc:
            refused = exc
        except dtlskit.DTLSTimeoutError:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    assert "another thread" in str(refused)
    server_side.send(b"for the first reader")
    thread.join(WAIT)
    assert results == [b"for the first reader"]


def test_message_too_large(pair: tuple[Channel, Channel]) -> None:
    client, server_side = pair
    limit = client.cleartext_mtu
    with pytest.raises(dtlskit.MessageTooLarge) as info:
        client.send(b"x" * (limit + 1))
    assert info.value.limit == limit and str(limit) in str(info.value)
    client.send(b"y" * limit)  # the largest message still goes through
    assert server_side.recv(timeout=WAIT) == b"y" * limit
    with pytest.raises(dtlskit.InvalidMessage, match="encode"):
        client.send("text")  # type: ignore[arg-type]
    with pytest.raises(dtlskit.InvalidMessage, match="empty"):
        client.send(b"")
    client.send(bytearray(b"still up"))
    assert server_side.recv(timeout=WAIT) == b"still up"


def test_unclosed_channel_warns(echo_server: sync.Server, client_config) -> None:
    port = echo_server.addresses[0][1]
    channel = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
    channel.send(b"hi")
    assert channel.recv(timeout=WAIT) == b"hi"
    io_thread = channel._io._thread
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del channel
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    io_thread.join(WAIT)  # the I/O thread cleans up on its own
    assert not io_thread.is_alive()
    # The orphan sent close_notify: the server forgets the session.
    wait_until(lambda: echo_server.statistics().sessions == 0)


def test_unclosed_listener_warns(server_config) -> None:
    lst = sync.listen("127.0.0.1", 0, config=server_config)
    io_thread = lst._ios[0]._thread
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lst
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    io_thread.join(WAIT)
    assert not io_thread.is_alive()
