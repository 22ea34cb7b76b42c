"""dtlskit.sync.quic (blocking) on real sockets on loopback: the asyncio tests' mirror."""

from __future__ import annotations

import socket
import threading

import pytest

import dtlskit
from dtlskit.quic import StreamError
from dtlskit.sync import quic


def echo_messages(channel: quic.QuicChannel) -> None:
    for message in channel:
        channel.send(message)


def echo_streams(channel: quic.QuicChannel) -> None:
    while True:
        stream = channel.accept_stream()
        try:
            stream.write(stream.read(), end=True)
        except StreamError:
            continue


def test_messages_are_streams_both_ways(quic_server_config, quic_client_config):
    with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as server:
        port = server.addresses[0][1]
        with quic.connect("127.0.0.1", port, config=quic_client_config, timeout=20) as channel:
            assert channel.alpn_protocol == "hq-interop"
            for size in (1, 1000, 100_000):
                payload = b"%d" % size * (size // len(b"%d" % size) + 1)
                channel.send(payload)
                assert channel.recv(timeout=20) == payload
            assert channel.statistics().messages_received == 3


def test_request_answer_on_the_same_stream(quic_server_config, quic_client_config):
    with quic.serve(echo_streams, "127.0.0.1", 0, config=quic_server_config) as server:
        port = server.addresses[0][1]
        with quic.connect("localhost", port, config=quic_client_config, timeout=20) as channel:
            for i in range(5):
                assert channel.request(b"message %d" % i, timeout=20) == b"message %d" % i
            channel.send(b"via send")
            assert channel.recv(timeout=20) == b"via send"


def test_datagrams_when_asked(quic_server_config, quic_client_config):
    def server(channel: quic.QuicChannel) -> None:
        while True:
            channel.send_datagram(channel.recv_datagram())

    with quic.serve(server, "127.0.0.1", 0, config=quic_server_config, datagrams=True) as srv:
        port = srv.addresses[0][1]
        with quic.connect(
            "127.0.0.1", port, config=quic_client_config, timeout=20, datagrams=True
        ) as channel:
            channel.send_datagram(b"unreliable")
            assert channel.recv_datagram(timeout=20) == b"unreliable"


def test_recv_timeout_leaves_the_connection_usable(quic_server_config, quic_client_config):
    with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as server:
        port = server.addresses[0][1]
        with quic.connect("127.0.0.1", port, config=quic_client_config, timeout=20) as channel:
            with pytest.raises(dtlskit.DTLSTimeoutError):
                channel.recv(timeout=0)
            channel.send(b"after")
            assert channel.recv(timeout=20) == b"after"


def test_alpn_mismatch_names_both_sides(quic_server_config, quic_client_config):
    with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as server:
        port = server.addresses[0][1]
        config = quic_client_config.replace(alpn_protocols=["h3"])
        with pytest.raises(dtlskit.HandshakeFailure) as info:
            quic.connect("127.0.0.1", port, config=config, timeout=20)
        assert "we offered ['h3']" in str(info.value)
        assert "['http/1.0', 'hq-interop']" in str(info.value)


def test_handshake_timeout_against_a_silent_peer(quic_client_config):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        config = quic_client_config.replace(handshake_timeout=0.5)
        with pytest.raises(dtlskit.HandshakeTimeout):
            quic.connect("127.0.0.1", silent.getsockname()[1], config=config)
    finally:
        silent.close()


def test_peer_connection_close_carries_code_and_reason(quic_server_config, quic_client_config):
    def server(channel: quic.QuicChannel) -> None:
        channel.recv()
        channel.close(7, "bye now")

    with quic.serve(server, "127.0.0.1", 0, config=quic_server_config) as srv:
        port = srv.addresses[0][1]
        with quic.connect("127.0.0.1", port, config=quic_client_config, timeout=20) as channel:
            channel.send(b"x")
            with pytest.raises(dtlskit.ConnectionLost) as info:
                channel.recv(timeout=20)
            assert (info.value.error_code, info.value.reason_phrase) == (7, "bye now")


def test_many_clients_at_once(quic_server_config, quic_client_config):
    results: list[bytes] = []
    errors: list[BaseException] = []

    def client(i: int, port: int) -> None:
        try:
            with quic.connect("127.0.0.1", port, config=quic_client_config, timeout=30) as ch:
                ch.send(b"client %d" % i)
                results.append(ch.recv(timeout=30))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with quic.serve(echo_messages, "127.0.0.1", 0, config=quic_server_config) as server:
        port = server.addresses[0][1]
        threads = [threading.Thread(target=client, args=(i, port)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors
    assert sorted(results) == sorted(b"client %d" % i for i in range(8))


def test_oversized_stream_is_refused_and_the_connection_goes_on(
    quic_server_config, quic_client_config
):
    with quic.serve(
        echo_streams, "127.0.0.1", 0, config=quic_server_config, max_stream_bytes=2048
    ) as server:
        port = server.addresses[0][1]
        with quic.connect("127.0.0.1", port, config=quic_client_config, timeout=20) as channel:
            with pytest.raises(StreamError):
                channel.request(b"y" * 50_000, timeout=20)
            assert channel.request(b"fits", timeout=20) == b"fits"
            assert server.statistics().drops["stream_too_large"] == 1
        with pytest.raises(dtlskit.ConnectionClosedLocally):
            channel.send(b"after close")
