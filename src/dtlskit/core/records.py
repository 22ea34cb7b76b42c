"""DTLS record framing: the only code in dtlskit that parses bytes from the network itself.

Theory of operation
-------------------
OpenSSL parses and authenticates records; we only look at the plaintext framing it does not
hide from anyone on the path, for three reasons:

* **Packing our own output** (trusted bytes). A memory BIO loses datagram boundaries: every
  record OpenSSL writes lands in one byte stream. :func:`split_records_trusted` cuts that stream
  back into records (RFC 6347 §4.1: a 13-byte header whose last two bytes are the length) so the
  engine can pack whole records into datagrams no larger than the MTU, never splitting one.

* **Recognising a ClientHello** before any state exists (untrusted bytes).
  :func:`parse_client_hello_untrusted` finds the first record of a datagram, checks that it is an
  epoch-0 ClientHello, or the first fragment of one, and returns the pieces the cookie exchange
  needs (RFC 6347 §4.2.1). A ClientHello may be fragmented (a small-MTU client, a large
  session ticket); everything the cookie exchange needs — version, random, session id and the
  cookie itself — comes before the cipher suites, so the first fragment always carries it and
  the server can answer or verify it without keeping any state. Later fragments are never
  parsed here: they go to an association only once its first fragment's cookie verified.

* **Answering it statelessly**: :func:`build_hello_verify_request` writes a HelloVerifyRequest
  record carrying the cookie, with the record sequence number copied from the ClientHello and
  version DTLS 1.0 as §4.2.1 asks.

Every function named ``*_untrusted`` raises :class:`BadPacket` and nothing else on any input; a
property test feeds them random bytes to keep that true.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CONTENT_ALERT",
    "CONTENT_APPLICATION_DATA",
    "CONTENT_CHANGE_CIPHER_SPEC",
    "CONTENT_HANDSHAKE",
    "HEADER_LENGTH",
    "BadPacket",
    "ClientHello",
    "Record",
    "build_hello_verify_request",
    "half_open_view_untrusted",
    "pack_datagrams",
    "parse_client_hello_untrusted",
    "record_fingerprints_untrusted",
    "split_records_prefix_untrusted",
    "split_records_trusted",
    "split_records_untrusted",
]

HEADER_LENGTH = 13
HANDSHAKE_HEADER_LENGTH = 12

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
_CONTENT_TYPES = frozenset(
    {CONTENT_CHANGE_CIPHER_SPEC, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPLICATION_DATA}
)

HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_HELLO_VERIFY_REQUEST = 3

DTLS_1_0 = b"\xfe\xff"
# Major byte 0xfe is DTLS; 0xff is 1.0, 0xfd is 1.2. Anything else on the wire is not for us.
_DTLS_VERSIONS = frozenset({b"\xfe\xff", b"\xfe\xfd", b"\xfe\xfc"})

MAX_COOKIE_LENGTH = 255  # RFC 6347 §4.2.1 (DTLS 1.2 raised it from 32)


class BadPacket(Exception):
    """Internal: a datagram could not be parsed. Caught in the core, counted, never raised out."""


@dataclass(frozen=True)
class Record:
    """One DTLS record as framed on the wire (the payload may be encrypted)."""

    content_type: int
    version: bytes
    epoch: int
    sequence: int
    payload: bytes
    raw: bytes

    def fingerprint(self) -> bytes:
        """The record without its sequence number: a retransmission has the same fingerprint."""
        return self.raw[:5] + self.raw[11:]


def _split(data: bytes) -> list[Record]:
    records = []
    offset = 0
    length = len(data)
    while offset < length:
        if length - offset < HEADER_LENGTH:
            raise BadPacket(f"truncated record header ({length - offset} bytes)")
        content_type = data[offset]
        version = data[offset + 1 : offset + 3]
        (epoch,) = struct.unpack_from("!H", data, offset + 3)
        sequence = int.from_bytes(data[offset + 5 : offset + 11], "big")
        (size,) = struct.unpack_from("!H", data, offset + 11)
        end = offset + HEADER_LENGTH + size
        if end > length:
            raise BadPacket(f"record length {size} runs past the end of the datagram")
        if content_type not in _CONTENT_TYPES:
            raise BadPacket(f"unknown record content type {content_type}")
        if version not in _DTLS_VERSIONS:
            raise BadPacket(f"record version {version.hex()} is not DTLS")
        records.append(
            Record(
                content_type,
                version,
                epoch,
                sequence,
                data[offset + HEADER_LENGTH : end],
                data[offset:end],
            )
        )
        offset = end
    return records


def split_records_prefix_untrusted(
    data: bytes, limit: int = 1 << 16
) -> tuple[list[Record], str | None]:
    """The well-framed records at the start of a datagram from the network (at most
    ``limit``), and what is wrong with the rest: None (nothing is left), ``"malformed_record"``
    (a framing error: the rest is not read, as OpenSSL stops reading a datagram there) or
    ``"too_many_records"`` (more than ``limit`` records: the rest is not read). Never raises."""
    records: list[Record] = []
    offset, size = 0, len(data)
    while offset < size:
        if len(records) >= limit:
            return records, "too_many_records"
        if size - offset < HEADER_LENGTH:
            return records, "malformed_record"
        end = offset + HEADER_LENGTH + int.from_bytes(data[offset + 11 : offset + 13], "big")
        if end > size:
            return records, "malformed_record"
        try:
            records.extend(_split(data[offset:end]))
        except BadPacket:
            return records, "malformed_record"
        offset = end
    return records, None


def split_records_untrusted(data: bytes) -> list[Record]:
    """Split a datagram received from the network into records.

    Raises :class:`BadPacket` if the framing is wrong anywhere in the datagram.
    """
    return _split(data)


def split_records_trusted(data: bytes) -> list[bytes]:
    """Split OpenSSL's own output stream into raw records.

    OpenSSL wrote these bytes, so a framing error is a bug; it still raises :class:`BadPacket`
    rather than producing garbage. (On every flight of every handshake: it builds no
    :class:`Record` objects.)
    """
    records = []
    offset = 0
    length = len(data)
    while offset < length:
        if length - offset < HEADER_LENGTH:
            raise BadPacket("OpenSSL's output ends in a truncated record header")
        end = offset + HEADER_LENGTH + ((data[offset + 11] << 8) | data[offset + 12])
        if end > length:
            raise BadPacket("OpenSSL's output ends in a truncated record")
        if (
            data[offset] not in _CONTENT_TYPES
            or data[offset + 1 : offset + 3] not in _DTLS_VERSIONS
        ):
            raise BadPacket("OpenSSL's output holds a record that is not DTLS")
        records.append(data[offset:end])
        offset = end
    return records


def record_fingerprints_untrusted(data: bytes, limit: int) -> set[bytes]:
    """The :meth:`Record.fingerprint` of each of the first ``limit`` records of a datagram
    from the network (what tells a peer's retransmission from a new flight).

    Raises :class:`BadPacket` if the framing is wrong anywhere in the datagram.
    """
    prints: set[bytes] = set()
    offset = 0
    length = len(data)
    while offset < length:
        if length - offset < HEADER_LENGTH:
            raise BadPacket(f"truncated record header ({length - offset} bytes)")
        end = offset + HEADER_LENGTH + ((data[offset + 11] << 8) | data[offset + 12])
        if end > length:
            raise BadPacket("record length runs past the end of the datagram")
        if (
            data[offset] not in _CONTENT_TYPES
            or data[offset + 1 : offset + 3] not in _DTLS_VERSIONS
        ):
            raise BadPacket("record is not DTLS")
        if len(prints) < limit:
            prints.add(data[offset : offset + 5] + data[offset + 11 : end])
        offset = end
    return prints


def pack_datagrams(records: list[bytes], mtu: int) -> list[bytes]:
    """Pack whole records greedily into datagrams of at most ``mtu`` bytes.

    A record larger than ``mtu`` (which OpenSSL only produces if the MTU shrank after the record
    was made) travels alone in its own datagram: records are never split.
    """
    if len(records) == 1:
        return [records[0]]
    datagrams: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for record in records:
        if group and size + len(record) > mtu:
            datagrams.append(b"".join(group))
            group = []
            size = 0
        group.append(record)
        size += len(record)
    if group:
        datagrams.append(b"".join(group))
    return datagrams


class ClientHello(NamedTuple):
    """The parts of a ClientHello (whole, or its first fragment) that the cookie exchange needs.

    A named tuple: immutable, and built in a fraction of a frozen dataclass's time (two are
    parsed per handshake)."""

    record_sequence: int
    message_sequence: int
    cookie: bytes
    # Client version, random and session id: the fields before the cookie, so even the first
    # fragment of a fragmented ClientHello carries them (a cookie may be bound to them).
    bound_fields: bytes
    # The ClientHello body as received: the whole body, or the first fragment's part of it.
    body: bytes
    random: bytes = b""
    message_length: int = 0
    """Length of the whole ClientHello body (larger than ``len(body)`` when fragmented)."""

    @property
    def fragmented(self) -> bool:
        """Whether this is only the first fragment of a larger ClientHello."""
        return len(self.body) < self.message_length


def _check_client_hello_tail(body: bytes, offset: int) -> None:
    """The framing after the cookie of a whole ClientHello: cipher suites (a non-empty even
    length), compression methods (non-empty), then extensions filling the body exactly."""
    size = len(body)
    if offset + 2 > size:
        raise BadPacket("ClientHello is truncated")
    suites = (body[offset] << 8) | body[offset + 1]
    if not suites or suites % 2:
        raise BadPacket("ClientHello cipher suite list is malformed")
    offset += 2 + suites
    if offset >= size:
        raise BadPacket("ClientHello is truncated")
    methods = body[offset]
    if not methods:
        raise BadPacket("ClientHello has no compression methods")
    offset += 1 + methods
    if offset > size:
        raise BadPacket("ClientHello is truncated")
    if offset == size:
        return
    if offset + 2 > size:
        raise BadPacket("ClientHello is truncated")
    if offset + 2 + ((body[offset] << 8) | body[offset + 1]) != size:
        raise BadPacket("ClientHello extensions do not fill the message")


def parse_client_hello_untrusted(datagram: bytes) -> ClientHello:
    """Parse the first record of ``datagram`` as an epoch-0 ClientHello, whole or the first
    fragment of one (fragment offset 0).

    A whole ClientHello is checked to the end of its extensions. Of a first fragment only what
    it holds is checked: version, random, session id and cookie must all fit in it (RFC 6347
    §4.2.1 puts the cookie there; OpenSSL's ``DTLSv1_listen`` needs it there too), the rest is
    OpenSSL's to judge once the cookie is verified. Raises :class:`BadPacket` for anything else,
    including later fragments. Later records in the datagram are not looked at.
    """
    if len(datagram) < HEADER_LENGTH:
        raise BadPacket("datagram shorter than a record header")
    content_type = datagram[0]
    if content_type != CONTENT_HANDSHAKE:
        raise BadPacket("first record is not a handshake record")
    if datagram[1:3] not in _DTLS_VERSIONS:
        raise BadPacket("record version is not DTLS")
    (epoch,) = struct.unpack_from("!H", datagram, 3)
    if epoch != 0:
        raise BadPacket("ClientHello record is not in epoch 0")
    record_sequence = int.from_bytes(datagram[5:11], "big")
    (size,) = struct.unpack_from("!H", datagram, 11)
    payload = datagram[HEADER_LENGTH : HEADER_LENGTH + size]
    if len(payload) != size:
        raise BadPacket("ClientHello record is truncated")
    if len(payload) < HANDSHAKE_HEADER_LENGTH:
        raise BadPacket("handshake header is truncated")
    if payload[0] != HANDSHAKE_CLIENT_HELLO:
        raise BadPacket(f"handshake message type {payload[0]} is not ClientHello")
    message_length = int.from_bytes(payload[1:4], "big")
    (message_sequence,) = struct.unpack_from("!H", payload, 4)
    fragment_offset = int.from_bytes(payload[6:9], "big")
    fragment_length = int.from_bytes(payload[9:12], "big")
    if fragment_offset != 0:
        raise BadPacket("ClientHello fragment is not the first one")
    if fragment_length > message_length:
        raise BadPacket("ClientHello fragment is longer than the message")
    body = payload[HANDSHAKE_HEADER_LENGTH:]
    if len(body) != fragment_length:
        raise BadPacket("ClientHello fragment length does not match its record")

    # Version, random, session id and cookie: all that the cookie exchange needs. The rest
    # (cipher suites, compression methods, extensions) is OpenSSL's to judge once the cookie
    # verified; only its outer framing is checked here, and only in a whole ClientHello.
    size = len(body)
    if size < 35 or body[:2] not in _DTLS_VERSIONS:
        raise BadPacket("ClientHello is truncated or its version is not DTLS")
    random = body[2:34]
    cookie_start = 35 + body[34]
    if cookie_start >= size:
        raise BadPacket("ClientHello is truncated in its session id")
    cookie_end = cookie_start + 1 + body[cookie_start]
    if cookie_end > size:
        raise BadPacket("ClientHello is truncated in its cookie")
    cookie = body[cookie_start + 1 : cookie_end]
    if fragment_length == message_length:
        _check_client_hello_tail(body, cookie_end)
    return ClientHello(
        record_sequence=record_sequence,
        message_sequence=message_sequence,
        cookie=cookie,
        bound_fields=body[:cookie_start],
        body=body,
        random=random,
        message_length=message_length,
    )


def build_hello_verify_request(client_hello: ClientHello, cookie: bytes) -> bytes:
    """A HelloVerifyRequest record answering ``client_hello`` with ``cookie``.

    RFC 6347 §4.2.1: the record sequence number is copied from the ClientHello and the version
    is DTLS 1.0 whatever will be negotiated. The message sequence is copied from the ClientHello
    too: 0 for a first ClientHello; for a ClientHello whose cookie expired (message_seq 1) a
    HelloVerifyRequest numbered 0 would be discarded by the client as stale, and it would go on
    sending the expired cookie until its deadline.
    """
    if len(cookie) > MAX_COOKIE_LENGTH:
        raise ValueError("cookie longer than 255 bytes")
    body = DTLS_1_0 + bytes([len(cookie)]) + cookie
    length = len(body).to_bytes(3, "big")
    message = (
        bytes([HANDSHAKE_HELLO_VERIFY_REQUEST])
        + length
        + client_hello.message_sequence.to_bytes(2, "big")
        + b"\x00\x00\x00"  # fragment_offset
        + length
        + body
    )
    header = (
        bytes([CONTENT_HANDSHAKE])
        + DTLS_1_0
        + b"\x00\x00"
        + client_hello.record_sequence.to_bytes(6, "big")
        + struct.pack("!H", len(message))
    )
    return header + message


def handshake_message_sequence_trusted(record: bytes) -> int | None:
    """The message_seq of a plaintext handshake record we produced, else None."""
    if (
        len(record) >= HEADER_LENGTH + HANDSHAKE_HEADER_LENGTH
        and record[0] == CONTENT_HANDSHAKE
        and record[3:5] == b"\x00\x00"
    ):
        return int.from_bytes(record[HEADER_LENGTH + 4 : HEADER_LENGTH + 6], "big")
    return None


def half_open_view_untrusted(datagram: bytes) -> tuple[list[tuple[int, int]], int]:
    """What the server checks in a datagram for a half-open association, in one pass over the
    records OpenSSL would read (those before the first one whose framing runs past the
    datagram: OpenSSL drops the rest of the datagram there):

    * ``(message_seq, message_length)`` of every plaintext (epoch-0) handshake fragment;
    * the bytes of the records that are not in epoch 0.

    Never raises: the server uses it to keep a half-open peer from making OpenSSL buffer
    handshake messages or records it will never need (see :mod:`dtlskit.core.server`).
    """
    headers = []
    later = 0
    offset = 0
    length = len(datagram)
    while length - offset >= HEADER_LENGTH:
        end = offset + HEADER_LENGTH + ((datagram[offset + 11] << 8) | datagram[offset + 12])
        if end > length:
            break
        if datagram[offset + 3 : offset + 5] != b"\x00\x00":
            later += end - offset
        elif datagram[offset] == CONTENT_HANDSHAKE:
            position = offset + HEADER_LENGTH
            while end - position >= HANDSHAKE_HEADER_LENGTH:
                message_length = int.from_bytes(datagram[position + 1 : position + 4], "big")
                (message_seq,) = struct.unpack_from("!H", datagram, position + 4)
                fragment_length = int.from_bytes(datagram[position + 9 : position + 12], "big")
                headers.append((message_seq, message_length))
                position += HANDSHAKE_HEADER_LENGTH + fragment_length
        offset = end
    return headers, later
