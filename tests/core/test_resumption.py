"""Session resumption (RFC 5077 tickets, RFC 5246 session IDs) with real in-memory handshakes:
sessions taken from one connection, serialised, and offered by the next."""

from __future__ import annotations

import gc
import ssl

import pytest
from OpenSSL import SSL

import dtlskit
from dtlskit.core import DTLSConnection, ServerEngine
from dtlskit.core import events as ev
from dtlskit.core.session import Session
from dtlskit.testing import MemoryPair
from dtlskit.testing.memory import SERVER_ADDRESS

from .. import peers
from .flights import NEW_SESSION_TICKET
from .loop import ClientLoop

_port = iter(range(41000, 42000))


def pair_with(
    server: ServerEngine,
    client_config: dtlskit.DTLSConfiguration,
    session: Session | None = None,
) -> MemoryPair:
    """A MemoryPair on an existing server engine, whose client offers ``session``."""
    pair = MemoryPair(
        client_config, client_config, server=server, client_address=("127.0.0.1", next(_port))
    )
    pair.client = DTLSConnection(
        client_config, server=False, peer_address=SERVER_ADDRESS, session=session
    )
    return pair


def first_session(server: ServerEngine, client_config: dtlskit.DTLSConfiguration) -> Session:
    pair = pair_with(server, client_config)
    assert pair.handshake()
    assert not pair.client.session_reused
    session = pair.client.session
    assert session is not None
    return session


def tickets_sent(pair: MemoryPair) -> int:
    return sum(
        1
        for d in pair.network.log
        if not d.to_server and d.data[0] == 22 and len(d.data) > 13 and d.data[13] == 4
    )


def test_resumes_with_a_ticket(server_config, client_config):
    server = ServerEngine(server_config)
    pair = pair_with(server, client_config)
    assert pair.handshake()
    assert tickets_sent(pair) == 1  # NewSessionTicket in the server's last flight
    session = Session.from_bytes(pair.client.session.to_bytes())
    again = pair_with(server, client_config, session)
    assert again.handshake()
    assert again.client.session_reused
    assert again.server_connection is not None and again.server_connection.session_reused
    completed = [e for e in again.client_events if isinstance(e, ev.HandshakeCompleted)]
    assert completed[0].session_reused
    # An abbreviated handshake: no certificate was sent this time.
    assert not any(d.data[13:14] == b"\x0b" for d in again.network.log if not d.to_server)
    again.client.send(b"resumed")
    again.pump()
    assert again.run(lambda: again.server_messages() == [b"resumed"])


def test_tickets_alone_resume_when_the_session_cache_is_off(server_config, client_config):
    ctx = server_config.build_context(server=True)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    server = ServerEngine(server_config, context=ctx)
    session = first_session(server, client_config)
    again = pair_with(server, client_config, session)
    assert again.handshake() and again.client.session_reused


def test_session_ids_resume_when_tickets_are_off(server_config, client_config):
    config = server_config.replace(session_tickets=False)
    server = ServerEngine(config)
    pair = pair_with(server, client_config)
    assert pair.handshake()
    assert tickets_sent(pair) == 0
    session = Session.from_bytes(pair.client.session.to_bytes())
    again = pair_with(server, client_config, session)
    assert again.handshake()
    assert again.client.session_reused and again.server_connection.session_reused


def test_no_resumption_with_tickets_and_cache_off(server_config, client_config):
    config = server_config.replace(session_tickets=False)
    ctx = config.build_context(server=True)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    server = ServerEngine(config, context=ctx)
    session = first_session(server, client_config)
    again = pair_with(server, client_config, session)
    assert again.handshake()
    assert not again.client.session_reused


def test_session_of_another_server_costs_a_full_handshake(server_config, client_config):
    session = first_session(ServerEngine(server_config), client_config)
    other = pair_with(ServerEngine(server_config), client_config, session)
    assert other.handshake()
    assert not other.client.session_reused
    assert other.server_connection is not None and not other.server_connection.session_reused
    assert other.client.peer_certificate is not None  # the certificate was sent and checked


def test_workers_sharing_one_context_resume_each_others_sessions(server_config, client_config):
    # Worker processes built from one context before fork(): here two engines on one context.
    ctx = server_config.build_context(server=True)
    session = first_session(ServerEngine(server_config, context=ctx), client_config)
    other_worker = pair_with(ServerEngine(server_config, context=ctx), client_config, session)
    assert other_worker.handshake() and other_worker.client.session_reused


def test_session_for_another_name_is_not_offered(server_config, client_config):
    server = ServerEngine(server_config)
    session = first_session(server, client_config)
    assert session.server_name == "localhost"
    by_ip = pair_with(server, client_config.replace(server_hostname="127.0.0.1"), session)
    assert by_ip.handshake()
    assert not by_ip.client.session_reused


def test_resumption_with_mutual_authentication(pki, server_config, client_config):
    server = ServerEngine(server_config.replace(verify_mode=ssl.CERT_REQUIRED, cafile=pki.ca_cert))
    client = client_config.replace(certfile=pki.client_cert, keyfile=pki.client_key)
    session = first_session(server, client)
    again = pair_with(server, client, session)
    assert again.handshake() and again.server_connection is not None
    assert again.server_connection.session_reused
    # The client's identity survives resumption.
    assert again.server_connection.peer_certificate is not None
    assert "dtlskit client" in again.server_connection.peer_certificate.subject.rfc4514_string()


def test_session_survives_its_connections_being_dropped(server_config, client_config):
    # OpenSSL marks a shared SSL_SESSION "not resumable" when a connection using it is freed
    # without close_notify; a Session must not be spoiled by that (regression test).
    server = ServerEngine(server_config)
    pair = pair_with(server, client_config)
    assert pair.handshake()
    session = pair.client.session
    unused = pair_with(server, client_config, session)  # offered, never started
    del pair, unused
    gc.collect()
    again = pair_with(server, client_config, session)
    assert again.handshake() and again.client.session_reused
    again.client.abort(dtlskit.ConnectionLost("dropped"))
    del again
    gc.collect()
    third = pair_with(server, client_config, session)
    assert third.handshake() and third.client.session_reused


def test_save_and_load(tmp_path, server_config, client_config):
    server = ServerEngine(server_config)
    session = first_session(server, client_config)
    path = tmp_path / "session.bin"
    session.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = Session.load(path)
    assert loaded.server_name == "localhost"
    assert pair_with(server, client_config, loaded).handshake()


def test_session_is_none_before_the_handshake(client_config):
    conn = DTLSConnection(client_config, server=False, peer_address=SERVER_ADDRESS)
    assert conn.session is None


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "bad header"),
        (b"garbage" * 10, "bad header"),
        (b"dtlskit-session\x01\x00\x00\x00" + b"\x30", "bad header"),  # format 1: no policy
        (b"dtlskit-session\x02\x00\x05ab", "truncated"),
        (b"dtlskit-session\x02\x00\x00\x05abc", "truncated"),
        (b"dtlskit-session\x02\x00\x00\x00" + b"\x30\x03\x02\x01\x01", "could not decode"),
    ],
)
def test_bad_session_bytes(data, words):
    with pytest.raises(dtlskit.ConfigurationError, match=words):
        Session.from_bytes(data)


def test_bad_session_file_names_the_file(tmp_path):
    path = tmp_path / "nope.bin"
    with pytest.raises(dtlskit.ConfigurationError, match=r"nope\.bin"):
        Session.load(path)
    path.write_bytes(b"junk")
    with pytest.raises(dtlskit.ConfigurationError, match=r"nope\.bin: not a serialised"):
        Session.load(path)


def test_session_is_for_clients_only(server_config, client_config):
    session = first_session(ServerEngine(server_config), client_config)
    with pytest.raises(dtlskit.ConfigurationError, match="for client engines"):
        DTLSConnection(server_config, server=True, session=session)


def test_new_session_ticket_constant_matches_rfc():
    assert NEW_SESSION_TICKET == 4


# -- interop over loopback UDP ----------------------------------------------------------------


def connect_over_udp(
    port: int, config: dtlskit.DTLSConfiguration, session: Session | None
) -> ClientLoop:
    engine = DTLSConnection(config, server=False, peer_address=("127.0.0.1", port), session=session)
    loop = ClientLoop(engine, ("127.0.0.1", port))
    loop.connect(timeout=10)
    assert engine.state.value == "established", engine.error
    return loop


def close_over_udp(loop: ClientLoop) -> None:
    loop.engine.close()
    loop._transmit()  # the close_notify
    loop.close()


@pytest.mark.interop
@peers.needs_openssl
@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "session-ids"])
def test_resumes_against_openssl_s_server(pki, client_config, tickets):
    extra = [] if tickets else ["-no_ticket"]

    def argv(port: int) -> list[str]:
        return peers.openssl_s_server(port, str(pki.server_cert), str(pki.server_key), *extra)

    with peers.serving(argv, ready="ACCEPT") as (server, port):
        first = connect_over_udp(port, client_config, None)
        assert not first.engine.session_reused
        first.send(b"first connection\n")
        server.wait_for("first connection")
        session = first.engine.session
        close_over_udp(first)
        server.wait_for("DONE")  # s_server saw our close_notify
        second = connect_over_udp(port, client_config, session)
        try:
            assert second.engine.session_reused
            second.send(b"resumed connection\n")
            server.wait_for("resumed connection")
        finally:
            close_over_udp(second)


@pytest.mark.interop
@peers.needs_gnutls
@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "session-ids"])
def test_resumes_against_gnutls_serv(pki, client_config, tickets):
    extra = [] if tickets else ["--noticket"]

    def argv(port: int) -> list[str]:
        return peers.gnutls_serv(port, str(pki.server_cert), str(pki.server_key), *extra)

    with peers.serving(argv, ready="listening") as (_, port):
        session = None
        for attempt in range(2):
            loop = connect_over_udp(port, client_config, session)
            try:
                assert loop.engine.session_reused == (attempt == 1)
                # The echo proves gnutls-serv finished (and cached) this handshake before the
                # next one starts.
                loop.send(b"ping")
                assert loop.run_until(lambda: b"ping" in loop.messages(), 10)  # noqa: B023
                session = loop.engine.session
            finally:
                close_over_udp(loop)


# -- resumption never skips a certificate check the full handshake would make -----------------


def _offer(server_config, config, server, session, port):  # type: ignore[no-untyped-def]
    pair = MemoryPair(server_config, config, server=server, client_address=("127.0.0.1", port))
    pair.client = DTLSConnection(
        config, server=False, peer_address=pair.server_address, session=session
    )
    return pair


def test_session_of_a_lax_client_is_not_offered_by_a_strict_one(tmp_path, pki):
    from dtlskit.certs import create_pki

    evil = create_pki(tmp_path / "evil")  # a server no strict client trusts, named localhost
    server_config = dtlskit.DTLSConfiguration.server(evil.server_cert, evil.server_key)
    server = ServerEngine(server_config)
    lax = dtlskit.DTLSConfiguration.client(server_hostname="localhost", verify_mode=ssl.CERT_NONE)
    strict = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
    first = MemoryPair(server_config, lax, server=server, client_address=("127.0.0.1", 40001))
    assert first.handshake()
    session = first.client.session
    assert session is not None
    pair = _offer(server_config, strict, server, session, 40002)
    assert not pair.handshake()
    assert not pair.client.session_reused
    assert isinstance(pair.client.error, dtlskit.CertificateVerificationError)


def test_session_for_another_trust_store_is_not_offered(pki, other_pki, server_config):
    server = ServerEngine(server_config)
    mine = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
    first = MemoryPair(server_config, mine, server=server, client_address=("127.0.0.1", 40003))
    assert first.handshake()
    session = first.client.session
    # Trusting an extra CA is a different policy: a full (verified) handshake, no resumption.
    both = mine.replace(cadata=other_pki.ca_cert.read_text())
    pair = _offer(server_config, both, server, session, 40004)
    assert pair.handshake()
    assert not pair.client.session_reused
    # The same policy (an equal configuration) resumes.
    again = _offer(server_config, mine.replace(), server, session, 40005)
    assert again.handshake()
    assert again.client.session_reused


def test_forged_policy_on_an_unverified_session_is_refused(tmp_path, pki):
    """A session file edited to claim the strict policy: OpenSSL's stored verify result still
    says the certificate was never verified, and the resumed handshake is refused."""
    from dtlskit.certs import create_pki
    from dtlskit.core.session import Session

    evil = create_pki(tmp_path / "evil")
    server_config = dtlskit.DTLSConfiguration.server(evil.server_cert, evil.server_key)
    server = ServerEngine(server_config)
    lax = dtlskit.DTLSConfiguration.client(server_hostname="localhost", verify_mode=ssl.CERT_NONE)
    strict = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
    first = MemoryPair(server_config, lax, server=server, client_address=("127.0.0.1", 40006))
    assert first.handshake()
    lax_session = first.client.session
    assert lax_session is not None
    forged = Session(lax_session._der, "localhost", strict.verification_policy("localhost"))
    pair = _offer(server_config, strict, server, Session.from_bytes(forged.to_bytes()), 40007)
    assert not pair.handshake()
    error = pair.client.error
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert "without verifying" in str(error)
