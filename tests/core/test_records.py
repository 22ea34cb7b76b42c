"""Parsers of network bytes raise only BadPacket; packing never splits a record."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlskit.core.cookies import COOKIE_LENGTH, CookieJar
from dtlskit.core.records import (
    BadPacket,
    ClientHello,
    build_hello_verify_request,
    pack_datagrams,
    parse_client_hello_untrusted,
    record_fingerprints_untrusted,
    split_records_trusted,
    split_records_untrusted,
)


@given(st.binary(max_size=2000))
def test_client_hello_parser_raises_only_bad_packet(data):
    with contextlib.suppress(BadPacket):
        parse_client_hello_untrusted(data)


@given(st.binary(max_size=300))
def test_client_hello_parser_with_plausible_header(tail):
    data = b"\x16\xfe\xfd\x00\x00" + b"\x00" * 6 + len(tail).to_bytes(2, "big") + b"\x01" + tail
    with contextlib.suppress(BadPacket):
        parse_client_hello_untrusted(data)


@given(st.binary(max_size=2000))
def test_record_splitter_raises_only_bad_packet(data):
    try:
        records = split_records_untrusted(data)
    except BadPacket:
        return
    assert b"".join(r.raw for r in records) == data


@given(
    st.lists(st.integers(min_value=13, max_value=600), max_size=40),
    st.integers(min_value=256, max_value=1500),
)
def test_packing_keeps_records_whole_and_within_mtu(sizes, mtu):
    records = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    datagrams = pack_datagrams(records, mtu)
    assert b"".join(datagrams) == b"".join(records)
    for datagram in datagrams:
        assert len(datagram) <= mtu or len(datagram) in sizes


def test_hello_verify_request_layout():
    hello = ClientHello(
        record_sequence=7, message_sequence=0, cookie=b"", bound_fields=b"", body=b""
    )
    record = build_hello_verify_request(hello, b"C" * 32)
    assert record[0] == 22 and record[1:3] == b"\xfe\xff"
    assert int.from_bytes(record[5:11], "big") == 7
    assert record[13] == 3  # hello_verify_request
    assert record[-33] == 32 and record[-32:] == b"C" * 32
    with pytest.raises(ValueError):
        build_hello_verify_request(hello, b"x" * 256)


def test_cookie_binds_address_fields_and_time():
    jar = CookieJar(b"s" * 32, tick_seconds=30)
    address = ("127.0.0.1", 1234)
    cookie = jar.issue(address, b"fields", 100.0)
    assert len(cookie) == COOKIE_LENGTH
    assert jar.verify(cookie, address, b"fields", 100.0)
    assert jar.verify(cookie, address, b"fields", 100.0 + 30.0)  # previous tick still valid
    assert not jar.verify(cookie, address, b"fields", 100.0 + 61.0)
    assert not jar.verify(cookie, ("127.0.0.1", 1235), b"fields", 100.0)
    assert not jar.verify(cookie, address, b"fieldz", 100.0)
    assert not jar.verify(cookie[:-1], address, b"fields", 100.0)
    assert not jar.verify(b"", address, b"fields", 100.0)
    with pytest.raises(ValueError):
        CookieJar(b"short")


def test_cookie_check_works_in_the_first_tick_after_boot():
    """time.monotonic() counts from boot: a server started then has 'now' below one tick."""
    jar = CookieJar(b"s" * 32, tick_seconds=30)
    cookie = jar.issue(("127.0.0.1", 1), b"fields", 5.0)
    assert jar.verify(cookie, ("127.0.0.1", 1), b"fields", 5.0)
    assert not jar.verify(cookie, ("127.0.0.1", 2), b"fields", 5.0)
    assert not jar.verify(b"x" * COOKIE_LENGTH, ("127.0.0.1", 1), b"fields", 0.0)


def _client_hello(body: bytes, offset: int, length: int, total: int) -> bytes:
    message = b"\x01" + total.to_bytes(3, "big") + b"\x00\x01"
    message += offset.to_bytes(3, "big") + length.to_bytes(3, "big") + body
    return b"\x16\xfe\xfd\x00\x00" + b"\x00" * 6 + len(message).to_bytes(2, "big") + message


def test_first_fragment_of_a_client_hello_is_parsed_up_to_its_cookie():
    prefix = b"\xfe\xfd" + b"R" * 32 + b"\x01S" + b"\x20" + b"C" * 32
    hello = parse_client_hello_untrusted(_client_hello(prefix + b"\x00", 0, len(prefix) + 1, 900))
    assert hello.fragmented and hello.message_length == 900
    assert hello.random == b"R" * 32 and hello.cookie == b"C" * 32
    assert hello.bound_fields == prefix[:36]  # version, random, session id
    # The cookie must fit in the first fragment; a later fragment is never parsed.
    cut = prefix[:-5]
    with pytest.raises(BadPacket):
        parse_client_hello_untrusted(_client_hello(cut, 0, len(cut), 900))
    with pytest.raises(BadPacket, match="not the first"):
        parse_client_hello_untrusted(_client_hello(prefix, 100, len(prefix), 900))
    with pytest.raises(BadPacket, match="longer than the message"):
        parse_client_hello_untrusted(_client_hello(prefix, 0, len(prefix), 10))


@given(st.binary(max_size=2000))
def test_fingerprints_agree_with_the_record_splitter(data):
    try:
        records = split_records_untrusted(data)
    except BadPacket:
        with pytest.raises(BadPacket):
            record_fingerprints_untrusted(data, 64)
        return
    assert record_fingerprints_untrusted(data, 64) == {r.fingerprint() for r in records[:64]}


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8))
def test_trusted_splitter_agrees_with_the_untrusted_one(payloads):
    stream = b"".join(
        b"\x16\xfe\xfd\x00\x00" + bytes(6) + len(p).to_bytes(2, "big") + p for p in payloads
    )
    assert split_records_trusted(stream) == [r.raw for r in split_records_untrusted(stream)]
    if stream:
        with pytest.raises(BadPacket):
            split_records_trusted(stream[:-1])
