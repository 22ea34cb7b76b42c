"""Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1).

A cookie proves that a client can receive datagrams at the address it claims, without the server
keeping anything per client. It is ``HMAC-SHA256(key_t, address || ClientHello fields)`` where
``key_t`` is derived from a secret and the current time tick ``t = floor(now / tick_seconds)``.

``ClientHello fields`` may be empty, and the server passes nothing (see
:mod:`dtlskit.core.server`): a cookie then proves exactly what it must — that the sender
receives datagrams at the address — and it can be checked from the first fragment of a
fragmented ClientHello, statelessly. Binding ClientHello fields such as the random would let a
spoofer who sends ClientHellos from a victim's exact address and port poison the victim's own
handshake (the answers to the spoofed ClientHellos reach the victim); replays are refused by
the server's record of client randoms instead.

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
        self._key_cache: dict[int, bytes] = {}

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

    def _key(self, tick: int) -> bytes:
        key = self._key_cache.get(tick)
        if key is None:
            if len(self._key_cache) > 4:
                self._key_cache.clear()
            key = hmac.new(
                # Signed: the previous tick of a clock under one tick old (monotonic time
                # counts from boot) is -1.
                self._secret,
                b"dtlskit cookie key " + tick.to_bytes(8, "big", signed=True),
                hashlib.sha256,
            ).digest()
            self._key_cache[tick] = key
        return key

    def _tick(self, now: float) -> int:
        return int(now // self._tick_seconds)

    def _compute(self, tick: int, address: tuple[object, ...], bound_fields: bytes) -> bytes:
        mac = hmac.new(self._key(tick), _address_bytes(address), hashlib.sha256)
        mac.update(bound_fields)
        return mac.digest()[:COOKIE_LENGTH]

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
