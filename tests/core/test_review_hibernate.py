"""Adversarial review A of issue 15 (hibernated sessions): reproducers.

Self-contained: drop into tests/core/ of the hibernate worktree. Each test states what must hold;
each FAILS on branch `hibernate` at the commit reviewed (2f272bf) unless marked "holds".
Real OpenSSL on both sides (MemoryPair), no timing.
"""

from __future__ import annotations

import pytest

import dtlskit
from dtlskit.config import Limits
from dtlskit.core import State
from dtlskit.testing import MemoryPair

KEY = bytes(range(16))
EVERY = Limits(hibernate_after=0)


def make_pair(server_limits=EVERY, client_limits=EVERY, ciphers="PSK-AES128-GCM-SHA256"):
    server = dtlskit.DTLSConfiguration.server(
        psk_lookup={"dev1": KEY}, ciphers=ciphers, limits=server_limits
    )
    client = dtlskit.DTLSConfiguration.client(
        psk=("dev1", KEY), ciphers=ciphers, limits=client_limits
    )
    return MemoryPair(server, client)


def deliver_all(pair: MemoryPair) -> None:
    for _ in range(1000):
        if not pair.deliver_one():
            return


def forged_record(sequence: int) -> bytes:
    """An epoch-1 application-data record that no key made (anyone on the path can write it)."""
    body = b"\x00" * 40
    return (
        bytes([23, 0xFE, 0xFD, 0, 1])
        + sequence.to_bytes(6, "big")
        + len(body).to_bytes(2, "big")
        + body
    )


# -- H1: forged records next to a genuine one set the window's start ------------------------------


def test_forged_record_in_a_genuine_datagram_does_not_blind_the_hibernated_session():
    """_note_read_high() takes the highest epoch-1 sequence number of EVERY record in a datagram
    OpenSSL read a message from, authenticated or not. A forged record (sequence 2**48-2) glued
    to one genuine record sets read_high; after hibernation every genuine record is 'too old'."""
    pair = make_pair(server_limits=Limits(hibernate_after=5.0), client_limits=Limits())
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    pair.client.send(b"one")
    pair.pump()
    genuine = pair.network.pop()
    assert genuine is not None
    pair.server.receive_datagram(
        genuine.data + forged_record(2**48 - 2), pair.client_address, pair.clock.now
    )
    pair.pump()
    assert pair.server_messages() == [b"one"]
    assert server.hibernate(pair.clock.now)
    for i in range(3):
        pair.client.send(b"after %d" % i)
    pair.pump()
    deliver_all(pair)
    assert pair.server_messages() == [b"one", b"after 0", b"after 1", b"after 2"]


def test_forged_record_in_the_final_flight_does_not_blind_a_session_hibernated_at_once():
    """The same through the datagram that completes the handshake (hibernate_after=0)."""
    pair = make_pair(server_limits=EVERY, client_limits=Limits())

    def tamper(datagram):
        if datagram.to_server and b"\x14\xfe\xfd" in datagram.data:  # has the client's CCS
            datagram.data = datagram.data + forged_record(2**48 - 2)
        return [datagram]

    pair.network.filters.append(tamper)
    assert pair.handshake()
    pair.network.filters.clear()
    server = pair.server_connection
    assert server is not None and server.hibernated
    pair.client.send(b"hello")
    pair.pump()
    deliver_all(pair)
    assert pair.server_messages() == [b"hello"]


# -- M1: the exporter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label",
    [
        b"key expansion",
        b"master secret",
        b"client finished",
        b"server finished",
        b"extended master secret",
        b"client finishedX",
    ],
)
def test_exporter_refuses_reserved_labels_when_hibernated_as_openssl_does(label):
    """OpenSSL refuses labels that start with a PRF label of the handshake (RFC 5705 §4); the
    hibernated exporter computes them."""
    pair = make_pair()
    assert pair.handshake()
    assert pair.client.hibernated
    with pytest.raises(dtlskit.InvalidArgument):
        pair.client.export_keying_material(label, 16)


@pytest.mark.parametrize("size", [65536, 70000])
def test_exporter_context_too_long_is_a_dtlskit_error_when_hibernated(size):
    """len(context).to_bytes(2, 'big') raises a raw OverflowError out of the public API."""
    pair = make_pair()
    assert pair.handshake()
    with pytest.raises(dtlskit.InvalidArgument):
        pair.client.export_keying_material(b"EXPORTER-test", 16, b"x" * size)


# -- L1: a forged record undoes rest() -----------------------------------------------------------


def test_a_forged_record_does_not_rebuild_the_aead_objects_of_a_rested_session():
    """open_as() builds the read AEAD before the tag is checked; a failed tag does not re-arm
    the rest timer (_wake runs only after authentication), so one spoofed datagram per session
    keeps its AES tables in memory until the peer speaks again."""
    pair = make_pair(client_limits=Limits())
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    pair.client.send(b"x")
    pair.pump()
    deliver_all(pair)
    for _ in range(3):
        pair.clock.advance(11.0)
        pair.server.handle_timer(pair.clock.now)
        pair.pump()
    protection = server._hib.protection
    assert not protection.awake
    pair.server.receive_datagram(forged_record(500), pair.client_address, pair.clock.now)
    for _ in range(3):
        pair.clock.advance(11.0)
        pair.server.handle_timer(pair.clock.now)
        pair.pump()
    assert server.statistics().drops == {"bad_record": 1}
    assert not protection.awake


# -- L2: a valid record followed by trailing bytes ----------------------------------------------


@pytest.mark.parametrize("hibernated", [False, True])
def test_valid_record_before_trailing_garbage_is_delivered_either_way(hibernated):
    """OpenSSL reads the records before a framing error (the session delivers b'payload' and
    counts malformed_record); the hibernated path drops the whole datagram."""
    pair = make_pair(server_limits=EVERY if hibernated else Limits(), client_limits=Limits())
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None and server.hibernated is hibernated
    pair.client.send(b"payload")
    pair.pump()
    datagram = pair.network.pop()
    assert datagram is not None
    pair.server.receive_datagram(
        datagram.data + b"\x00\x00\x00", pair.client_address, pair.clock.now
    )
    pair.pump()
    assert pair.server_messages() == [b"payload"]
    assert server.statistics().drops == {"malformed_record": 1}
    assert server.state is State.ESTABLISHED


# -- M2: datagrams of thousands of tiny records: per-record Python work (CPU) --------------------


def tiny_records(count: int, first_sequence: int = 10) -> bytes:
    """``count`` epoch-1 application-data records of 0 bytes (13 bytes each): any off-path
    sender who knows the 4-tuple can send 5,000 of them in one 65 kB datagram."""
    return b"".join(
        bytes([23, 0xFE, 0xFD, 0, 1]) + (first_sequence + i).to_bytes(6, "big") + b"\x00\x00"
        for i in range(count)
    )


def test_a_datagram_of_many_tiny_records_is_not_fed_to_openssl_record_by_record(monkeypatch):
    """f4ca0b8 feeds a several-record datagram to OpenSSL one record at a time (bio_write +
    SSL_read per record) for every established session, hibernating or not: 5,000 calls for
    one datagram. CPU per 65 kB datagram (probe9.py, process_time, DTLSKIT_NATIVE=0): 9.5 ms at
    2f272bf, 50 ms at f9e1bc2, i.e. ~1.3 MB/s of spoofed datagrams keeps a core busy.
    Count-based (no timing): at most a few dozen OpenSSL feeds per datagram."""
    from dtlskit.core.connection import DTLSConnection

    pair = make_pair(server_limits=Limits(), client_limits=Limits())
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    calls = []
    original = DTLSConnection._bio_write

    def counting(self, data):
        calls.append(len(data))
        return original(self, data)

    monkeypatch.setattr(DTLSConnection, "_bio_write", counting)
    pair.server.receive_datagram(tiny_records(5000), pair.client_address, pair.clock.now)
    assert server.state is State.ESTABLISHED
    assert len(calls) <= 64, f"{len(calls)} OpenSSL feeds for one datagram"


def test_a_datagram_of_many_tiny_records_costs_a_hibernated_session_a_bounded_work(monkeypatch):
    """The hibernated path splits every record into a Record object and opens each one
    (37 ms CPU per 65 kB datagram of 0-byte records, probe9.py). A genuine peer never packs
    thousands of records in a datagram: past a few dozen bad ones the rest can be counted as
    one drop. Count-based: at most 64 records looked at one by one."""
    from dtlskit.core.record_protection import RecordProtection

    pair = make_pair(client_limits=Limits())
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None and server.hibernated
    opened = []
    original = RecordProtection.open

    def counting(self, record):
        opened.append(len(record))
        return original(self, record)

    monkeypatch.setattr(RecordProtection, "open", counting)
    pair.server.receive_datagram(tiny_records(5000), pair.client_address, pair.clock.now)
    assert server.state is State.ESTABLISHED
    assert len(opened) <= 64, f"{len(opened)} records opened one by one for one datagram"


# -- L3 (low / hardening): secrets kept after the session ended ----------------------------------


def test_an_ended_hibernated_session_drops_its_record_keys_and_master_secret():
    """After close (or termination) a hibernated engine still holds the master secret, both
    randoms and the record keys (Hibernated + RecordProtection) for as long as the application
    holds the channel, though nothing can use them any more (export_keying_material refuses
    after the end). A client's session DER stays (Session resumption after the end is a
    feature). Python cannot wipe bytes, but it can drop the references at _finish()."""
    pair = make_pair()
    assert pair.handshake()
    pair.client.close()
    pair.pump()
    deliver_all(pair)
    hib = pair.client._hib
    assert hib is not None
    assert not hib.master_secret
    assert getattr(hib, "protection", None) is None
    assert pair.client.session is not None  # still resumable
