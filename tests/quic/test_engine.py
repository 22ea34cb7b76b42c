"""The sans-I/O QUIC layer: parsers of network bytes never raise; a server engine fed random
bytes drops and counts them; two sessions talk in memory, and a forged datagram changes
nothing."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

import dtlskit
from dtlskit.quic._initial import offered_alpn_untrusted
from dtlskit.quic.sansio import QuicSession, client_session, server_engine

SERVER_ADDRESS = ("127.0.0.1", 4433)
CLIENT_ADDRESS = ("127.0.0.1", 50000)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=1500), max_size=4))
def test_reading_a_client_offer_never_raises(datagrams):
    assert offered_alpn_untrusted(datagrams) is None or isinstance(
        offered_alpn_untrusted(datagrams), list
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400), st.integers(min_value=0, max_value=255))
def test_server_engine_drops_random_bytes(data, first):
    config = _server_config()
    engine = server_engine(config)
    session = engine.receive_datagram(bytes([first]) + data, CLIENT_ADDRESS, 0.0)
    if session is None:
        assert sum(engine.drops.values()) == 1
    else:  # a plausible Initial got a connection: it must still be just a handshake
        assert not session.handshake_complete


_CONFIG: list[dtlskit.DTLSConfiguration] = []


def _server_config() -> dtlskit.DTLSConfiguration:
    if not _CONFIG:
        import tempfile

        from dtlskit.certs import create_pki

        pki = create_pki(tempfile.mkdtemp())
        _CONFIG.append(
            dtlskit.DTLSConfiguration.server(
                pki.server_cert, pki.server_key, alpn_protocols=["hq-interop"]
            )
        )
        _CONFIG.append(
            dtlskit.DTLSConfiguration.client(
                cafile=pki.ca_cert, server_hostname="localhost", alpn_protocols=["hq-interop"]
            )
        )
    return _CONFIG[0]


def _pump(client: QuicSession, engine, now: float) -> None:
    for _ in range(20):
        moved = False
        for data, _to in client.datagrams_to_send(now):
            moved = True
            session = engine.receive_datagram(data, CLIENT_ADDRESS, now)
            assert session is not None
        for session in engine.sessions:
            for data, _to in session.datagrams_to_send(now):
                moved = True
                client.receive_datagram(data, SERVER_ADDRESS, now)
        if not moved:
            return


def test_in_memory_pair_and_forged_datagrams():
    _server_config()
    engine = server_engine(_CONFIG[0])
    client = client_session(_CONFIG[1], server_name="localhost", now=0.0)
    client.connect(SERVER_ADDRESS, 0.0)
    _pump(client, engine, 0.0)
    assert client.handshake_complete and client.alpn_protocol == "hq-interop"
    (server,) = engine.sessions
    client.send_message(b"in memory")
    _pump(client, engine, 0.01)
    assert server.next_message() == b"in memory"
    # forged short-header datagrams with the client's connection ID: dropped by aioquic
    cid = next(iter(engine._by_cid))
    for _ in range(20):
        engine.receive_datagram(b"\x40" + cid + os.urandom(40), CLIENT_ADDRESS, 0.02)
    server.send_message(b"still fine")
    _pump(client, engine, 0.03)
    assert client.next_message() == b"still fine"
    assert client.error is None and server.error is None


def test_an_aioquic_failure_ends_that_connection_only():
    """Should aioquic raise on some input, that connection ends with a ConnectionLost naming
    it (counted ``engine_error``); the server engine and its other connections go on."""
    _server_config()
    engine = server_engine(_CONFIG[0])
    first = client_session(_CONFIG[1], server_name="localhost", now=0.0)
    first.connect(SERVER_ADDRESS, 0.0)
    _pump(first, engine, 0.0)
    second = client_session(_CONFIG[1], server_name="localhost", now=0.0)
    second.connect(SERVER_ADDRESS, 0.0)
    _pump(second, engine, 0.0)
    broken, healthy = engine.sessions

    def explode(*args, **kwargs):
        raise RuntimeError("simulated aioquic bug")

    broken.quic.receive_datagram = explode  # fault injection into one connection's engine
    victim = first if broken is engine.sessions[0] else second
    survivor = second if victim is first else first
    victim.send_message(b"boom")
    _pump(victim, engine, 0.01)
    assert isinstance(broken.error, dtlskit.ConnectionLost)
    assert "simulated aioquic bug" in str(broken.error)
    assert broken.stats.drops["engine_error"] == 1
    survivor.send_message(b"fine")
    _pump(survivor, engine, 0.02)
    assert healthy.next_message() == b"fine"
