"""DTLS 1.2 record protection for an established session whose OpenSSL object was released.

Theory of operation
-------------------
After a handshake, OpenSSL's ``SSL`` object holds ~70 KiB per session (handshake buffers, BIOs,
record-layer objects) that pyOpenSSL gives no way to free short of freeing the whole object.
What an established DTLS 1.2 session needs to carry application data is much smaller: two AEAD
keys, two fixed IVs, the next sequence number to write and the replay state of what was read.
This module holds exactly that, and protects records with ``cryptography``'s AEAD classes
(``AESGCM``, ``AESCCM``, ``ChaCha20Poly1305``). There is no cipher code of our own here: only
the framing around the primitives, which RFC 6347 and the AEAD RFCs define byte for byte.

*Keys* (RFC 5246 §6.3). ``key_block = PRF(master_secret, "key expansion", server_random +
client_random)`` with the TLS 1.2 PRF (RFC 5246 §5: ``P_hash`` on HMAC, here cryptography's
``HMAC``) on SHA-256, or SHA-384 for the ``*_SHA384`` suites. AEAD suites have no MAC keys, so
the block is ``client_write_key | server_write_key | client_write_IV | server_write_IV``. The
master secret and both randoms come from pyOpenSSL after the handshake (``master_key()``,
``client_random()``, ``server_random()``); the suite from the negotiated cipher's name. A name
not in :data:`SUITES` (CBC, ARIA, Camellia, anything new) gives ``None``: the caller keeps the
SSL object.

*Records* (RFC 6347 §4.1). A record is a 13-byte header ``type(1) version(2) epoch(2)
sequence_number(6) length(2)`` and the AEAD output. The additional data is (RFC 5246
§6.2.3.3, with DTLS's epoch-qualified sequence number, RFC 6347 §4.1.2.1) ``epoch || seq ||
type || version || plaintext length``. The nonce:

* AES-GCM (RFC 5288 §3) and AES-CCM / CCM-8 (RFC 6655 §3): ``salt(4) || explicit(8)``, the
  salt being the 4-byte ``*_write_IV``; the 8 explicit bytes travel in front of the ciphertext.
  RFC 5288 lets the sender choose them as long as they never repeat under one key. OpenSSL may
  start them anywhere (its GCM counter starts at a random value); we continue from the explicit
  nonce of the last record OpenSSL wrote, adding one per record, so no value is ever used twice
  for one key as long as OpenSSL's own sequence would not have repeated one.
* ChaCha20-Poly1305 (RFC 7905 §2): the 12-byte ``*_write_IV`` XORed with ``epoch || seq``
  left-padded to 12 bytes; nothing explicit on the wire.

The tag is 16 bytes, except 8 for CCM-8 (RFC 6655 §4): the tag length is a property of the
suite, fixed at construction; never taken from a record.

*Sequence numbers.* Writing continues OpenSSL's epoch-1 numbering: before releasing OpenSSL the
engine has it seal one probe message that is never sent (a gap a receiver's window absorbs, as
it absorbs a lost datagram), reads its epoch, sequence number and explicit nonce from the
record, and checks that :meth:`RecordProtection.seal` of the same message at the same position
produces the same bytes: a wrong key, IV or nonce rule refuses hibernation instead of sending
records the peer would drop. A write sequence number never wraps: at ``2**48 - 1`` seal refuses
(RFC 6347 §4.1: renegotiate before; we end the session instead).

*Replay window* (RFC 6347 §4.1.2.6): a 64-record sliding bitmap anchored at the highest
authenticated sequence number. A record is checked against the window before decryption (cheap
rejection) and marked only after its tag verified, so forged records never move the window.
At release the engine passes the highest sequence number OpenSSL authenticated; every number up
to it counts as seen (records still in flight from before are dropped, never accepted twice).

*Epochs.* A hibernated session is in epoch 1 for good: renegotiation is refused (sessions that
allow it keep OpenSSL). A record of another epoch is not authenticated here; the engine looks at
epoch-0 records only to recognise the peer's retransmitted final flight.

*Exporter* (RFC 5705 §4): ``PRF(master_secret, label, client_random + server_random
[+ uint16 context length + context])``; the master secret and both randoms are kept for it (and
nothing else).

:meth:`RecordProtection.open` never raises for any bytes: it returns the content type and
plaintext, or a drop reason.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

__all__ = [
    "DTLS_1_2",
    "SUITES",
    "RecordProtection",
    "Suite",
    "export_keying_material",
    "prf",
    "suite_for",
]

DTLS_1_2 = b"\xfe\xfd"
HEADER_LENGTH = 13
WINDOW = 64
_MAX_PLAINTEXT = 2**14
_MAX_SEQUENCE = 2**48 - 1
_VALID_TYPES = frozenset({20, 21, 22, 23})

DROP_MALFORMED = "malformed_record"
DROP_WRONG_EPOCH = "wrong_epoch"
DROP_BAD_RECORD = "bad_record"


class Suite(NamedTuple):
    """What record protection needs to know about one negotiated cipher suite."""

    aead: str
    """``"gcm"``, ``"ccm"`` or ``"chacha20"``."""
    key_length: int
    fixed_iv_length: int
    explicit_nonce_length: int
    tag_length: int
    prf_hash: str
    """``"sha256"`` or ``"sha384"``."""


_GCM128 = Suite("gcm", 16, 4, 8, 16, "sha256")
_GCM256 = Suite("gcm", 32, 4, 8, 16, "sha384")
_CHACHA = Suite("chacha20", 32, 12, 0, 16, "sha256")
_CCM128 = Suite("ccm", 16, 4, 8, 16, "sha256")
_CCM256 = Suite("ccm", 32, 4, 8, 16, "sha256")
_CCM8_128 = Suite("ccm", 16, 4, 8, 8, "sha256")
_CCM8_256 = Suite("ccm", 32, 4, 8, 8, "sha256")

# OpenSSL's names of the DTLS 1.2 AEAD suites implemented here, each tested byte for byte
# against OpenSSL in both directions (tests/core/test_record_protection.py) and, per AEAD, against
# OpenSSL and GnuTLS over UDP (tests/core/test_hibernation_interop.py). RSA and finite-field DHE
# suites would use the same record protection but cannot be negotiated by dtlskit's contexts
# here (EC certificates, no DH parameters), so they are not listed: untested, they keep OpenSSL.
SUITES: dict[str, Suite] = {
    # ECDHE with ECDSA certificates
    "ECDHE-ECDSA-AES128-GCM-SHA256": _GCM128,
    "ECDHE-ECDSA-AES256-GCM-SHA384": _GCM256,
    "ECDHE-ECDSA-CHACHA20-POLY1305": _CHACHA,
    "ECDHE-ECDSA-AES128-CCM": _CCM128,
    "ECDHE-ECDSA-AES256-CCM": _CCM256,
    "ECDHE-ECDSA-AES128-CCM8": _CCM8_128,
    "ECDHE-ECDSA-AES256-CCM8": _CCM8_256,
    # pre-shared keys (RFC 4279, RFC 5487, RFC 6655, RFC 7905)
    "PSK-AES128-GCM-SHA256": _GCM128,
    "PSK-AES256-GCM-SHA384": _GCM256,
    "PSK-CHACHA20-POLY1305": _CHACHA,
    "ECDHE-PSK-CHACHA20-POLY1305": _CHACHA,
    "PSK-AES128-CCM": _CCM128,
    "PSK-AES256-CCM": _CCM256,
    "PSK-AES128-CCM8": _CCM8_128,
    "PSK-AES256-CCM8": _CCM8_256,
}


def suite_for(cipher_name: str | None) -> Suite | None:
    """The :class:`Suite` for an OpenSSL cipher name, or None when it is not implemented here."""
    if not cipher_name:
        return None
    return SUITES.get(cipher_name)


def _hash(name: str) -> hashes.HashAlgorithm:
    return hashes.SHA384() if name == "sha384" else hashes.SHA256()


def prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.2 PRF (RFC 5246 §5): ``P_hash(secret, label + seed)`` cut to ``length``."""
    from cryptography.hazmat.primitives.hmac import HMAC

    algorithm = _hash(hash_name)

    def mac(data: bytes) -> bytes:
        h = HMAC(secret, algorithm)
        h.update(data)
        return h.finalize()

    full_seed = label + seed
    out = bytearray()
    a = full_seed
    while len(out) < length:
        a = mac(a)  # A(i) = HMAC(secret, A(i-1))
        out += mac(a + full_seed)
    return bytes(out[:length])


def export_keying_material(
    hash_name: str,
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    label: bytes,
    length: int,
    context: bytes | None,
) -> bytes:
    """RFC 5705 §4 for TLS 1.2: what ``SSL_export_keying_material`` returns."""
    seed = client_random + server_random
    if context is not None:
        seed += len(context).to_bytes(2, "big") + context
    return prf(hash_name, master_secret, label, seed, length)


def derive_keys(
    suite: Suite, master_secret: bytes, client_random: bytes, server_random: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    """``(client_write_key, server_write_key, client_write_IV, server_write_IV)``
    (RFC 5246 §6.3; AEAD suites have no MAC keys)."""
    k, i = suite.key_length, suite.fixed_iv_length
    block = prf(
        suite.prf_hash, master_secret, b"key expansion", server_random + client_random, 2 * (k + i)
    )
    return block[:k], block[k : 2 * k], block[2 * k : 2 * k + i], block[2 * k + i :]


def _aead(suite: Suite, key: bytes) -> AESGCM | AESCCM | ChaCha20Poly1305:
    if suite.aead == "gcm":
        return AESGCM(key)
    if suite.aead == "ccm":
        return AESCCM(key, tag_length=suite.tag_length)
    return ChaCha20Poly1305(key)


# Sequence numbers travel as 16 + 32 bits so that the arithmetic stays on small integers.
# type(1) version(2) epoch(2) sequence(2 + 4) length(2): the record header (RFC 6347 §4.1).
_HEADER = struct.Struct(">BHHHIH")
# ... followed by the explicit nonce (GCM, CCM).
_HEADER_EXPLICIT = struct.Struct(">BHHHIHQ")
# epoch(2) sequence(2 + 4) type(1) version(2) length(2): the additional data (RFC 5246 §6.2.3.3).
_AAD = struct.Struct(">HHIBHH")
# salt(4) explicit(8): the GCM / CCM nonce (RFC 5288 §3, RFC 6655 §3).
_NONCE = struct.Struct(">4sQ")
_VERSION = 0xFEFD
_LOW = 0xFFFFFFFF
_WINDOW_MASK = (1 << WINDOW) - 1
_U64 = (1 << 64) - 1


class RecordProtection:
    """The record keys and counters of one established DTLS 1.2 session (epoch 1).

    ``server``: which side we are (it picks the write and read halves of the key block).
    ``write_sequence`` / ``write_explicit``: the sequence number and (GCM/CCM) explicit nonce
    of the next record we write. ``read_high``: the highest sequence number already
    authenticated from the peer (-1: none), everything up to it counting as seen.

    The AEAD objects are built from the keys on first use and dropped again by :meth:`rest`
    (an AES-GCM object holds ~2.5 KiB of precomputed tables; the keys are 16-32 bytes).
    """

    __slots__ = (
        "_explicit",
        "_fixed_read",
        "_fixed_read_int",
        "_fixed_write",
        "_fixed_write_int",
        "_min_length",
        "_overhead",
        "_read",
        "_read_key",
        "_suite",
        "_write",
        "_write_key",
        "epoch",
        "read_high",
        "read_window",
        "write_explicit",
        "write_sequence",
    )

    def __init__(
        self,
        suite: Suite,
        master_secret: bytes,
        client_random: bytes,
        server_random: bytes,
        *,
        server: bool,
        epoch: int = 1,
        write_sequence: int = 0,
        write_explicit: int | None = None,
        read_high: int = -1,
    ) -> None:
        client_key, server_key, client_iv, server_iv = derive_keys(
            suite, master_secret, client_random, server_random
        )
        self._suite = suite
        self._write_key, self._read_key = (
            (server_key, client_key) if server else (client_key, server_key)
        )
        self._fixed_write, self._fixed_read = (
            (server_iv, client_iv) if server else (client_iv, server_iv)
        )
        self._fixed_write_int = int.from_bytes(self._fixed_write, "big")
        self._fixed_read_int = int.from_bytes(self._fixed_read, "big")
        self._write: AESGCM | AESCCM | ChaCha20Poly1305 | None = None
        self._read: AESGCM | AESCCM | ChaCha20Poly1305 | None = None
        self._explicit = suite.explicit_nonce_length
        # Shortest valid record body: explicit nonce + tag (+ 0 .. 2**14 plaintext bytes).
        self._min_length = self._explicit + suite.tag_length
        self._overhead = HEADER_LENGTH + self._min_length
        if not 0 <= epoch <= 0xFFFF:
            raise ValueError("epoch out of range")
        self.epoch = epoch
        if not 0 <= write_sequence <= _MAX_SEQUENCE:
            raise ValueError("write_sequence out of range")
        self.write_sequence = write_sequence
        """Sequence number of the next record we write (-1 once the last one was used)."""
        self.write_explicit = (
            (epoch << 48 | write_sequence) if write_explicit is None else write_explicit & _U64
        )
        # The right edge of the replay window (-1: nothing yet); bit i of read_window set:
        # sequence number read_high - i was seen. Everything up to read_high counts as seen at
        # the start (what OpenSSL accepted may not be accepted again, and what it never
        # received is too old to tell from a replay).
        self.read_high = read_high if read_high >= 0 else -1
        self.read_window = _WINDOW_MASK if read_high >= 0 else 0

    @property
    def awake(self) -> bool:
        """Whether AEAD objects are built (see :meth:`rest`)."""
        return self._write is not None or self._read is not None

    def rest(self) -> None:
        """Drop the AEAD objects (rebuilt from the keys at the next record): for idle
        sessions, which then hold only keys, IVs and counters."""
        self._write = None
        self._read = None

    # -- writing --------------------------------------------------------------------------------

    def seal_at(self, content_type: int, plaintext: bytes, sequence: int, explicit: int) -> bytes:
        """The record for ``plaintext`` at ``sequence`` with explicit nonce ``explicit`` (GCM,
        CCM): no counter changes. For the hibernation self-check; :meth:`seal` for sending."""
        saved = self.write_sequence, self.write_explicit
        self.write_sequence, self.write_explicit = sequence, explicit & _U64
        try:
            record = self.seal(content_type, plaintext)
        finally:
            self.write_sequence, self.write_explicit = saved
        assert record is not None
        return record

    def seal(self, content_type: int, plaintext: bytes) -> bytes | None:
        """One record carrying ``plaintext`` (at most 2**14 bytes, checked by the caller), or
        None when the sequence numbers are exhausted."""
        sequence = self.write_sequence
        if sequence < 0:
            return None  # the last sequence number was used
        aead = self._write
        if aead is None:
            aead = self._write = _aead(self._suite, self._write_key)
        size = len(plaintext)
        high, low = sequence >> 32, sequence & _LOW
        aad = _AAD.pack(self.epoch, high, low, content_type, _VERSION, size)
        self.write_sequence = sequence + 1 if sequence != _MAX_SEQUENCE else -1
        if self._explicit:
            explicit = self.write_explicit
            self.write_explicit = (explicit + 1) & _U64
            return _HEADER_EXPLICIT.pack(
                content_type, _VERSION, self.epoch, high, low, size + self._min_length, explicit
            ) + aead.encrypt(_NONCE.pack(self._fixed_write, explicit), plaintext, aad)
        nonce = (self._fixed_write_int ^ (self.epoch << 48 | sequence)).to_bytes(12, "big")
        return _HEADER.pack(
            content_type, _VERSION, self.epoch, high, low, size + self._min_length
        ) + aead.encrypt(nonce, plaintext, aad)

    # -- reading --------------------------------------------------------------------------------

    def open(self, record: bytes) -> tuple[int, bytes] | str:
        """Authenticate and decrypt one record from the peer. Returns ``(content_type,
        plaintext)``, or the drop reason: ``"malformed_record"`` (framing, version, length),
        ``"wrong_epoch"``, ``"bad_record"`` (replayed, too old, or failed authentication).
        Never raises."""
        size = len(record)
        if size < HEADER_LENGTH or size != HEADER_LENGTH + ((record[11] << 8) | record[12]):
            return DROP_MALFORMED
        content_type = record[0]
        if content_type not in _VALID_TYPES:
            return DROP_MALFORMED
        result = self.open_as(record, content_type)
        return result if type(result) is str else (content_type, result)  # type: ignore[return-value]

    def open_as(self, record: bytes, content_type: int) -> bytes | str:
        """:meth:`open` for a record whose framing the caller checked (13 header bytes, the
        length field matching the rest) and whose first byte it read as ``content_type``: the
        plaintext, or the drop reason."""
        try:
            _, version, epoch, high, low, length = _HEADER.unpack_from(record)
        except struct.error:  # shorter than a header: the caller did not check after all
            return DROP_MALFORMED
        length -= self._min_length  # the plaintext's length
        if version != _VERSION or not 0 <= length <= _MAX_PLAINTEXT:
            return DROP_MALFORMED
        if epoch != self.epoch:
            return DROP_WRONG_EPOCH
        sequence = low if not high else high << 32 | low
        edge = self.read_high
        if sequence <= edge:
            offset = edge - sequence
            if offset >= WINDOW or (self.read_window >> offset) & 1:
                return DROP_BAD_RECORD
        aead = self._read
        rested = aead is None
        if aead is None:
            aead = self._read = _aead(self._suite, self._read_key)
        aad = _AAD.pack(epoch, high, low, content_type, _VERSION, length)
        try:
            if self._explicit:
                plaintext = aead.decrypt(self._fixed_read + record[13:21], record[21:], aad)
            else:
                nonce = (self._fixed_read_int ^ (epoch << 48 | sequence)).to_bytes(12, "big")
                plaintext = aead.decrypt(nonce, record[13:], aad)
        except (InvalidTag, ValueError):  # ValueError: a nonce cut short by a bad framing
            if rested:
                self._read = None  # a forged record does not undo rest()
            return DROP_BAD_RECORD
        # Authenticated: slide or mark the window (RFC 6347 §4.1.2.6).
        if sequence > edge:
            shift = sequence - edge
            self.read_window = (
                (self.read_window << shift | 1) & _WINDOW_MASK if shift < WINDOW else 1
            )
            self.read_high = sequence
        else:
            self.read_window |= 1 << (edge - sequence)
        return plaintext
