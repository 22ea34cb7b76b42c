"""dtlskit.sync.connect against real sockets: refused ports, silent peers, bad certificates,
address fallback, local address."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import dtlskit
from dtlskit import sync
from dtlskit._frontend import sockets as _sockets
from dtlskit.certs import PKIFiles
from dtlskit.sync import Channel
from tests.helpers import WAIT, has_ipv6
from tests.peers import free_udp_port


def echo(channel: Channel) -> None:
    for message in channel:
        channel.send(message)


@pytest.fixture
def echo_server(server_config: dtlskit.DTLSConfiguration) -> Iterator[sync.Server]:
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        yield server


def test_closed_port_is_refused(client_config) -> None:
    port = free_udp_port()
    # Generous safety timeout: a refusal must come from the ICMP error, long before it (a
    # HandshakeTimeout here would mean the ICMP error was missed).
    with pytest.raises(dtlskit.ConnectionRefused) as info:
        sync.connect("127.0.0.1", port, config=client_config, timeout=20)
    assert isinstance(info.value, ConnectionRefusedError)
    assert f"127.0.0.1:{port}" in str(info.value)


def test_handshake_timeout_against_a_silent_socket(client_config) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        config = client_config.replace(handshake_timeout=1.5)
        with pytest.raises(dtlskit.HandshakeTimeout) as info:
            sync.connect("127.0.0.1", port, config=config)
        assert "1.5 s" in str(info.value)
        assert isinstance(info.value, TimeoutError)
        # The first flight and its retransmission (after 1 s) reached the silent peer.
        silent.settimeout(1.0)
        hellos = [silent.recv(65536), silent.recv(65536)]
        assert all(hello[0] == 0x16 for hello in hellos)


def test_connect_timeout_shorter_than_the_handshake_timeout(client_config) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(dtlskit.HandshakeTimeout, match=r"0\.3 s"):
            sync.connect("127.0.0.1", silent.getsockname()[1], config=client_config, timeout=0.3)
    with pytest.raises(dtlskit.ConfigurationError, match="timeout"):
        sync.connect("127.0.0.1", 9, config=client_config, timeout=0)


def test_untrusted_server_is_rejected(echo_server: sync.Server, other_pki: PKIFiles) -> None:
    port = echo_server.addresses[0][1]
    config = dtlskit.DTLSConfiguration.client(cafile=other_pki.ca_cert, server_hostname="localhost")
    with pytest.raises(dtlskit.CertificateVerificationError) as info:
        sync.connect("127.0.0.1", port, config=config, timeout=WAIT)
    assert "certificate" in str(info.value)
    assert echo_server.is_serving()


def test_wrong_host_name_is_rejected(echo_server: sync.Server, client_config) -> None:
    port = echo_server.addresses[0][1]
    with pytest.raises(dtlskit.CertificateVerificationError):
        sync.connect(
            "127.0.0.1", port, config=client_config, server_hostname="example.org", timeout=WAIT
        )


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this host")
def test_refused_address_falls_back_to_the_next(
    echo_server: sync.Server, client_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name resolving to ::1 first (nothing listens there: refused) and then to 127.0.0.1.
    port = echo_server.addresses[0][1]
    resolved = [(socket.AF_INET6, ("::1", port, 0, 0)), (socket.AF_INET, ("127.0.0.1", port))]
    monkeypatch.setattr(_sockets, "resolve", lambda host, port, **kw: resolved)
    with sync.connect("dual.example", port, config=client_config, timeout=WAIT) as channel:
        assert channel.getpeername() == ("127.0.0.1", port)
        channel.send(b"hi")
        assert channel.recv(timeout=WAIT) == b"hi"
    # With only the refusing address, the refusal is what the caller sees.
    monkeypatch.setattr(_sockets, "resolve", lambda host, port, **kw: resolved[:1])
    with pytest.raises(dtlskit.ConnectionRefused):
        sync.connect("dual.example", port, config=client_config, timeout=WAIT)


def test_local_address(echo_server: sync.Server, client_config) -> None:
    port = echo_server.addresses[0][1]
    local_port = free_udp_port()
    with sync.connect(
        "127.0.0.1", port, config=client_config, local_addr=("127.0.0.1", local_port)
    ) as channel:
        assert channel.getsockname() == ("127.0.0.1", local_port)
        channel.send(b"from a chosen port")
        assert channel.recv(timeout=WAIT) == b"from a chosen port"


def test_server_gone_ends_an_established_session(server_config, client_config) -> None:
    server = sync.serve(echo, "127.0.0.1", 0, config=server_config)
    port = server.addresses[0][1]
    try:
        channel = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
    finally:
        # Vanish without close_notify: stop the I/O threads, then close (nothing left to send).
        for io in server._ios:
            io.stop()
        server.close()
    with channel:
        channel.send(b"anyone?")  # answered by the host with ICMP port unreachable
        with pytest.raises(dtlskit.ConnectionLost, match="port unreachable"):
            channel.recv(timeout=WAIT)
        with pytest.raises(dtlskit.ConnectionLost):
            channel.send(b"still there?")
