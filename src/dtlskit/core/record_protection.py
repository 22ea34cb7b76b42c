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

# OpenSSL's names of the DTLS 1.2 AEAD suites implemented here and tested against OpenSSL and
# GnuTLS (tests/core/test_record_protection.py, tests/core/test_hibernation_interop.py).
SUITES: dict[str, Suite] = {
    # ECDHE with certificates
    "ECDHE-ECDSA-AES128-GCM-SHA256": _GCM128,
    "ECDHE-ECDSA-AES256-GCM-SHA384": _GCM256,
    "ECDHE-RSA-AES128-GCM-SHA256": _GCM128,
    "ECDHE-RSA-AES256-GCM-SHA384": _GCM256,
    "ECDHE-ECDSA-CHACHA20-POLY1305": _CHACHA,
    "ECDHE-RSA-CHACHA20-POLY1305": _CHACHA,
    "DHE-RSA-AES128-GCM-SHA256": _GCM128,
    "DHE-RSA-AES256-GCM-SHA384": _GCM256,
    "DHE-RSA-CHACHA20-POLY1305": _CHACHA,
    "ECDHE-ECDSA-AES128-CCM": _CCM128,
    "ECDHE-ECDSA-AES256-CCM": _CCM256,
    "ECDHE-ECDSA-AES128-CCM8": _CCM8_128,
    "ECDHE-ECDSA-AES256-CCM8": _CCM8_256,
    # pre-shared keys (RFC 4279, RFC 5487, RFC 6655, RFC 7905)
    "PSK-AES128-GCM-SHA256": _GCM128,
    "PSK-AES256-GCM-SHA384": _GCM256,
    "PSK-CHACHA20-POLY1305": _CHACHA,
    "ECDHE-PSK-CHACHA20-POLY1305": _CHACHA,
    "DHE-PSK-AES128-GCM-SHA256": _GCM128,
    "DHE-PSK-AES256-GCM-SHA384": _GCM256,
    "DHE-PSK-CHACHA20-POLY1305": _CHACHA,
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


class RecordProtection:
    """The record keys and counters of one established DTLS 1.2 session (epoch 1).

    ``server``: which side we are (it picks the write and read halves of the key block).
    ``write_sequence`` / ``write_explicit``: the sequence number and (GCM/CCM) explicit nonce
    of the next record we write. ``read_high``: the highest sequence number already
    authenticated from the peer (-1: none), everything up to it counting as seen.
    """

    __slots__ = (
        "_explicit",
        "_fixed_read",
        "_fixed_write",
        "_min_length",
        "_read",
        "_read_epoch",
        "_tag",
        "_write",
        "_write_epoch",
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
        write_key, read_key = (server_key, client_key) if server else (client_key, server_key)
        self._fixed_write, self._fixed_read = (
            (server_iv, client_iv) if server else (client_iv, server_iv)
        )
        self._write = _aead(suite, write_key)
        self._read = _aead(suite, read_key)
        self._explicit = suite.explicit_nonce_length
        self._tag = suite.tag_length
        # Shortest valid record body: explicit nonce + tag (+ at least 0 plaintext bytes).
        self._min_length = self._explicit + self._tag
        self.epoch = epoch
        self._write_epoch = epoch.to_bytes(2, "big")
        self._read_epoch = self._write_epoch
        if not 0 <= write_sequence <= _MAX_SEQUENCE:
            raise ValueError("write_sequence out of range")
        self.write_sequence = write_sequence
        self.write_explicit = (
            (epoch << 48 | write_sequence) if write_explicit is None else write_explicit
        )
        self.read_high = read_high
        # Bit i set: sequence number read_high - i was seen. Everything up to read_high counts
        # as seen at the start (what OpenSSL accepted before us may not be accepted again).
        self.read_window = (1 << WINDOW) - 1 if read_high >= 0 else 0

    # -- writing --------------------------------------------------------------------------------

    def seal_at(self, content_type: int, plaintext: bytes, sequence: int, explicit: int) -> bytes:
        """The record for ``plaintext`` at ``sequence`` with explicit nonce ``explicit`` (GCM,
        CCM): no state changes. For the hibernation self-check; :meth:`seal` for sending."""
        seq = self._write_epoch + sequence.to_bytes(6, "big")
        size = len(plaintext)
        head = bytes((content_type, 0xFE, 0xFD))
        aad = seq + head + size.to_bytes(2, "big")
        if self._explicit:
            nonce_tail = (explicit & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
            body = nonce_tail + self._write.encrypt(self._fixed_write + nonce_tail, plaintext, aad)
        else:
            mask = int.from_bytes(seq, "big")
            nonce = (int.from_bytes(self._fixed_write, "big") ^ mask).to_bytes(12, "big")
            body = self._write.encrypt(nonce, plaintext, aad)
        return head + seq + len(body).to_bytes(2, "big") + body

    def seal(self, content_type: int, plaintext: bytes) -> bytes | None:
        """One record carrying ``plaintext`` (at most 2**14 bytes, checked by the caller), or
        None when the sequence numbers are exhausted."""
        sequence = self.write_sequence
        if sequence > _MAX_SEQUENCE:
            return None
        record = self.seal_at(content_type, plaintext, sequence, self.write_explicit)
        self.write_sequence = sequence + 1
        self.write_explicit += 1
        return record

    # -- reading --------------------------------------------------------------------------------

    def open(self, record: bytes) -> tuple[int, bytes] | str:
        """Authenticate and decrypt one whole record from the peer (its framing length field
        must match ``len(record)``). Returns ``(content_type, plaintext)``, or the drop reason:
        ``"malformed_record"`` (framing, version, length), ``"wrong_epoch"``, ``"bad_record"``
        (replayed, too old, or failed authentication). Never raises."""
        size = len(record)
        if size < HEADER_LENGTH or record[1:3] != DTLS_1_2:
            return DROP_MALFORMED
        content_type = record[0]
        length = (record[11] << 8) | record[12]
        if (
            content_type not in _VALID_TYPES
            or length != size - HEADER_LENGTH
            or length < self._min_length
            or length > _MAX_PLAINTEXT + self._min_length
        ):
            return DROP_MALFORMED
        if record[3:5] != self._read_epoch:
            return DROP_WRONG_EPOCH
        sequence = int.from_bytes(record[5:11], "big")
        high = self.read_high
        if sequence <= high:
            offset = high - sequence
            if offset >= WINDOW or (self.read_window >> offset) & 1:
                return DROP_BAD_RECORD
        plain_length = length - self._min_length
        aad = record[3:11] + record[0:3] + plain_length.to_bytes(2, "big")
        try:
            if self._explicit:
                explicit = record[HEADER_LENGTH : HEADER_LENGTH + self._explicit]
                plaintext = self._read.decrypt(
                    self._fixed_read + explicit, record[HEADER_LENGTH + self._explicit :], aad
                )
            else:
                nonce = (
                    int.from_bytes(self._fixed_read, "big") ^ int.from_bytes(record[3:11], "big")
                ).to_bytes(12, "big")
                plaintext = self._read.decrypt(nonce, record[HEADER_LENGTH:], aad)
        except InvalidTag:
            return DROP_BAD_RECORD
        # Authenticated: slide or mark the window (RFC 6347 §4.1.2.6).
        if sequence > high:
            shift = sequence - high
            window = self.read_window << shift if shift < WINDOW else 0
            self.read_window = (window | 1) & ((1 << WINDOW) - 1)
            self.read_high = sequence
        else:
            self.read_window |= 1 << (high - sequence)
        return content_type, plaintext
