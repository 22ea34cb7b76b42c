"""What a handshake looks like on the wire, in words, for logs.

Theory of operation
-------------------
The engine reports what it does through two standard loggers, both silent unless a program
(or ``dtlskit -v``) enables them; every call is guarded by ``isEnabledFor`` so a server that
does not log pays one attribute read per flight, not the formatting:

``dtlskit.handshake`` (``DEBUG``)
    each flight sent and received (``ClientHello``, ``ServerHello, Certificate, ...``),
    retransmissions (ours, and re-sends because the peer repeated a flight), alerts seen in
    the clear (sent or received), how a handshake ended, and for a client that offered a
    session, whether it was resumed and if not why.
``dtlskit.datagrams`` (``DEBUG``)
    every datagram in and out with its size and records.

Only framing visible to anyone on the path is described: the record header, and the
handshake message types and alerts of epoch 0. Records of later epochs are encrypted and
shown as such. :func:`describe_records` never raises, whatever the bytes.
"""

from __future__ import annotations

import logging
import struct

__all__ = ["datagram_log", "describe_records", "handshake_log"]

handshake_log = logging.getLogger("dtlskit.handshake")
datagram_log = logging.getLogger("dtlskit.datagrams")

_HEADER = 13
_HANDSHAKE_HEADER = 12

_HANDSHAKE_TYPES = {
    0: "HelloRequest",
    1: "ClientHello",
    2: "ServerHello",
    3: "HelloVerifyRequest",
    4: "NewSessionTicket",
    11: "Certificate",
    12: "ServerKeyExchange",
    13: "CertificateRequest",
    14: "ServerHelloDone",
    15: "CertificateVerify",
    16: "ClientKeyExchange",
    20: "Finished",
}

ALERT_DESCRIPTIONS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    110: "unsupported_extension",
    112: "unrecognized_name",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}


def describe_records(data: bytes | list[bytes]) -> str:
    """The records of a datagram (or a list of records) in words, e.g. ``"ServerHello,
    Certificate, ServerKeyExchange, ServerHelloDone"``; ``"ChangeCipherSpec, Finished
    (encrypted)"``; ``"alert fatal unknown_ca"``. Never raises."""
    chunks = data if isinstance(data, list) else [data]
    names: list[str] = []
    for chunk in chunks:
        names.extend(_describe(chunk))
    return ", ".join(names) or "nothing"


def alerts_in(data: bytes | list[bytes]) -> list[str]:
    """The plaintext alerts among these records, in words (``"fatal unknown_ca"``)."""
    chunks = data if isinstance(data, list) else [data]
    return [
        name.removeprefix("alert ")
        for chunk in chunks
        for name in _describe(chunk)
        if name.startswith("alert ") and "encrypted" not in name
    ]


def _describe(data: bytes) -> list[str]:
    names: list[str] = []
    offset = 0
    while offset + _HEADER <= len(data):
        content_type = data[offset]
        (epoch,) = struct.unpack_from("!H", data, offset + 3)
        (size,) = struct.unpack_from("!H", data, offset + 11)
        payload = data[offset + _HEADER : offset + _HEADER + size]
        offset += _HEADER + size
        if content_type == 20:
            names.append("ChangeCipherSpec")
        elif content_type == 23:
            names.append("application data")
        elif epoch > 0:
            kind = "Finished" if content_type == 22 else "alert" if content_type == 21 else "?"
            names.append(f"{kind} (encrypted)")
        elif content_type == 21 and len(payload) >= 2:
            level = {1: "warning", 2: "fatal"}.get(payload[0], str(payload[0]))
            description = ALERT_DESCRIPTIONS.get(payload[1], f"alert {payload[1]}")
            names.append(f"alert {level} {description}")
        elif content_type == 22:
            names.extend(_handshake_messages(payload))
        else:
            names.append(f"record type {content_type}")
    if offset != len(data):
        names.append(f"{len(data) - offset} bytes unframed")
    return names


def _handshake_messages(payload: bytes) -> list[str]:
    names: list[str] = []
    offset = 0
    while offset + _HANDSHAKE_HEADER <= len(payload):
        kind = payload[offset]
        total = int.from_bytes(payload[offset + 1 : offset + 4], "big")
        fragment_offset = int.from_bytes(payload[offset + 6 : offset + 9], "big")
        fragment_length = int.from_bytes(payload[offset + 9 : offset + 12], "big")
        name = _HANDSHAKE_TYPES.get(kind, f"handshake type {kind}")
        if fragment_offset or fragment_length != total:
            name += f" (bytes {fragment_offset}..{fragment_offset + fragment_length} of {total})"
        names.append(name)
        offset += _HANDSHAKE_HEADER + fragment_length
    return names
