"""``dtlskit.core.connection``: the engine's contract at its edges: misuse, what it reports
before and after a handshake, the path-minimum MTU per address family, and the slow path of
``seal`` when renegotiation is allowed. Real OpenSSL handshakes in memory."""

from __future__ import annotations

import pytest

import dtlskit
from dtlskit.core import DTLSConnection, State
from dtlskit.core.connection import fallback_mtu_for
from dtlskit.testing import MemoryPair
from dtlskit.testing.memory import SERVER_ADDRESS


def test_the_path_minimum_mtu_depends_on_the_address_family() -> None:
    assert fallback_mtu_for(("192.0.2.1", 1)) == 548
    assert fallback_mtu_for(("2001:db8::1", 1, 0, 0)) == 1232
    assert fallback_mtu_for(("fe80::1%eth0", 1, 0, 2)) == 1232
    assert fallback_mtu_for(("not:an:address", 1)) == 548
    assert fallback_mtu_for(None) == 548


def test_start_server_is_for_a_fresh_server_engine(server_config, client_config) -> None:
    client = DTLSConnection(client_config, server=False, peer_address=SERVER_ADDRESS)
    with pytest.raises(dtlskit.UsageError, match="start_server"):
        client.start_server(b"\x16", now=0.0)
    server = DTLSConnection(server_config, server=True, peer_address=("127.0.0.1", 1))
    assert not server.start_server(b"\x16\xfe\xfd" + bytes(10) + b"\x00\x01\x01", now=0.0)
    assert server.state is State.TERMINATED
    assert isinstance(server.error, dtlskit.HandshakeError)
    with pytest.raises(dtlskit.UsageError):
        server.start_server(b"", now=0.0)


def test_what_an_engine_reports_before_and_after_its_handshake(server_config, client_config):
    pair = MemoryPair(server_config, client_config)
    assert pair.client.version is None and pair.client.cipher is None
    assert pair.client.cleartext_mtu == pair.client.mtu - 64  # no keys yet: an estimate
    assert pair.client.config is client_config
    pair.client.note_drop("queue_full")
    assert pair.client.statistics().drops == {"queue_full": 1}
    assert pair.handshake()
    assert pair.client.version == "DTLSv1.2"
    assert pair.client.cleartext_mtu < pair.client.mtu


def test_seal_takes_the_general_path_when_renegotiation_is_allowed(server_config, client_config):
    pair = MemoryPair(
        server_config.replace(allow_renegotiation=True),
        client_config.replace(allow_renegotiation=True),
    )
    assert pair.handshake()
    assert pair.client.seal(b"by the general path") is None  # handed to send()
    pair.pump()
    pair.run(lambda: pair.server_messages() == [b"by the general path"])
    assert pair.server_messages() == [b"by the general path"]


def test_seal_refuses_empty_and_oversized_messages(server_config, client_config) -> None:
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    with pytest.raises(dtlskit.InvalidMessage):
        pair.client.seal(b"")
    with pytest.raises(dtlskit.MessageTooLarge):
        pair.client.seal(bytes(pair.client.cleartext_mtu + 1))
    record = pair.client.seal(memoryview(b"a view"))
    assert isinstance(record, bytes) and record[0] == 23


def test_a_server_hostname_that_is_no_host_name_is_a_configuration_error(client_config):
    with pytest.raises(dtlskit.ConfigurationError, match="not a valid host name"):
        DTLSConnection(
            client_config.replace(server_hostname="x" * 70 + ".example"),
            server=False,
            peer_address=SERVER_ADDRESS,
        )


def test_a_forged_record_on_the_general_path_is_dropped_and_counted(server_config, client_config):
    pair = MemoryPair(
        server_config.replace(allow_renegotiation=True),
        client_config.replace(allow_renegotiation=True),
    )
    assert pair.handshake()
    forged = bytes([23, 0xFE, 0xFD, 0, 1]) + (99).to_bytes(6, "big") + (40).to_bytes(2, "big")
    pair.client.receive_datagram(forged + bytes(40), pair.clock.now)
    assert pair.client.statistics().drops == {"bad_record": 1}
    assert pair.client.state is State.ESTABLISHED


def test_abort_is_idempotent(server_config, client_config):
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    pair.client.abort(dtlskit.ConnectionLost("first"))
    pair.client.abort(dtlskit.ConnectionLost("second"))
    assert str(pair.client.error) == "first"
    assert pair.client.state is State.TERMINATED
