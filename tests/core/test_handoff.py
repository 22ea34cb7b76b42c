"""The hand-off listener's engine and message, sans I/O (issue 12)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlskit.core import DTLSConnection
from dtlskit.core.cookies import CookieJar
from dtlskit.core.handoff import (
    HandoffGate,
    decode_handoff_untrusted,
    encode_handoff,
)
from dtlskit.core.records import BadPacket

PEER = ("127.0.0.1", 40000)


def client_hellos(client_config, now=1000.0):  # type: ignore[no-untyped-def]
    """A gate, and a client's first and cookie-carrying ClientHellos."""
    gate = HandoffGate(CookieJar(b"k" * 32))
    client = DTLSConnection(client_config, server=False)
    client.connect(now)
    (first,) = client.datagrams_to_send()
    assert gate.receive_datagram(first, PEER, now) is None
    ((hello_verify, to),) = gate.datagrams_to_send()
    assert to == PEER and len(hello_verify) < len(first)
    client.receive_datagram(hello_verify, now)
    (second,) = client.datagrams_to_send()
    return gate, first, second


def test_a_valid_cookie_is_accepted_once_until_sealed(client_config):
    gate, _, second = client_hellos(client_config)
    accepted = gate.receive_datagram(second, PEER, 1000.5)
    assert accepted is not None and accepted.client_hello == second
    gate.handed_off(accepted, 1000.5)
    # Queued before the hand-off's connect(): a retransmission.
    assert gate.receive_datagram(second, PEER, 1000.6) is None
    assert gate.statistics().drops == {"duplicate_client_hello": 1}
    # After the listener read its queue empty, a repeat means the hand-off's socket is gone.
    gate.seal()
    again = gate.receive_datagram(second, PEER, 1001.0)
    assert again is not None
    stats = gate.statistics()
    assert stats.handed_off == 1 and stats.handed_off_again == 1


def test_cookies_bind_the_address_and_junk_is_counted(client_config):
    gate, _, second = client_hellos(client_config)
    assert gate.receive_datagram(second, ("127.0.0.1", 40001), 1000.5) is None
    assert gate.receive_datagram(b"\x17junk", PEER, 1000.5) is None
    assert gate.receive_datagram(b"\x16junk", PEER, 1000.5) is None
    assert gate.statistics().drops == {
        "bad_cookie": 1,
        "not_client_hello": 1,
        "malformed_client_hello": 1,
    }
    assert gate.datagrams_to_send() == []


def test_records_are_bounded_and_expire(client_config):
    gate, _, second = client_hellos(client_config)
    gate = HandoffGate(gate.cookies, max_records=2)
    for port in range(3):
        accepted = gate.receive_datagram(second, PEER, 1000.5)
        assert accepted is not None
        gate.handed_off(accepted.__class__(("127.0.0.1", port), second, bytes([port])), 1000.5)
    assert len(gate._records) == 2


def test_message_round_trip_ipv4_and_ipv6(client_config):
    _, _, second = client_hellos(client_config)
    for local, peer in (
        (("127.0.0.1", 4433), ("127.0.0.9", 5000)),
        (("::1", 4433, 0, 0), ("fe80::1", 5000, 0, 3)),
    ):
        message = decode_handoff_untrusted(encode_handoff(local, peer, second))
        assert message.local_address[:2] == local[:2]
        assert message.peer_address[:2] == peer[:2]
        assert message.client_hello == second
    with pytest.raises(ValueError, match="families"):
        encode_handoff(("127.0.0.1", 1), ("::1", 2), second)


def _cookie_hello() -> bytes:
    import ssl

    import dtlskit

    config = dtlskit.DTLSConfiguration.client(verify_mode=ssl.CERT_NONE, check_hostname=False)
    gate = HandoffGate(CookieJar(b"k" * 32))
    client = DTLSConnection(config, server=False)
    client.connect(0.0)
    gate.receive_datagram(client.datagrams_to_send()[0], PEER, 0.0)
    client.receive_datagram(gate.datagrams_to_send()[0][0], 0.0)
    return client.datagrams_to_send()[0]


MESSAGE = encode_handoff(("127.0.0.1", 1), ("127.0.0.2", 2), _cookie_hello())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoding_random_bytes_raises_only_bad_packet(data):
    with contextlib.suppress(BadPacket):
        decode_handoff_untrusted(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255), st.booleans())
def test_decoding_a_corrupted_message_raises_only_bad_packet(offset, value, cut):
    message = bytearray(MESSAGE)
    message[offset % len(message)] = value
    if cut:
        del message[offset % len(message) :]
    with contextlib.suppress(BadPacket):
        decode_handoff_untrusted(bytes(message))


def test_the_intact_message_decodes():
    assert decode_handoff_untrusted(MESSAGE).peer_address == ("127.0.0.2", 2)


def test_an_oversized_or_late_client_hello_is_dropped_and_counted(client_config):
    gate, _, second = client_hellos(client_config)
    small = HandoffGate(gate.cookies, max_client_hello_size=64)
    assert small.receive_datagram(second, PEER, 1000.5) is None
    assert small.statistics().drops == {"client_hello_too_large": 1}
    # The handshake header's message_seq (record header 13 bytes, then type 1, length 3):
    # a valid cookie on a ClientHello numbered 2 is no first flight; dropped, not handed off.
    late = bytearray(second)
    late[17:19] = (2).to_bytes(2, "big")
    assert gate.receive_datagram(bytes(late), PEER, 1000.5) is None
    assert gate.statistics().drops == {"client_hello_sequence_too_high": 1}


def test_expired_records_are_forgotten_and_a_fresh_one_is_kept(client_config):
    gate, _, second = client_hellos(client_config)
    tick = gate.cookies.tick_seconds
    accepted = gate.receive_datagram(second, PEER, 1000.5)
    assert accepted is not None
    gate.handed_off(accepted, 1000.5)
    other = ("127.0.0.1", 40002)
    gate.handed_off(accepted.__class__(other, second, b"r" * 32), 1000.5 + 3 * tick)
    # Past two ticks the first record is gone (no cookie that old verifies); the second stays.
    gate._expire(1000.5 + 3 * tick)
    assert list(gate._records) == [(other, b"r" * 32)]


def test_a_message_refuses_mixed_families_and_an_ipv4_scope(client_config):
    _, _, second = client_hellos(client_config)
    with pytest.raises(ValueError, match="different families"):
        encode_handoff(("127.0.0.1", 4433), ("::1", 5000, 0, 0), second)
    message = bytearray(encode_handoff(("127.0.0.1", 4433), ("127.0.0.9", 5000), second))
    scoped = encode_handoff(("::1", 4433, 0, 7), ("fe80::1", 5000, 0, 7), second)
    # Give the IPv4 message the scope fields of the IPv6 one: refused as a bad packet.
    header = len(message) - len(second) - 8  # both IPv4 addresses (4 bytes each) follow it
    assert header > 0
    forged = bytearray(scoped[:header]) + message[header:]
    forged[5] = 4  # family byte back to IPv4 (checked below against the header's layout)
    with pytest.raises(BadPacket):
        decode_handoff_untrusted(bytes(forged))


def test_a_message_refuses_port_zero_and_an_empty_client_hello(client_config):
    _, _, second = client_hellos(client_config)
    with pytest.raises(ValueError, match="1 to 65535 bytes"):
        encode_handoff(("127.0.0.1", 4433), ("127.0.0.9", 5000), b"")
    message = bytearray(encode_handoff(("127.0.0.1", 4433), ("127.0.0.9", 5000), second))
    message[6:8] = bytes(2)  # the local port (after magic, version and family)
    with pytest.raises(BadPacket, match="port 0"):
        decode_handoff_untrusted(bytes(message))
