"""The sans-I/O TLS engine, on in-memory pairs (real OpenSSL, no sockets, a hand-held clock)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from OpenSSL import SSL

import dtlskit
from dtlskit.certs import PKIFiles
from dtlskit.core import events as ev
from dtlskit.core.connection import State
from dtlskit.core.tls import SessionTicketReceived, TLSConnection


def pump(a: TLSConnection, b: TLSConnection, now: float = 0.0) -> list[ev.Event]:
    """Move bytes both ways until both are quiet; return b's and a's events, in order."""
    events: list[ev.Event] = []
    for _ in range(50):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            break
        if out_a:
            b.receive_data(out_a, now)
        if out_b:
            a.receive_data(out_b, now)
    for engine in (a, b):
        while (event := engine.next_event()) is not None:
            events.append(event)
    return events


def tls12(config: dtlskit.DTLSConfiguration) -> SSL.Context:
    """A fresh client context of ``config`` limited to TLS 1.2."""
    ctx = config.build_context(server=False, tls=True)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    return ctx


def pair(
    server_cfg: dtlskit.DTLSConfiguration,
    client_cfg: dtlskit.DTLSConfiguration,
    context: SSL.Context | None = None,
    **kwargs: object,
) -> tuple[TLSConnection, TLSConnection]:
    client = TLSConnection(
        client_cfg, server=False, peer_address=("127.0.0.1", 1), context=context, **kwargs
    )  # type: ignore[arg-type]
    server = TLSConnection(server_cfg, server=True, peer_address=("127.0.0.1", 2), **kwargs)  # type: ignore[arg-type]
    server.start_server(0.0)
    client.connect(0.0)
    return client, server


def test_handshake_and_stream(server_config, client_config) -> None:
    client, server = pair(server_config, client_config)
    events = pump(client, server)
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
    assert client.version == "TLSv1.3"
    assert sum(isinstance(e, ev.HandshakeCompleted) for e in events) == 2
    client.send(b"hello")
    client.send(b" world")
    server.receive_data(client.data_to_send(), 1.0)
    got = b"".join(
        e.data for e in iter(server.next_event, None) if isinstance(e, ev.MessageReceived)
    )
    assert got == b"hello world"
    big = bytes(range(256)) * 400  # 100 kB: several records
    server.send(big)
    client.receive_data(server.data_to_send(), 1.0)
    got = b"".join(
        e.data for e in iter(client.next_event, None) if isinstance(e, ev.MessageReceived)
    )
    assert got == big


def test_tls12_when_asked(pki: PKIFiles, client_config) -> None:
    server_cfg = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    client, server = pair(server_cfg, client_config, tls12(client_config))
    pump(client, server)
    assert client.version == "TLSv1.2" and server.state is State.ESTABLISHED


def test_length_prefixed_framing(server_config, client_config) -> None:
    client, server = pair(
        server_config, client_config, framing="length-prefixed", max_message_size=1000
    )
    pump(client, server)
    client.send(b"one")
    client.send(b"two")
    data = client.data_to_send()
    for i in range(len(data)):  # byte by byte: messages still come out whole
        server.receive_data(data[i : i + 1], 1.0)
    msgs = [e.data for e in iter(server.next_event, None) if isinstance(e, ev.MessageReceived)]
    assert msgs == [b"one", b"two"]
    with pytest.raises(dtlskit.MessageTooLarge):
        client.send(b"x" * 1001)
    # A peer announcing more than the limit ends the connection, naming the size.
    raw = TLSConnection(client_config, server=False)  # stream-mode peer writes a forged header
    server2 = TLSConnection(
        server_config, server=True, framing="length-prefixed", max_message_size=1000
    )
    server2.start_server(0.0)
    raw.connect(0.0)
    pump(raw, server2)
    raw.send((5000).to_bytes(4, "big") + b"abc")
    server2.receive_data(raw.data_to_send(), 1.0)
    events = list(iter(server2.next_event, None))
    assert isinstance(events[-1], ev.ConnectionTerminated)
    assert "5000 bytes" in str(events[-1].error)
    assert isinstance(events[-1].error, dtlskit.ConnectionLost)


def test_close_notify_both_ways(server_config, client_config) -> None:
    client, server = pair(server_config, client_config)
    pump(client, server)
    client.close()
    server.receive_data(client.data_to_send(), 1.0)
    events = list(iter(server.next_event, None))
    assert events == [ev.SessionClosed(by_peer=True, alert="close notify")]
    assert isinstance(server.error, dtlskit.ConnectionClosedByPeer)
    with pytest.raises(dtlskit.ConnectionClosedLocally):
        client.send(b"late")


def test_eof_without_close_notify_is_truncation(server_config, client_config) -> None:
    client, server = pair(server_config, client_config)
    pump(client, server)
    server.receive_eof(1.0)
    (event,) = [e for e in iter(server.next_event, None)]
    assert isinstance(event, ev.ConnectionTerminated)
    assert isinstance(event.error, dtlskit.ConnectionLost)
    assert "truncated" in str(event.error)


def test_close_mid_record_is_truncation(server_config, client_config) -> None:
    client, server = pair(server_config, client_config)
    pump(client, server)
    client.send(b"x" * 1000)
    data = client.data_to_send()
    server.receive_data(data[:500], 1.0)
    server.receive_eof(1.0)
    events = list(iter(server.next_event, None))
    assert not any(isinstance(e, ev.MessageReceived) for e in events)
    assert "truncated" in str(events[-1].error)  # type: ignore[attr-defined]


def test_garbage_fails_the_handshake(server_config) -> None:
    server = TLSConnection(server_config, server=True, peer_address=("127.0.0.1", 9))
    server.start_server(0.0)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    (event,) = list(iter(server.next_event, None))
    assert isinstance(event, ev.ConnectionTerminated)
    assert isinstance(event.error, dtlskit.HandshakeFailure)
    assert "127.0.0.1:9" in str(event.error)


def test_oversized_record_ends_session(server_config, client_config) -> None:
    client, server = pair(server_config, client_config)
    pump(client, server)
    # An application-data record header announcing 2**14 + 2048 + 1 bytes (RFC 8446 §5.2 limit).
    server.receive_data(b"\x17\x03\x03" + (2**14 + 2049).to_bytes(2, "big") + b"\0" * 100, 1.0)
    events = list(iter(server.next_event, None))
    assert isinstance(events[-1], ev.ConnectionTerminated)
    assert isinstance(events[-1].error, dtlskit.ConnectionLost)


def test_handshake_deadline(server_config) -> None:
    server = TLSConnection(server_config.replace(handshake_timeout=5.0), server=True)
    server.start_server(10.0)
    assert server.get_timer() == 15.0
    server.handle_timer(14.9)
    assert server.next_event() is None
    server.handle_timer(15.0)
    (event,) = list(iter(server.next_event, None))
    assert isinstance(event.error, dtlskit.HandshakeTimeout)  # type: ignore[attr-defined]


def test_idle_deadline(server_config, client_config) -> None:
    client, server = pair(server_config.replace(idle_timeout=30.0), client_config)
    pump(client, server)
    assert server.get_timer() == 30.0
    client.send(b"ping")
    server.receive_data(client.data_to_send(), 20.0)
    assert server.get_timer() == 50.0
    server.handle_timer(50.0)
    events = list(iter(server.next_event, None))
    assert "idle" in str(events[-1].error)  # type: ignore[attr-defined]


def test_dtls_only_fields_refused(server_config) -> None:
    for field, value in (
        ("mtu", 1400),
        ("cookie_secret", b"k" * 16),
        ("srtp_profiles", ("SRTP_AES128_CM_SHA1_80",)),
        ("initial_retransmit_timeout", 2.0),
    ):
        with pytest.raises(dtlskit.ConfigurationError, match=field):
            TLSConnection(server_config.replace(**{field: value}), server=True)
    with pytest.raises(dtlskit.ConfigurationError, match="framing"):
        TLSConnection(server_config, server=True, framing="lines")  # type: ignore[arg-type]


def test_wrong_ca_and_hostname(server_config, pki: PKIFiles, other_pki: PKIFiles) -> None:
    client, server = pair(
        server_config,
        dtlskit.DTLSConfiguration.client(cafile=other_pki.ca_cert, server_hostname="localhost"),
    )
    pump(client, server)
    assert isinstance(client.error, dtlskit.CertificateVerificationError)
    assert client.error.reason is dtlskit.VerificationReason.UNKNOWN_ISSUER
    client, server = pair(
        server_config,
        dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="wrong.example"),
    )
    pump(client, server)
    assert isinstance(client.error, dtlskit.CertificateVerificationError)
    assert client.error.reason is dtlskit.VerificationReason.HOSTNAME_MISMATCH


def test_expired_certificate(tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from dtlskit import certs

    past = datetime.now(timezone.utc) - timedelta(days=30)
    ca = certs.create_ca("Test CA", not_before=past - timedelta(days=1))
    cert, key = certs.issue_certificate(
        ca, "localhost", hosts=["localhost"], not_before=past, not_after=past + timedelta(days=1)
    )
    (tmp_path / "c.pem").write_bytes(certs.certificate_pem(cert))
    (tmp_path / "k.pem").write_bytes(certs.private_key_pem(key))
    (tmp_path / "ca.pem").write_bytes(certs.certificate_pem(ca[0]))
    client, server = pair(
        dtlskit.DTLSConfiguration.server(tmp_path / "c.pem", tmp_path / "k.pem"),
        dtlskit.DTLSConfiguration.client(cafile=tmp_path / "ca.pem", server_hostname="localhost"),
    )
    pump(client, server)
    assert isinstance(client.error, dtlskit.CertificateVerificationError)
    assert client.error.reason is dtlskit.VerificationReason.EXPIRED
    assert isinstance(server.error, dtlskit.CertificateVerificationError)  # alert received


def test_mutual_auth(pki: PKIFiles) -> None:
    server_cfg = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, cafile=pki.ca_cert, verify_mode=ssl.CERT_REQUIRED
    )
    bare = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
    client, server = pair(server_cfg, bare)
    pump(client, server)
    assert isinstance(server.error, dtlskit.CertificateVerificationError)
    with_cert = bare.replace(certfile=pki.client_cert, keyfile=pki.client_key)
    client, server = pair(server_cfg, with_cert)
    pump(client, server)
    assert server.state is State.ESTABLISHED
    assert server.peer_certificate is not None


@pytest.mark.parametrize("only12", [False, True])
def test_psk(only12: bool) -> None:
    server_cfg = dtlskit.DTLSConfiguration.server(psk_lookup={"dev1": b"k" * 16})
    client_cfg = dtlskit.DTLSConfiguration.client(psk=("dev1", b"k" * 16))
    client, server = pair(server_cfg, client_cfg, tls12(client_cfg) if only12 else None)
    pump(client, server)
    assert server.state is State.ESTABLISHED, server.error
    assert server.psk_identity == "dev1"
    assert client.version == ("TLSv1.2" if only12 else "TLSv1.3")
    wrong = dtlskit.DTLSConfiguration.client(psk=("dev1", b"z" * 16))
    client, server = pair(server_cfg, wrong)
    pump(client, server)
    assert client.state is State.TERMINATED and server.state is State.TERMINATED


def test_alpn_and_sni(pki: PKIFiles, other_pki: PKIFiles, client_config) -> None:
    server_cfg = dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        alpn_protocols=["h2", "http/1.1"],
        sni_certificates={"other.example": (other_pki.server_cert, other_pki.server_key)},
    )
    client, server = pair(server_cfg, client_config.replace(alpn_protocols=("http/1.1",)))
    pump(client, server)
    assert client.alpn_protocol == "http/1.1" == server.alpn_protocol
    assert server.server_name == "localhost"
    client, server = pair(server_cfg, client_config.replace(alpn_protocols=("spdy",)))
    pump(client, server)
    assert isinstance(client.error, dtlskit.HandshakeFailure)
    assert "no application protocol" in str(client.error)


@pytest.mark.parametrize("only12", [False, True])
def test_resumption_with_late_tickets(server_config, client_config, only12: bool) -> None:
    client, server = pair(server_config, client_config, tls12(client_config) if only12 else None)
    events = pump(client, server)
    if not only12:
        # TLS 1.3: the tickets come after the handshake; the engine says when.
        assert any(isinstance(e, SessionTicketReceived) for e in events)
        assert client.statistics().tickets_received >= 1
    session = client.session
    assert session is not None
    client2 = TLSConnection(
        client_config, server=False, session=session, context=client.ssl_object.get_context()
    )
    server2 = TLSConnection(server_config, server=True, context=server.ssl_object.get_context())
    server2.start_server(0.0)
    client2.connect(0.0)
    pump(client2, server2)
    assert client2.session_reused and server2.session_reused


def test_keylog(server_config, client_config, tmp_path: Path) -> None:
    log = tmp_path / "keys.log"
    client, server = pair(server_config, client_config.replace(keylog_file=log))
    pump(client, server)
    assert b"CLIENT_HANDSHAKE_TRAFFIC_SECRET" in log.read_bytes()


def test_verify_time_checks_certificates_against_the_given_clock(tmp_path: Path) -> None:
    """``verify_time`` (a device clock) applies over TLS as over DTLS."""
    from datetime import datetime, timedelta, timezone

    from dtlskit import certs

    past = datetime.now(timezone.utc) - timedelta(days=30)
    ca = certs.create_ca("Test CA", not_before=past - timedelta(days=1))
    cert, key = certs.issue_certificate(
        ca, "localhost", hosts=["localhost"], not_before=past, not_after=past + timedelta(days=1)
    )
    (tmp_path / "c.pem").write_bytes(certs.certificate_pem(cert))
    (tmp_path / "k.pem").write_bytes(certs.private_key_pem(key))
    (tmp_path / "ca.pem").write_bytes(certs.certificate_pem(ca[0]))
    server_cfg = dtlskit.DTLSConfiguration.server(tmp_path / "c.pem", tmp_path / "k.pem")
    client_cfg = dtlskit.DTLSConfiguration.client(
        cafile=tmp_path / "ca.pem", server_hostname="localhost"
    )
    then = past + timedelta(hours=12)  # the certificate was valid then
    client, server = pair(server_cfg, client_cfg.replace(verify_time=then))
    pump(client, server)
    assert client.state is State.ESTABLISHED, client.error
    client, server = pair(server_cfg, client_cfg)  # today: expired, and the dates are named
    pump(client, server)
    assert isinstance(client.error, dtlskit.CertificateVerificationError)
    assert "valid" in str(client.error)
