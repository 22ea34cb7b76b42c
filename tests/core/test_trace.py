"""The handshake trace (``dtlskit.core.trace``): flights, retransmissions, alerts and session
resumption described in words on the ``dtlskit.handshake`` and ``dtlskit.datagrams`` loggers,
over real in-memory handshakes (real OpenSSL, a scripted fake network for the loss)."""

from __future__ import annotations

import logging
import random
import ssl

import pytest

import dtlskit
from dtlskit.core import DTLSConnection, ServerEngine
from dtlskit.core.trace import alerts_in, describe_records
from dtlskit.testing import MemoryPair
from dtlskit.testing.memory import SERVER_ADDRESS, Datagram


def trace(caplog: pytest.LogCaptureFixture, name: str = "dtlskit.handshake") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def alert_record(level: int, description: int, epoch: int = 0) -> bytes:
    return (
        bytes([21, 0xFE, 0xFD])
        + epoch.to_bytes(2, "big")
        + (7).to_bytes(6, "big")
        + (2).to_bytes(2, "big")
        + bytes([level, description])
    )


def test_flights_of_a_real_handshake_are_named(server_config, client_config):
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    described = [describe_records(d.data) for d in pair.network.log]
    assert described[:3] == ["ClientHello", "HelloVerifyRequest", "ClientHello"]
    assert described[3] == "ServerHello, Certificate, ServerKeyExchange, ServerHelloDone"
    assert described[4] == "ClientKeyExchange, ChangeCipherSpec, Finished (encrypted)"
    assert described[5] == "NewSessionTicket, ChangeCipherSpec, Finished (encrypted)"


def test_alerts_in_the_clear_are_named_and_encrypted_ones_are_not_guessed():
    fatal = alert_record(2, 48)
    assert describe_records(fatal) == "alert fatal unknown_ca"
    assert alerts_in([fatal, alert_record(1, 0)]) == ["fatal unknown_ca", "warning close_notify"]
    assert describe_records(alert_record(2, 48, epoch=1)) == "alert (encrypted)"
    assert alerts_in(alert_record(2, 48, epoch=1)) == []


def test_describing_random_bytes_never_raises():
    rng = random.Random(9)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        assert isinstance(describe_records(data), str)
    assert describe_records(b"\x16\xfe") == "2 bytes unframed"
    assert describe_records(b"") == "nothing"


def test_handshake_flights_are_logged_when_enabled(caplog, server_config, client_config):
    caplog.set_level(logging.DEBUG, logger="dtlskit.handshake")
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    lines = trace(caplog)
    client = [line for line in lines if line.startswith("127.0.0.1:4433: ")]
    assert client[:3] == [
        "127.0.0.1:4433: sent ClientHello",
        "127.0.0.1:4433: received HelloVerifyRequest",
        "127.0.0.1:4433: sent ClientHello",
    ]
    assert any("handshake complete (DTLSv1.2" in line for line in client)
    server = [line for line in lines if line.startswith("127.0.0.1:40000: ")]
    assert (
        "127.0.0.1:40000: received ClientKeyExchange, ChangeCipherSpec, Finished (encrypted)"
        in (server)
    )
    assert trace(caplog, "dtlskit.datagrams") == []  # its own logger, not enabled here


def test_nothing_is_logged_by_default(caplog, server_config, client_config):
    caplog.set_level(logging.INFO)  # an application logging INFO sees no handshake trace
    assert MemoryPair(server_config, client_config).handshake()
    assert trace(caplog) == [] and trace(caplog, "dtlskit.datagrams") == []


def test_datagrams_are_logged_with_their_sizes(caplog, server_config, client_config):
    caplog.set_level(logging.DEBUG, logger="dtlskit.datagrams")
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    first = pair.network.log[0].data
    assert f"127.0.0.1:4433: sending {len(first)} bytes: ClientHello" in trace(
        caplog, "dtlskit.datagrams"
    )


def test_a_retransmission_is_logged(caplog, server_config, client_config):
    caplog.set_level(logging.DEBUG, logger="dtlskit.handshake")
    dropped: list[Datagram] = []

    def lose_the_first_datagram(datagram: Datagram) -> list[Datagram]:
        if not dropped:
            dropped.append(datagram)
            return []
        return [datagram]

    pair = MemoryPair(server_config, client_config)
    pair.network.filters.append(lose_the_first_datagram)
    assert pair.handshake()
    assert pair.client.statistics().retransmissions == 1
    assert "127.0.0.1:4433: no answer in time: retransmission 1 of ClientHello (MTU 1200)" in (
        trace(caplog)
    )


def test_a_failed_handshake_logs_the_alert_we_sent(caplog, server_config, other_pki):
    caplog.set_level(logging.DEBUG, logger="dtlskit.handshake")
    stranger = dtlskit.DTLSConfiguration.client(
        cafile=other_pki.ca_cert, server_hostname="localhost"
    )
    pair = MemoryPair(server_config, stranger)
    pair.start()
    pair.run()
    while pair.deliver_one():  # the alert still in flight reaches the server
        pass
    failed = [line for line in trace(caplog) if "handshake failed" in line]
    assert failed and failed[0].startswith("127.0.0.1:4433: handshake failed: ")
    assert "(we sent the alert fatal " in failed[0]
    assert any("received alert fatal" in line for line in trace(caplog))  # the server's side


def client_with_session(client_config, session):
    return DTLSConnection(client_config, server=False, peer_address=SERVER_ADDRESS, session=session)


def resumed_pair(server, client_config, session):
    pair = MemoryPair(client_config, client_config, server=server)
    pair.client = client_with_session(client_config, session)
    assert pair.handshake()
    return pair


@pytest.fixture
def session_and_server(server_config, client_config):
    server = ServerEngine(server_config)
    pair = MemoryPair(server_config, client_config, server=server)
    assert pair.handshake()
    assert pair.client.session is not None
    return pair.client.session, server


def completion(caplog) -> str:
    (line,) = [line for line in trace(caplog) if "127.0.0.1:4433: handshake complete" in line]
    return line


def test_why_a_session_was_not_resumed(caplog, server_config, client_config, session_and_server):
    session, server = session_and_server
    caplog.set_level(logging.DEBUG, logger="dtlskit.handshake")
    assert resumed_pair(server, client_config, session).client.session_reused
    assert completion(caplog).endswith("; session resumed")

    caplog.clear()
    assert not resumed_pair(
        ServerEngine(server_config), client_config, session
    ).client.session_reused
    assert "session not resumed: the server started a full handshake" in completion(caplog)

    caplog.clear()
    by_ip = client_config.replace(server_hostname="127.0.0.1")
    assert not resumed_pair(server, by_ip, session).client.session_reused
    assert (
        "session not resumed: the session was made for server name 'localhost', not "
        "'127.0.0.1'" in completion(caplog)
    )

    caplog.clear()
    unverified = client_config.replace(verify_mode=ssl.CERT_NONE)
    assert not resumed_pair(server, unverified, session).client.session_reused
    assert "made under other verification settings" in completion(caplog)


def test_other_record_types_and_fragments_are_named():
    heartbeat = bytes([24, 0xFE, 0xFD, 0, 0]) + bytes(6) + b"\x00\x01\x00"
    assert describe_records(heartbeat) == "record type 24"
    body = bytes(10)
    fragment = (
        bytes([11])
        + (100).to_bytes(3, "big")
        + (2).to_bytes(2, "big")
        + (40).to_bytes(3, "big")
        + len(body).to_bytes(3, "big")
        + body
    )
    record = bytes([22, 0xFE, 0xFD, 0, 0]) + bytes(6) + len(fragment).to_bytes(2, "big") + fragment
    assert describe_records(record) == "Certificate (bytes 40..50 of 100)"
