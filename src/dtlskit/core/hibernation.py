"""Hibernation: what an established session keeps once its OpenSSL object is released.

Theory of operation
-------------------
:meth:`DTLSConnection._hibernate <dtlskit.core.connection.DTLSConnection>` calls
:func:`hibernate` with the session's ``SSL.Connection``. It returns a :class:`Hibernated` (the
record keys in a :class:`~dtlskit.core.record_protection.RecordProtection`, plus the few facts
about the handshake that the engine's properties report), or a refusal reason, in which case
the engine keeps OpenSSL and nothing changed but one never-sent probe record.

Refused: a suite :mod:`~dtlskit.core.record_protection` does not implement, a protocol other
than DTLS 1.2, a probe that does not come out as one epoch-1 application-data record, and a
probe our own :meth:`~dtlskit.core.record_protection.RecordProtection.seal_at` does not
reproduce byte for byte (the self-check of keys, IVs and nonce rule against OpenSSL's own).

Kept, and why:

* the master secret and both randoms (112 bytes): RFC 5705 keying material export, which must
  keep working and needs exactly these (the record keys are derived once, at release);
* the negotiated facts the engine reports: version, cipher, whether it resumed, ALPN, SRTP
  profile, SNI name, the peer's certificates (``cryptography`` objects; none with PSK);
* a client's session (its DER, with the ticket if the server issued one) for later resumption.
  A server's tickets live in its ``SSL.Context`` (ticket keys, session cache), which outlives
  every session: tickets issued before the release resume as before.
"""

from __future__ import annotations

import sys
from typing import Any

from OpenSSL import SSL

from . import _bindings
from .record_protection import RecordProtection, export_keying_material, suite_for
from .records import split_records_trusted

__all__ = ["ALERT_NAMES", "Hibernated", "hibernate", "release"]

_PROBE = b"\x00"

# RFC 5246 §7.2 (and RFC 4279, 7301, 6066) alert descriptions, in OpenSSL's words.
ALERT_NAMES: dict[int, str] = {
    0: "close notify",
    10: "unexpected message",
    20: "bad record mac",
    21: "decryption failed",
    22: "record overflow",
    30: "decompression failure",
    40: "handshake failure",
    41: "no certificate",
    42: "bad certificate",
    43: "unsupported certificate",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    47: "illegal parameter",
    48: "unknown ca",
    49: "access denied",
    50: "decode error",
    51: "decrypt error",
    60: "export restriction",
    70: "protocol version",
    71: "insufficient security",
    80: "internal error",
    86: "inappropriate fallback",
    90: "user canceled",
    100: "no renegotiation",
    110: "unsupported extension",
    111: "certificate unobtainable",
    112: "unrecognized name",
    113: "bad certificate status response",
    114: "bad certificate hash value",
    115: "unknown psk identity",
    116: "certificate required",
    120: "no application protocol",
}


class Hibernated:
    """Record keys and the handshake's outcome, without OpenSSL."""

    __slots__ = (
        "alpn",
        "cipher",
        "cleartext_mtu_overhead",
        "client_random",
        "master_secret",
        "peer_chain",
        "peer_verified_chain",
        "prf_hash",
        "protection",
        "reused",
        "server_name",
        "server_random",
        "session_der",
        "srtp",
        "version",
    )

    def __init__(self) -> None:
        self.protection: RecordProtection | None = None
        self.master_secret = b""
        self.client_random = b""
        self.server_random = b""
        self.prf_hash = "sha256"
        self.version = "DTLSv1.2"
        self.cipher = ""
        self.reused = False
        self.alpn: str | None = None
        self.srtp: str | None = None
        self.server_name: str | None = None
        self.peer_chain: tuple[Any, ...] = ()
        self.peer_verified_chain: tuple[Any, ...] = ()
        self.session_der: bytes | None = None
        self.cleartext_mtu_overhead = 0

    def forget_secrets(self) -> None:
        """The session ended: drop the master secret, the randoms and the record keys (Python
        cannot wipe ``bytes``; dropping the references is what it can do). A client's session
        DER stays: resuming it later is a feature."""
        self.master_secret = self.client_random = self.server_random = b""
        self.protection = None

    def export(self, label: bytes, length: int, context: bytes | None) -> bytes:
        """RFC 5705 keying material, as OpenSSL would have exported it."""
        return export_keying_material(
            self.prf_hash,
            self.master_secret,
            self.client_random,
            self.server_random,
            label,
            length,
            context,
        )


def release(ssl: SSL.Connection) -> None:
    """Prepare ``ssl`` to be freed after :func:`hibernate` succeeded. Freeing an SSL object that
    has not shut down makes OpenSSL drop its session from the server's cache
    (``ssl_clear_bad_session``): marking it shut down keeps the session ID resumable as it would
    have been (tickets do not depend on this). Nothing is sent."""
    ssl.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)


def hibernate(
    ssl: SSL.Connection, *, server: bool, read_high: int, keep_session: bool
) -> Hibernated | str:
    """Take what an established session needs from ``ssl`` (whose output BIO the caller has
    drained), or say why not. ``read_high``: the highest epoch-1 sequence number OpenSSL
    authenticated from the peer (-1 if unknown). ``keep_session``: keep the DER of the session
    (clients: for resumption later)."""
    cipher = ssl.get_cipher_name()
    suite = suite_for(cipher)
    if suite is None:
        return f"suite {cipher} is not implemented without OpenSSL"
    version = ssl.get_protocol_version_name()
    if version != "DTLSv1.2":  # pragma: no cover - every suite above is DTLS 1.2-only AEAD
        return f"protocol {version} is not DTLS 1.2"
    master = ssl.master_key()
    client_random = ssl.client_random()
    server_random = ssl.server_random()
    if not master or not client_random or not server_random:  # pragma: no cover - defensive:
        # pyOpenSSL raises rather than return an empty secret once a suite was negotiated
        return "OpenSSL did not expose the session's secrets"
    # The probe: one record OpenSSL seals and nobody receives. It tells where OpenSSL's write
    # sequence and explicit nonce are, and checks our keys against OpenSSL's.
    try:
        ssl.write(_PROBE)
    except SSL.Error:
        return "OpenSSL could not seal the probe record"
    pending = _bindings.memory_bio_pending(ssl) or 65536
    try:
        out = ssl.bio_read(pending)
        records = split_records_trusted(out)
    except Exception:  # pragma: no cover - OpenSSL's own output is framed
        return "OpenSSL's probe output could not be read"
    if len(records) != 1:
        return "the probe did not come out as one record"
    probe = records[0]
    if probe[0] != 23 or probe[3:5] != b"\x00\x01":
        return "the probe is not an epoch-1 application-data record"
    sequence = int.from_bytes(probe[5:11], "big")
    explicit = (
        int.from_bytes(probe[13 : 13 + suite.explicit_nonce_length], "big")
        if suite.explicit_nonce_length
        else sequence | 1 << 48
    )
    try:
        protection = RecordProtection(
            suite,
            master,
            client_random,
            server_random,
            server=server,
            write_sequence=sequence + 1,
            write_explicit=explicit + 1,
            read_high=read_high,
        )
    except ValueError:  # pragma: no cover - OpenSSL's write sequence cannot be set near 2**48
        return "the write sequence numbers are exhausted"
    if protection.seal_at(23, _PROBE, sequence, explicit) != probe:
        return "our record protection does not reproduce OpenSSL's probe record"
    state = Hibernated()
    state.protection = protection
    state.master_secret = master
    state.client_random = client_random
    state.server_random = server_random
    state.prf_hash = suite.prf_hash
    state.version = sys.intern(version)  # one string shared by every session, not one each
    state.cipher = sys.intern(cipher or "")
    state.reused = _bindings.session_reused(ssl)
    selected = ssl.get_alpn_proto_negotiated()
    state.alpn = selected.decode("utf-8", "replace") if selected else None
    profile = ssl.get_selected_srtp_profile()
    state.srtp = profile.decode("ascii", "replace") if profile else None
    name = ssl.get_servername()
    state.server_name = name.decode("utf-8", "replace") if name else None
    state.peer_chain = tuple(ssl.get_peer_cert_chain(as_cryptography=True) or ())
    leaf = ssl.get_peer_certificate(as_cryptography=True)
    if leaf is not None and (not state.peer_chain or state.peer_chain[0] != leaf):
        state.peer_chain = (leaf, *state.peer_chain)
    state.peer_verified_chain = tuple(ssl.get_verified_chain(as_cryptography=True) or ())
    if keep_session:
        session = _bindings.get_session(ssl)
        state.session_der = None if session is None else _bindings.session_to_der(session)
    state.cleartext_mtu_overhead = 13 + suite.explicit_nonce_length + suite.tag_length
    return state
