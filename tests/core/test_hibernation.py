"""Hibernated sessions in the engine (Limits.hibernate_after): OpenSSL's object released, records
carried by dtlskit.core.record_protection, and the peer (OpenSSL in the other engine) none the
wiser. In memory on a hand-driven clock; the socket and foreign-peer tests are elsewhere."""

from __future__ import annotations

import gc
import weakref

import pytest

import dtlskit
from dtlskit.config import Limits
from dtlskit.core import DTLSConnection, ServerEngine, State
from dtlskit.core import events as ev
from dtlskit.core.hibernation import Hibernated, hibernate
from dtlskit.core.records import split_records_untrusted
from dtlskit.core.session import Session
from dtlskit.testing import MemoryPair
from dtlskit.testing.memory import SERVER_ADDRESS, Datagram

from .test_record_protection import CERT_SUITES, KEY, PSK_SUITES
from .test_security import start_renegotiation

EVERY = Limits(hibernate_after=0)


def psk_configs(ciphers: str = "PSK-AES128-GCM-SHA256", server_limits=EVERY, client_limits=EVERY):
    server = dtlskit.DTLSConfiguration.server(
        psk_lookup={"dev1": KEY}, ciphers=ciphers, limits=server_limits
    )
    client = dtlskit.DTLSConfiguration.client(
        psk=("dev1", KEY), ciphers=ciphers, limits=client_limits
    )
    return server, client


def echo_both_ways(pair: MemoryPair, tag: bytes) -> None:
    server = pair.server_connection
    assert server is not None
    pair.client.send(b"up " + tag)
    pair.pump()
    assert pair.run(lambda: pair.server_messages()[-1:] == [b"up " + tag])
    server.send(b"down " + tag)
    pair.pump()
    assert pair.run(lambda: pair.client_messages()[-1:] == [b"down " + tag])


def client_records(pair: MemoryPair, epoch: int = 1, content_type: int = 23) -> list[bytes]:
    return [
        r.raw
        for d in pair.network.log
        if d.to_server
        for r in split_records_untrusted(d.data)
        if r.epoch == epoch and r.content_type == content_type
    ]


def crafter(engine: DTLSConnection) -> Hibernated:
    """Record keys of an engine that keeps OpenSSL, continuing its write sequence (for tests
    that must make a peer send what OpenSSL never would)."""
    state = hibernate(engine.ssl_object, server=engine.is_server, read_high=-1, keep_session=False)
    assert isinstance(state, Hibernated), state
    return state


# -- every suite, either side, both sides --------------------------------------------------------


@pytest.mark.parametrize("ciphers", PSK_SUITES)
@pytest.mark.parametrize("side", ["server", "client", "both"])
def test_psk_suites_hibernate_and_carry_messages(ciphers, side):
    server_limits = EVERY if side in ("server", "both") else Limits()
    client_limits = EVERY if side in ("client", "both") else Limits()
    pair = MemoryPair(*psk_configs(ciphers, server_limits, client_limits))
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    assert server.hibernated is (side != "client")
    assert pair.client.hibernated is (side != "server")
    for i in range(5):
        echo_both_ways(pair, b"%d" % i)
    assert server.cipher == pair.client.cipher == ciphers.split(":")[0]
    assert server.version == pair.client.version == "DTLSv1.2"
    assert server.cleartext_mtu == pair.client.cleartext_mtu
    assert not server.statistics().drops and not pair.client.statistics().drops


@pytest.mark.parametrize("ciphers", CERT_SUITES)
def test_certificate_suites_hibernate_and_carry_messages(pki, ciphers):
    server = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, ciphers=ciphers, limits=EVERY
    )
    client = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", ciphers=ciphers, limits=EVERY
    )
    pair = MemoryPair(server, client)
    assert pair.handshake()
    assert pair.client.hibernated and pair.server_connection.hibernated
    echo_both_ways(pair, b"cert")
    assert pair.client.peer_certificate is not None
    assert pair.client.peer_certificate_chain[0] == pair.client.peer_certificate
    assert pair.client.peer_verified_chain[0] == pair.client.peer_certificate


def test_the_ssl_object_is_freed():
    server_config, client_config = psk_configs(client_limits=Limits())
    pair = MemoryPair(server_config.replace(limits=Limits()), client_config)
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    refs = [weakref.ref(server.ssl_object), weakref.ref(pair.client.ssl_object)]
    echo_both_ways(pair, b"before")
    assert server.hibernate(pair.clock.now) and pair.client.hibernate(pair.clock.now)
    gc.collect()
    assert [r() for r in refs] == [None, None]
    with pytest.raises(dtlskit.UsageError, match="hibernated"):
        _ = server.ssl_object
    echo_both_ways(pair, b"after")


def test_properties_are_the_same_after_hibernation(pki):
    server_config = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, alpn_protocols=["coap", "h2"]
    )
    client_config = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", alpn_protocols=["coap"]
    )
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    names = (
        "version",
        "cipher",
        "session_reused",
        "peer_certificate",
        "peer_certificate_chain",
        "peer_verified_chain",
        "alpn_protocol",
        "srtp_profile",
        "server_name",
        "psk_identity",
        "cleartext_mtu",
    )
    before = [{n: getattr(e, n) for n in names} for e in (pair.client, server)]
    ekm = [e.export_keying_material(b"EXPERIMENTAL-x", 40, b"ctx") for e in (pair.client, server)]
    ekm_none = [e.export_keying_material(b"EXPERIMENTAL-y", 7) for e in (pair.client, server)]
    assert pair.client.hibernate(pair.clock.now) and server.hibernate(pair.clock.now)
    after = [{n: getattr(e, n) for n in names} for e in (pair.client, server)]
    assert after == before
    assert before[0]["alpn_protocol"] == "coap" and before[0]["peer_certificate"] is not None
    assert [
        e.export_keying_material(b"EXPERIMENTAL-x", 40, b"ctx") for e in (pair.client, server)
    ] == ekm
    assert [
        e.export_keying_material(b"EXPERIMENTAL-y", 7) for e in (pair.client, server)
    ] == ekm_none
    assert ekm[0] == ekm[1]
    # Keying material from one side hibernated and the other not agrees too.
    assert ekm[0] != ekm_none[0][:40]


def test_export_keying_material_one_side_hibernated():
    server_config, client_config = psk_configs(client_limits=Limits())
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None and server.hibernated and not pair.client.hibernated
    for context in (None, b"", b"some context"):
        assert server.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 60, context
        ) == pair.client.export_keying_material(b"EXTRACTOR-dtls_srtp", 60, context)


# -- when: every session, or after an idle period ------------------------------------------------


def test_idle_threshold_hibernates_only_idle_sessions():
    limits = Limits(hibernate_after=30.0, idle_timeout=None)
    server_config, client_config = psk_configs(server_limits=limits, client_limits=limits)
    pair = MemoryPair(server_config, client_config.replace(idle_timeout=None))
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    assert not server.hibernated and not pair.client.hibernated
    start = pair.clock.now
    pair.clock.advance(20)
    echo_both_ways(pair, b"busy")  # activity within the first period
    run_clock_to(pair, start + 59)  # the first period ended busy: re-armed for another
    assert not server.hibernated and not pair.client.hibernated
    run_clock_to(pair, start + 61)  # idle for a whole period
    assert server.hibernated and pair.client.hibernated
    pair.clock.advance(86_400)  # a day later: records still flow, in both directions
    echo_both_ways(pair, b"a day later")


def run_clock_to(pair: MemoryPair, when: float) -> None:
    """Fire every timer due up to ``when``, then set the clock there."""
    for _ in range(100):
        deadline = pair.next_deadline()
        if deadline is None or deadline > when:
            break
        pair.fire_timers()
    pair.clock.now = max(pair.clock.now, when)


def test_hibernate_after_is_validated():
    for bad in (-1, float("nan"), float("inf"), "10", True):
        with pytest.raises(dtlskit.ConfigurationError, match="hibernate_after"):
            Limits(hibernate_after=bad)
    assert Limits(hibernate_after=0).hibernate_after == 0


def test_sessions_that_allow_renegotiation_keep_openssl():
    server_config, client_config = psk_configs()
    pair = MemoryPair(
        server_config.replace(allow_renegotiation=True),
        client_config.replace(allow_renegotiation=True),
    )
    assert pair.handshake()
    assert not pair.client.hibernated and not pair.client.hibernate(pair.clock.now)
    echo_both_ways(pair, b"openssl")


def test_a_suite_not_implemented_keeps_openssl(pki):
    ciphers = "ECDHE-ECDSA-ARIA128-GCM-SHA256"
    server = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, ciphers=ciphers, limits=EVERY
    )
    client = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", ciphers=ciphers, limits=EVERY
    )
    pair = MemoryPair(server, client)
    if not pair.handshake():
        pytest.skip(f"this OpenSSL cannot negotiate {ciphers} in DTLS 1.2")
    assert pair.client.cipher == ciphers
    assert not pair.client.hibernated
    assert pair.client.statistics().drops == {"hibernation_refused": 1}
    echo_both_ways(pair, b"aria")  # the refusal's probe record left no trace for the peer


# -- sequence numbers, replay, bad records -------------------------------------------------------


def test_sequence_numbers_continue_and_nonces_never_repeat():
    server_config, client_config = psk_configs(client_limits=Limits())
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    for i in range(3):
        echo_both_ways(pair, b"%d" % i)
    assert pair.client.hibernate(pair.clock.now)
    for i in range(3, 6):
        echo_both_ways(pair, b"%d" % i)
    records = client_records(pair)
    sequences = [int.from_bytes(r[5:11], "big") for r in records]
    assert sequences == sorted(set(sequences))
    assert sequences[3] == sequences[2] + 2  # one number went to the probe, never sent
    nonces = [r[13:21] for r in records]
    assert len(set(nonces)) == len(nonces)


@pytest.mark.parametrize("when", ["before", "after"])
def test_replayed_records_are_dropped_and_counted(when):
    server_config, client_config = psk_configs(server_limits=Limits())
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    if when == "after":
        assert server.hibernate(pair.clock.now)
    for i in range(3):
        echo_both_ways(pair, b"%d" % i)
    if when == "before":
        assert server.hibernate(pair.clock.now)
    replays = client_records(pair)
    for record in replays:
        pair.server.receive_datagram(record, pair.client_address, pair.clock.now)
    pair.pump()
    assert pair.server_messages() == [b"up 0", b"up 1", b"up 2"]
    assert server.statistics().drops == {"bad_record": len(replays)}
    echo_both_ways(pair, b"still up")


def test_records_failing_authentication_are_dropped_never_fatal():
    pair = MemoryPair(*psk_configs())
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    pair.client.send(b"genuine")
    pair.pump()
    datagram = pair.network.pop()
    assert datagram is not None
    bad = 0
    for position in range(13, len(datagram.data)):
        mutated = bytearray(datagram.data)
        mutated[position] ^= 0x5A
        pair.server.receive_datagram(bytes(mutated), pair.client_address, pair.clock.now)
        bad += 1
    assert server.statistics().drops == {"bad_record": bad}
    assert server.state is State.ESTABLISHED
    pair.server.receive_datagram(datagram.data, pair.client_address, pair.clock.now)
    pair.pump()
    assert pair.server_messages() == [b"genuine"]


def test_malformed_and_wrong_epoch_datagrams_are_counted():
    pair = MemoryPair(*psk_configs())
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    pair.client.send(b"x")
    pair.pump()
    record = pair.network.pop().data
    for datagram in (
        record[:3] + b"\x00\x02" + record[5:],  # epoch 2
        record[:3] + b"\x00\x00" + record[5:],  # epoch 0
        record + b"\x17\xfe",  # a truncated second header
        b"\x99" * 20,
    ):
        pair.server.receive_datagram(datagram, pair.client_address, pair.clock.now)
    drops = server.statistics().drops
    assert drops.get("wrong_epoch") == 2
    assert sum(drops.values()) == 4
    assert server.state is State.ESTABLISHED


# -- alerts, renegotiation, the final flight -----------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "server"])
@pytest.mark.parametrize("hibernated", ["both", "server", "client"])
def test_close_notify_in_and_out(closer, hibernated):
    server_limits = EVERY if hibernated in ("both", "server") else Limits()
    client_limits = EVERY if hibernated in ("both", "client") else Limits()
    pair = MemoryPair(*psk_configs(server_limits=server_limits, client_limits=client_limits))
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    echo_both_ways(pair, b"hi")
    first, second = (pair.client, server) if closer == "client" else (server, pair.client)
    first.close()
    pair.pump()
    pair.run(lambda: second.state is not State.ESTABLISHED)
    assert second.state is State.CLOSED
    assert isinstance(second.error, dtlskit.ConnectionClosedByPeer)
    assert first.state is State.CLOSED


def test_fatal_alert_in():
    pair = MemoryPair(*psk_configs(client_limits=Limits()))
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    record = crafter(pair.client).protection.seal(21, bytes((2, 80)))  # fatal internal_error
    assert record is not None
    pair.server.receive_datagram(record, pair.client_address, pair.clock.now)
    pair.pump()
    assert server.state is State.TERMINATED
    assert isinstance(server.error, dtlskit.ConnectionLost)
    assert server.error.alert == "internal error"
    assert "sent fatal alert: internal error" in str(server.error)
    assert any(isinstance(e, ev.ConnectionTerminated) for e in pair.server_events)


def test_fatal_alert_out_is_read_by_openssl():
    # An authenticated ChangeCipherSpec inside epoch 1 is a broken peer: the hibernated side
    # answers with a fatal unexpected_message alert, which the peer's OpenSSL reports.
    pair = MemoryPair(*psk_configs(client_limits=Limits()))
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    record = crafter(pair.client).protection.seal(20, b"\x01")
    assert record is not None
    pair.server.receive_datagram(record, pair.client_address, pair.clock.now)
    pair.pump()
    assert server.state is State.TERMINATED
    assert server.error.alert == "unexpected message"
    pair.run(lambda: pair.client.state is not State.ESTABLISHED)
    assert pair.client.state is State.TERMINATED
    assert pair.client.error.alert == "unexpected message"


def test_warning_alerts_are_counted_and_ignored():
    pair = MemoryPair(*psk_configs(client_limits=Limits()))
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    record = crafter(pair.client).protection.seal(21, bytes((1, 90)))  # user_canceled warning
    pair.server.receive_datagram(record, pair.client_address, pair.clock.now)
    assert server.state is State.ESTABLISHED
    assert server.statistics().drops == {"warning_alert": 1}


def test_renegotiation_is_refused_as_before(server_config, client_config):
    pair = MemoryPair(
        server_config.replace(limits=EVERY), client_config.replace(allow_renegotiation=True)
    )
    assert pair.handshake()
    conn = pair.server_connection
    assert conn is not None and conn.hibernated
    start_renegotiation(pair)
    while pair.deliver_one():
        pass
    # The same outcome as with OpenSSL refusing (tests/core/test_security.py).
    assert pair.client.state is State.TERMINATED
    assert pair.client.error.alert == "no renegotiation"
    assert "refused to renegotiate" in str(pair.client.error)
    assert conn.state is State.TERMINATED
    assert "tried to renegotiate, which this side refuses" in str(conn.error)
    assert conn.error.alert == "handshake failure"


@pytest.mark.parametrize("client_limits", [EVERY, Limits()], ids=["hibernated", "openssl"])
def test_a_client_refuses_a_hello_request_the_same_way(client_limits):
    pair = MemoryPair(*psk_configs(server_limits=Limits(), client_limits=client_limits))
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    hello_request = bytes(12)  # HelloRequest: type 0, empty, message_seq 0
    record = crafter(server).protection.seal(22, hello_request)
    pair.client.receive_datagram(record, pair.clock.now)
    pair.pump()
    # The client answers with a no_renegotiation warning and stays up; the server's OpenSSL,
    # which never asked (the HelloRequest was forged with its keys), ends its side.
    answer = pair.network.queue[0].data
    assert answer[0] == 21 and answer[3:5] == b"\x00\x01"
    pair.run(lambda: False)
    assert pair.client.state is State.ESTABLISHED
    assert server.state is State.TERMINATED
    assert server.error.alert == "no renegotiation"


def drop_first(predicate):
    dropped: list[Datagram] = []

    def impairment(datagram: Datagram) -> list[Datagram]:
        if not dropped and predicate(datagram):
            dropped.append(datagram)
            return []
        return [datagram]

    return impairment, dropped


def has_change_cipher_spec(datagram: Datagram) -> bool:
    return any(r.content_type == 20 for r in split_records_untrusted(datagram.data))


def test_lost_final_flight_of_a_hibernated_server_is_resent():
    # Full handshake: the server sends the final flight (ticket, CCS, Finished) and hibernates
    # at once. It is lost; the client repeats its flight; the stored final flight answers.
    pair = MemoryPair(*psk_configs())
    impairment, dropped = drop_first(lambda d: not d.to_server and has_change_cipher_spec(d))
    pair.network.filters.append(impairment)
    assert pair.handshake()
    assert dropped
    server = pair.server_connection
    assert server is not None and server.hibernated
    assert server.statistics().final_flight_resends == 1
    echo_both_ways(pair, b"after a lost final flight")


def test_lost_final_flight_of_a_hibernated_resuming_client_is_resent():
    server_config, client_config = psk_configs()
    engine = ServerEngine(server_config)
    first = MemoryPair(server_config, client_config, server=engine)
    assert first.handshake()
    session = first.client.session
    assert session is not None
    again = MemoryPair(server_config, client_config, server=engine, client_address=("127.0.0.1", 4))
    again.client = DTLSConnection(
        client_config, server=False, peer_address=SERVER_ADDRESS, session=session
    )
    impairment, dropped = drop_first(lambda d: d.to_server and has_change_cipher_spec(d))
    again.network.filters.append(impairment)
    assert again.handshake()
    assert again.client.session_reused and again.client.hibernated
    assert dropped
    again.run(lambda: again.server_connection is not None)
    assert again.client.statistics().final_flight_resends == 1
    echo_both_ways(again, b"resumed after a lost final flight")


# -- resumption ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tickets", [True, False])
def test_sessions_issued_before_hibernation_still_resume(server_config, client_config, tickets):
    server_config = server_config.replace(limits=EVERY, session_tickets=tickets)
    client_config = client_config.replace(limits=EVERY)
    engine = ServerEngine(server_config)
    first = MemoryPair(server_config, client_config, server=engine)
    assert first.handshake()
    assert first.client.hibernated and first.server_connection.hibernated
    echo_both_ways(first, b"first")
    session = Session.from_bytes(first.client.session.to_bytes())
    first.client.close()
    first.pump()
    first.run(lambda: False)
    again = MemoryPair(server_config, client_config, server=engine, client_address=("127.0.0.1", 5))
    again.client = DTLSConnection(
        client_config, server=False, peer_address=SERVER_ADDRESS, session=session
    )
    assert again.handshake()
    assert again.client.session_reused and again.server_connection.session_reused
    assert again.client.hibernated and again.server_connection.hibernated
    echo_both_ways(again, b"resumed")


# -- limits and errors ---------------------------------------------------------------------------


def test_message_size_limits_are_unchanged():
    pair = MemoryPair(*psk_configs())
    assert pair.handshake()
    limit = pair.client.cleartext_mtu
    with pytest.raises(dtlskit.MessageTooLarge):
        pair.client.send(b"x" * (limit + 1))
    with pytest.raises(dtlskit.MessageTooLarge):
        pair.client.seal(b"x" * (limit + 1))
    with pytest.raises(dtlskit.InvalidMessage):
        pair.client.send(b"")
    with pytest.raises(dtlskit.InvalidMessage):
        pair.client.seal("text")  # type: ignore[arg-type]
    pair.client.send(b"y" * limit)
    pair.pump()
    assert pair.run(lambda: pair.server_messages() == [b"y" * limit])
    datagrams = [d for d in pair.network.log if d.to_server]
    assert len(datagrams[-1].data) <= pair.client.mtu


def test_idle_timeout_of_a_hibernated_session_sends_close_notify():
    server_config, client_config = psk_configs()
    pair = MemoryPair(server_config.replace(idle_timeout=60.0), client_config)
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None and server.hibernated
    pair.run(lambda: server.state is not State.ESTABLISHED)
    assert isinstance(server.error, dtlskit.ConnectionLost) and "idle" in str(server.error)
    pair.run(lambda: pair.client.state is not State.ESTABLISHED)
    assert isinstance(pair.client.error, dtlskit.ConnectionClosedByPeer)


def test_send_after_close_raises():
    pair = MemoryPair(*psk_configs())
    assert pair.handshake()
    pair.client.close()
    with pytest.raises(dtlskit.ConnectionClosedLocally):
        pair.client.send(b"late")
    with pytest.raises(dtlskit.ConnectionClosedLocally):
        pair.client.seal(b"late")


def test_records_openssl_buffered_during_the_handshake_are_never_accepted_twice():
    # Resumed handshake: the client completes first and may send application data before its
    # final flight reaches the server. Delivered out of order, OpenSSL buffers that record and
    # hands it over at completion, with a sequence number the engine never saw: such a session
    # keeps OpenSSL (else a replay window starting below that record would accept it again).
    server_config, client_config = psk_configs(client_limits=Limits())
    engine = ServerEngine(server_config)
    first = MemoryPair(server_config, client_config, server=engine)
    assert first.handshake()
    session = first.client.session
    again = MemoryPair(server_config, client_config, server=engine, client_address=("127.0.0.1", 6))
    again.client = DTLSConnection(
        client_config, server=False, peer_address=SERVER_ADDRESS, session=session
    )
    held: list[Datagram] = []

    def hold_final_flight(datagram: Datagram) -> list[Datagram]:
        if datagram.to_server and has_change_cipher_spec(datagram) and not held:
            held.append(datagram)
            return []
        return [datagram]

    again.network.filters.append(hold_final_flight)
    again.start()
    again.run(lambda: again.client.state is State.ESTABLISHED)
    assert held and again.client.session_reused
    again.client.send(b"early")
    again.pump()
    early = again.network.pop()
    assert early is not None and early.data[0] == 23
    again.server.receive_datagram(early.data, again.client_address, again.clock.now)  # buffered
    again.server.receive_datagram(held[0].data, again.client_address, again.clock.now)
    again.pump()
    conn = again.server_connection
    assert conn is not None and again.server_messages() == [b"early"]
    assert not conn.hibernated and not conn.hibernate(again.clock.now)
    assert conn.statistics().drops.get("hibernation_refused") == 2
    again.server.receive_datagram(early.data, again.client_address, again.clock.now)  # replay
    again.pump()
    assert again.server_messages() == [b"early"]
    echo_both_ways(again, b"still fine")


def test_split_records_prefix_never_raises_and_keeps_the_framed_prefix():
    import random

    from dtlskit.core.records import split_records_prefix_untrusted

    rng = random.Random(5)
    record = bytes([23, 0xFE, 0xFD, 0, 1]) + bytes(6) + (5).to_bytes(2, "big") + b"hello"
    for _ in range(3000):
        data = record * rng.randrange(3) + bytes(rng.randbytes(rng.randrange(30)))
        records, rest = split_records_prefix_untrusted(data)
        joined = b"".join(r.raw for r in records)
        assert data.startswith(joined)
        assert (rest == "malformed_record") == (joined != data)
    assert split_records_prefix_untrusted(record + record) == (
        split_records_untrusted(record + record),
        None,
    )
    records, rest = split_records_prefix_untrusted(record * 5, limit=3)
    assert len(records) == 3 and rest == "too_many_records"
