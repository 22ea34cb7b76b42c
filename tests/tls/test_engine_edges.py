"""Edges of the sans-I/O TLS engine: misuse, refused settings, and the rarer endings
(real OpenSSL, in-memory pairs, a hand-held clock)."""

from __future__ import annotations

import ssl
from datetime import datetime

import pytest

import dtlskit
from dtlskit.core import events as ev
from dtlskit.core.connection import State
from dtlskit.core.tls import TLSConnection, check_framing, check_tls_config

from .test_engine import pair, pump


def established(server_cfg, client_cfg, **kwargs):
    client, server = pair(server_cfg, client_cfg, **kwargs)
    pump(client, server)
    assert client.state is State.ESTABLISHED, client.error
    assert server.state is State.ESTABLISHED, server.error
    return client, server


# -- configuration and arguments ------------------------------------------------------------------


def test_check_tls_config_refuses_what_is_not_a_configuration() -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="must be a DTLSConfiguration"):
        check_tls_config(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["hello_verify_per_second", "first_flight_timeout"])
def test_datagram_only_limits_refused(server_config, name: str) -> None:
    limits = dtlskit.Limits(**{name: 5.0})
    with pytest.raises(dtlskit.ConfigurationError, match=f"limits.{name}"):
        TLSConnection(server_config.replace(limits=limits), server=True)


def test_default_limits_accepted(server_config) -> None:
    assert check_tls_config(server_config) is server_config


@pytest.mark.parametrize("size", [0, -1, 2**31, True, 1.5, "10"])
def test_engine_refuses_bad_max_message_size(server_config, size: object) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="max_message_size"):
        TLSConnection(server_config, server=True, max_message_size=size)  # type: ignore[arg-type]


def test_check_framing() -> None:
    check_framing("stream", 1)
    check_framing("length-prefixed", 2**31 - 1)
    with pytest.raises(dtlskit.InvalidArgument, match="framing"):
        check_framing("lines", 10)
    for size in (0, 2**31, False, 3.0, None):
        with pytest.raises(dtlskit.InvalidArgument, match="max_message_size"):
            check_framing("stream", size)


def test_invalid_server_hostname(client_config) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="not a valid host name"):
        TLSConnection(client_config, server=False, server_hostname="bad\x00name..")


def test_client_needs_a_hostname_when_checking_it(pki) -> None:
    cfg = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert)
    with pytest.raises(dtlskit.ConfigurationError, match="check_hostname"):
        TLSConnection(cfg, server=False)


def test_ip_literal_hostname_checked_against_the_certificate(server_config, pki) -> None:
    cfg = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="127.0.0.1")
    client, server = established(server_config, cfg)
    assert server.server_name is None  # no SNI for an address (RFC 6066 §3)
    wrong = cfg.replace(server_hostname="10.9.8.7")
    client, server = pair(server_config, wrong)
    pump(client, server)
    assert isinstance(client.error, dtlskit.CertificateVerificationError)
    assert client.error.reason is dtlskit.VerificationReason.IP_ADDRESS_MISMATCH


def _naive_clock() -> datetime:
    return datetime(2020, 1, 1)  # naive: no time zone, refused


def test_bad_verify_time_refused_by_a_client(client_config) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="aware datetime"):
        TLSConnection(client_config.replace(verify_time=_naive_clock), server=False)


def test_bad_verify_time_fails_only_the_servers_handshake(pki, client_config) -> None:
    server_cfg = dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        cafile=pki.ca_cert,
        verify_mode=ssl.CERT_REQUIRED,
        verify_time=_naive_clock,
    )
    server = TLSConnection(server_cfg, server=True, peer_address=("127.0.0.1", 7))
    server.start_server(0.0)
    (event,) = list(iter(server.next_event, None))
    assert isinstance(event, ev.ConnectionTerminated)
    assert isinstance(event.error, dtlskit.HandshakeFailure)
    assert "aware datetime" in str(event.error) and "127.0.0.1:7" in str(event.error)
    assert server.state is State.TERMINATED


# -- misuse ---------------------------------------------------------------------------------------


def test_verbs_in_the_wrong_role_or_state(server_config, client_config) -> None:
    server = TLSConnection(server_config, server=True)
    client = TLSConnection(client_config, server=False)
    with pytest.raises(dtlskit.UsageError, match="connect"):
        server.connect(0.0)
    with pytest.raises(dtlskit.UsageError, match="start_server"):
        client.start_server(0.0)
    with pytest.raises(dtlskit.UsageError, match="before connect"):
        server.receive_data(b"\x16\x03\x01", 0.0)
    assert client.version is None  # not started
    client.connect(0.0)
    with pytest.raises(dtlskit.UsageError, match="connect"):
        client.connect(0.0)
    server.start_server(0.0)
    with pytest.raises(dtlskit.UsageError, match="start_server"):
        server.start_server(0.0)


def test_send_before_established(server_config, client_config) -> None:
    client, server = pair(server_config, client_config)
    with pytest.raises(dtlskit.ConnectionLost, match="not established yet"):
        client.send(b"early")
    assert client.state is State.HANDSHAKING  # the attempt does not end anything
    pump(client, server)
    assert client.state is State.ESTABLISHED


@pytest.mark.parametrize("data", [b"", bytearray(), memoryview(b"")])
def test_send_empty_refused(server_config, client_config, data) -> None:
    client, _ = established(server_config, client_config)
    with pytest.raises(dtlskit.InvalidMessage, match="empty"):
        client.send(data)
    assert client.state is State.ESTABLISHED


def test_send_text_refused_with_a_hint(server_config, client_config) -> None:
    client, _ = established(server_config, client_config)
    with pytest.raises(dtlskit.InvalidMessage, match="encode"):
        client.send("text")  # type: ignore[arg-type]


def test_send_bytearray_and_memoryview(server_config, client_config) -> None:
    client, server = established(server_config, client_config)
    client.send(bytearray(b"ab"))
    client.send(memoryview(b"cd"))
    server.receive_data(client.data_to_send(), 1.0)
    got = b"".join(
        e.data for e in iter(server.next_event, None) if isinstance(e, ev.MessageReceived)
    )
    assert got == b"abcd"


def test_empty_data_during_handshake_changes_nothing(server_config, client_config) -> None:
    client, server = pair(server_config, client_config)
    server.receive_data(b"", 0.0)
    assert server.state is State.HANDSHAKING and not server.has_work()
    pump(client, server)
    assert server.state is State.ESTABLISHED


def test_data_after_the_end_is_ignored(server_config, client_config) -> None:
    client, server = established(server_config, client_config)
    client.send(b"late")
    late = client.data_to_send()
    server.close()
    list(iter(server.next_event, None))
    server.receive_data(late, 1.0)
    server.receive_eof(1.0)
    assert server.next_event() is None and server.state is State.CLOSED


def test_write_openssl_refuses_ends_the_session(server_config, client_config) -> None:
    client, _ = established(server_config, client_config)
    client.ssl_object.shutdown()  # behind the engine's back: OpenSSL now refuses to write
    with pytest.raises(dtlskit.DTLSError) as info:
        client.send(b"after shutdown")
    assert client.state is State.TERMINATED
    assert client.error is info.value
    events = list(iter(client.next_event, None))
    assert isinstance(events[-1], ev.ConnectionTerminated) and events[-1].error is info.value


# -- closing and endings --------------------------------------------------------------------------


def test_close_during_handshake(server_config, client_config) -> None:
    client, _server = pair(server_config, client_config)
    client.data_to_send()
    client.close()
    assert client.state is State.CLOSED
    assert client.data_to_send() == b""  # no close_notify before keys exist
    assert list(iter(client.next_event, None)) == [ev.SessionClosed(by_peer=False)]
    assert isinstance(client.error, dtlskit.ConnectionClosedLocally)
    client.close()  # idempotent
    assert client.next_event() is None


def test_eof_during_handshake(server_config, client_config) -> None:
    client, server = pair(server_config, client_config)
    server.receive_data(client.data_to_send(), 0.0)
    server.receive_eof(0.0)
    (event,) = list(iter(server.next_event, None))
    assert isinstance(event.error, dtlskit.HandshakeFailure)  # type: ignore[attr-defined]
    assert "during the handshake" in str(event.error)  # type: ignore[attr-defined]


def test_abort_is_idempotent(server_config, client_config) -> None:
    client, _ = established(server_config, client_config)
    first = dtlskit.ConnectionLost("gone")
    client.abort(first)
    client.abort(dtlskit.ConnectionLost("again"))
    assert client.error is first
    events = list(iter(client.next_event, None))
    assert [type(e) for e in events][-1] is ev.ConnectionTerminated
    assert sum(isinstance(e, ev.ConnectionTerminated) for e in events) == 1


def test_close_notify_in_the_middle_of_a_framed_message(server_config, client_config) -> None:
    raw = TLSConnection(client_config, server=False)  # a stream peer writes the frames by hand
    server = TLSConnection(
        server_config, server=True, peer_address=("127.0.0.1", 5), framing="length-prefixed"
    )
    server.start_server(0.0)
    raw.connect(0.0)
    pump(raw, server)
    raw.send((100).to_bytes(4, "big") + b"abc")
    raw.close()
    server.receive_data(raw.data_to_send(), 1.0)
    events = list(iter(server.next_event, None))
    assert isinstance(events[-1], ev.ConnectionTerminated)
    assert isinstance(server.error, dtlskit.ConnectionLost)
    assert "middle of a framed message" in str(server.error) and "7 bytes" in str(server.error)
    assert server.state is State.TERMINATED and server.partial_message_bytes == 0
    assert server.data_to_send()  # our close_notify still answers theirs


def test_set_idle_timeout_once_established(server_config, client_config) -> None:
    _client, server = established(server_config, client_config)
    assert server.get_timer() is None
    server.set_idle_timeout(10.0, 5.0)
    assert server.get_timer() == 15.0
    server.handle_timer(14.0)
    assert server.state is State.ESTABLISHED
    server.set_idle_timeout(None, 20.0)
    assert server.get_timer() is None
    server.handle_timer(1000.0)
    assert server.state is State.ESTABLISHED


# -- properties -----------------------------------------------------------------------------------


def test_properties(server_config, client_config) -> None:
    client, server = established(
        server_config, client_config, framing="length-prefixed", max_message_size=4096
    )
    assert client.max_message_size == 4096 and client.framing == "length-prefixed"
    assert client.config is client_config and not client.is_server and server.is_server
    assert client.handshake_completed and client.cipher
    chain = client.peer_certificate_chain
    assert chain and chain[0] == client.peer_certificate
    assert server.peer_certificate is None and server.peer_certificate_chain == []


# -- security checks after the handshake ----------------------------------------------------------


def test_resumed_unverified_session_refused(server_config, client_config) -> None:
    """Defence in depth: a Session made without verification is never offered to a verifying
    client (its policy differs), but one slipped in behind the engine's back (through
    ssl_object) and resumed must still be refused, as it carries no verified certificate."""
    from dtlskit.core import _bindings

    lax = dtlskit.DTLSConfiguration.client(
        verify_mode=ssl.CERT_NONE, check_hostname=False, server_hostname="localhost"
    )
    client, server = pair(server_config, lax)
    pump(client, server)
    assert client.state is State.ESTABLISHED, client.error
    session = client.session
    assert session is not None
    client2 = TLSConnection(
        client_config,
        server=False,
        peer_address=("127.0.0.1", 3),
        context=client.ssl_object.get_context(),
    )
    _bindings.set_session(client2.ssl_object, session._ssl_session())
    server2 = TLSConnection(server_config, server=True, context=server.ssl_object.get_context())
    server2.start_server(0.0)
    client2.connect(0.0)
    pump(client2, server2)
    assert client2.session_reused
    assert client2.state is State.TERMINATED
    assert isinstance(client2.error, dtlskit.CertificateVerificationError)
    assert client2.error.reason is dtlskit.VerificationReason.UNVERIFIED_SESSION
    assert not client2.handshake_completed


def test_psk_only_client_refuses_a_certificate_server(server_config) -> None:
    client_cfg = dtlskit.DTLSConfiguration.client(psk=("dev1", b"k" * 16))
    client, server = pair(server_config, client_cfg)
    pump(client, server)
    assert client.state is State.TERMINATED
    assert isinstance(client.error, dtlskit.HandshakeFailure)
    assert "did not accept our PSK" in str(client.error)
    assert not client.handshake_completed


def test_server_sees_the_client_leaf_first_in_the_chain(pki) -> None:
    """OpenSSL's server-side chain leaves out the client's leaf: the property puts it first."""
    server_cfg = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, cafile=pki.ca_cert, verify_mode=ssl.CERT_REQUIRED
    )
    client_cfg = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert,
        server_hostname="localhost",
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )
    _client, server = established(server_cfg, client_cfg)
    chain = server.peer_certificate_chain
    assert chain[0] == server.peer_certificate
    assert len(chain) == len(set(chain))  # the leaf is not listed twice
