"""Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1).

A cookie proves that a client can receive datagrams at the address it claims, without the server
keeping anything per client. It is ``BLAKE2s(key=key_t, address || ClientHello fields)`` (BLAKE2's
keyed mode, a MAC: RFC 7693 §2.5) where ``key_t = HMAC-SHA256(secret, t)`` is derived from a
secret and the current time tick ``t = floor(now / tick_seconds)``. Keyed BLAKE2s rather than
HMAC-SHA256 for the per-cookie MAC because a handshake computes three of them and here an HMAC
through OpenSSL 3 costs several microseconds per call (a fresh digest context each time),
while a copy of a keyed BLAKE2s state made once per tick costs about 1.5.

``ClientHello fields`` are what precedes the cookie in the ClientHello (version, random,
session id), so a cookie can be checked from the first fragment of a fragmented ClientHello,
statelessly, and a cookie taken from one ClientHello does not validate another random (see
:mod:`dtlskit.core.server` for the trade-off).

The comparison is constant-time (``hmac.compare_digest``) and the cookie length is fixed at 32
bytes, well under the 255-byte cap of DTLS 1.2, so a peer cannot make us hash or store more.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ..exceptions import ConfigurationError

__all__ = ["COOKIE_LENGTH", "CookieJar"]

COOKIE_LENGTH = 32


def _address_bytes(address: tuple[object, ...]) -> bytes:
    host, port = address[0], address[1]
    return f"{host}|{port}".encode()


class CookieJar:
    """Issues and checks cookies bound to a peer address, a time tick and a ClientHello."""

    def __init__(self, secret: bytes | None = None, tick_seconds: float = 30.0) -> None:
        if secret is not None and len(secret) < 16:
            raise ConfigurationError("cookie secret must be at least 16 bytes")
        if tick_seconds <= 0:
            raise ConfigurationError("cookie tick must be positive")
        self._secret = secret if secret is not None else os.urandom(32)
        self._tick_seconds = tick_seconds
        self._key_cache: dict[int, hashlib.blake2s] = {}  # tick -> keyed BLAKE2s state

    @property
    def tick_seconds(self) -> float:
        """Length of a tick: a cookie is accepted for one to two of them."""
        return self._tick_seconds

    def rotate(self, secret: bytes | None = None) -> None:
        """Replace the master secret; every cookie issued so far stops being valid."""
        if secret is not None and len(secret) < 16:
            raise ConfigurationError("cookie secret must be at least 16 bytes")
        self._secret = secret if secret is not None else os.urandom(32)
        self._key_cache.clear()

    def _key(self, tick: int) -> hashlib.blake2s:
        """The keyed BLAKE2s state of a tick (nothing hashed yet): copy it, then update."""
        key = self._key_cache.get(tick)
        if key is None:
            if len(self._key_cache) > 4:
                self._key_cache.clear()
            tick_key = hmac.new(
                # Signed: the previous tick of a clock under one tick old (monotonic time
                # counts from boot) is -1.
                self._secret,
                b"dtlskit cookie key " + tick.to_bytes(8, "big", signed=True),
                hashlib.sha256,
            ).digest()
            key = hashlib.blake2s(key=tick_key, digest_size=COOKIE_LENGTH)
            self._key_cache[tick] = key
        return key

    def _tick(self, now: float) -> int:
        return int(now // self._tick_seconds)

    def _compute(self, tick: int, address: tuple[object, ...], bound_fields: bytes) -> bytes:
        mac = self._key(tick).copy()
        mac.update(_address_bytes(address))
        mac.update(bound_fields)
        return mac.digest()

    def issue(self, address: tuple[object, ...], bound_fields: bytes, now: float) -> bytes:
        """A cookie for ``address`` and these ClientHello fields, valid for 1 to 2 ticks."""
        return self._compute(self._tick(now), address, bound_fields)

    def verify(
        self, cookie: bytes, address: tuple[object, ...], bound_fields: bytes, now: float
    ) -> bool:
        """Whether ``cookie`` was issued to ``address`` for these fields, this tick or the last."""
        if len(cookie) != COOKIE_LENGTH:
            return False
        tick = self._tick(now)
        # Both comparisons always run, so timing does not tell which tick matched.
        current = hmac.compare_digest(cookie, self._compute(tick, address, bound_fields))
        previous = hmac.compare_digest(cookie, self._compute(tick - 1, address, bound_fields))
        return current or previous
