"""Socket-level capabilities of sync channels and listeners (the EdgerOS ``setTTL /
setIPv6Only / bindToDevice / get/set buffer sizes / error`` family), on real sockets."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import dtlskit
from dtlskit import sync
from dtlskit._frontend.sockets import MAX_BUFFER_SIZE, MIN_BUFFER_SIZE
from dtlskit.sync import Channel
from tests.helpers import WAIT, needs_ipv6


def echo(channel: Channel) -> None:
    for message in channel:
        channel.send(message)


@pytest.fixture
def channel(server_config, client_config) -> Iterator[Channel]:
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as ch:
            yield ch


def test_ttl_round_trip_and_range(channel: Channel) -> None:
    channel.set_ttl(7)
    assert channel.get_ttl() == 7
    channel.set_ttl(255)
    assert channel.get_ttl() == 255
    for bad in (256, -1, 1.5):
        with pytest.raises(dtlskit.ConfigurationError, match=r"1\.\.255"):
            channel.set_ttl(bad)  # type: ignore[arg-type]
    assert channel.get_ttl() == 255
    channel.send(b"ttl")  # still works
    assert channel.recv(timeout=WAIT) == b"ttl"


@needs_ipv6
def test_ipv6_hop_limit_and_ipv6_only(server_config) -> None:
    with sync.listen("::1", 0, config=server_config, ipv6_only=True) as lst:
        assert lst.get_ipv6_only() is True
        lst.set_ttl(9)
        assert lst.get_ttl() == 9
        with pytest.raises(dtlskit.TransportError, match="bound socket") as info:
            lst.set_ipv6_only(False)
        assert isinstance(info.value, OSError)
    with sync.listen("127.0.0.1", 0, config=server_config) as lst:
        with pytest.raises(dtlskit.TransportError, match="IPv6 sockets only"):
            lst.set_ipv6_only(True)
        assert lst.get_ipv6_only() is False


@pytest.mark.parametrize(
    ("setter", "getter"),
    [
        ("set_recv_buffer_size", "get_recv_buffer_size"),
        ("set_send_buffer_size", "get_send_buffer_size"),
    ],
)
def test_buffer_sizes(channel: Channel, setter: str, getter: str) -> None:
    getattr(channel, setter)(65536)
    assert getattr(channel, getter)() >= 65536  # Linux doubles the value it is given
    for bad in (MIN_BUFFER_SIZE - 1, MAX_BUFFER_SIZE + 1, 0):
        with pytest.raises(dtlskit.ConfigurationError, match=r"1 KiB.*16 MiB"):
            getattr(channel, setter)(bad)


def test_buffer_sizes_on_a_listener(server_config) -> None:
    with sync.listen("127.0.0.1", 0, config=server_config) as lst:
        lst.set_recv_buffer_size(256 * 1024)
        assert lst.get_recv_buffer_size() >= 256 * 1024
        lst.set_send_buffer_size(MIN_BUFFER_SIZE)
        assert lst.get_send_buffer_size() >= MIN_BUFFER_SIZE


def test_bind_to_device(server_config, client_config) -> None:
    with sync.listen("127.0.0.1", 0, config=server_config) as lst:
        try:
            lst.bind_to_device("lo")
        except dtlskit.TransportError as exc:
            assert os.geteuid() != 0
            assert "permission" in str(exc) and "'lo'" in str(exc)
            return
        # Bound to the loopback interface, it still serves loopback peers.
        port = lst.getsockname()[1]
        with (
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client,
            lst.accept(timeout=WAIT) as accepted,
        ):
            client.send(b"via lo")
            assert accepted.recv(timeout=WAIT) == b"via lo"
        with pytest.raises(dtlskit.TransportError, match="no-such-if0"):
            lst.bind_to_device("no-such-if0")


def test_error_is_zero_and_names(channel: Channel, server_config) -> None:
    assert channel.error() == 0
    assert channel.fileno() >= 0
    with sync.listen("127.0.0.1", 0, config=server_config) as lst:
        assert lst.error() == 0
        host, port = lst.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert "listening" in repr(lst)
    assert lst.closed
    with pytest.raises(dtlskit.TransportError, match="closed"):
        lst.set_ttl(3)


def test_options_after_close_raise_clearly(server_config, client_config) -> None:
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        channel = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
        channel.close()
    with pytest.raises(dtlskit.TransportError, match="closed"):
        channel.getsockname()


@needs_ipv6
def test_listen_on_ipv6_wildcard_is_dual_stack(server_config, client_config) -> None:
    # Host None would bind one socket per family (tests/test_binding_and_resolution.py).
    with sync.listen("::", 0, config=server_config) as lst:
        assert lst.getsockname()[0] == "::"
        assert lst.get_ipv6_only() is False
        port = lst.getsockname()[1]
        for host in ("127.0.0.1", "::1"):
            with (
                sync.connect(host, port, config=client_config, timeout=WAIT) as client,
                lst.accept(timeout=WAIT) as accepted,
            ):
                client.send(host.encode())
                assert accepted.recv(timeout=WAIT) == host.encode()
