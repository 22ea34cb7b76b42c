"""Hand-off of an un-handshaken peer to another process (EdgerOS ``accept`` → ``flyAway`` →
``createByFd``), sans I/O.

Theory of operation
-------------------
A *hand-off listener* does the stateless cookie exchange of RFC 6347 §4.2.1 and nothing else.
:class:`HandoffGate` is its engine: a ClientHello without a valid cookie is answered with a
HelloVerifyRequest (never larger than the datagram that asked for it, as in
:class:`~dtlskit.core.server.ServerEngine`); one whose cookie verifies is *accepted*: the I/O
layer then opens a UDP socket bound to the listener's local address and port and
``connect()``-ed to the peer, and hands that socket plus the cookie-carrying ClientHello to
another process, which starts a server association from the stored ClientHello
(:meth:`~dtlskit.core.connection.DTLSConnection.start_server`). The listener never holds
OpenSSL state for a peer.

Once the new socket is connected the kernel delivers the peer's datagrams to it rather than to
the listener (a connected socket scores higher than an unconnected one, also inside an
``SO_REUSEPORT`` group). Two races remain, and both are the I/O layer's to close with the help
of this engine:

* Between ``bind()`` and ``connect()`` the new socket is an ordinary unconnected socket on the
  listener's port and may be given other peers' datagrams (a specifically bound socket even wins
  over a wildcard listener). After ``connect()`` the I/O layer reads whatever the new socket
  already holds and feeds every datagram not from the peer back here, as if the listener had
  received it (:attr:`HandoffStatistics.returned_to_listener`).
* The peer may have retransmitted its ClientHello before ``connect()``: that copy sits in the
  listener's queue and must not become a second hand-off. The gate remembers each hand-off by
  address and client random; a repeat arriving while the hand-off is *unsealed* is dropped
  (``duplicate_client_hello``). The I/O layer calls :meth:`HandoffGate.seal` whenever a read
  of the listening socket came back empty: every datagram queued before the last ``connect()``
  has then been seen. A repeat after that can only reach the listener if the handed-off socket
  no longer exists (the worker died mid-handshake, or the session ended), so it is accepted
  again, within its cookie's lifetime, and the client's handshake goes on in another worker.

Records of hand-offs are a few dozen bytes each, at most ``max_records`` of them (oldest
forgotten first) and forgotten once their cookie cannot verify any more.

The hand-off message (:func:`encode_handoff` / :func:`decode_handoff_untrusted`) travels next
to the file descriptor over a Unix socket. The receiving process treats it as untrusted: fixed
magic and version, every length checked against the data, the ClientHello parsed again.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from .cookies import CookieJar
from .records import (
    BadPacket,
    ClientHello,
    build_hello_verify_request,
    parse_client_hello_untrusted,
)

__all__ = [
    "HANDOFF_VERSION",
    "MAX_HANDOFF_MESSAGE",
    "Accepted",
    "HandoffGate",
    "HandoffMessage",
    "HandoffStatistics",
    "decode_handoff_untrusted",
    "encode_handoff",
]

Address = tuple[Any, ...]

HANDOFF_VERSION = 1
_MAGIC = b"DTKH"
# magic, version, family, local port, peer port, local scope id, peer scope id, hello length
_HEADER = struct.Struct("!4sBBHHIIH")
MAX_HANDOFF_MESSAGE = _HEADER.size + 2 * 16 + 65535
"""No valid hand-off message is longer (a receiver reads at most this many bytes)."""


@dataclass
class HandoffStatistics:
    """Counters of a hand-off listener."""

    datagrams_received: int = 0
    hello_verify_requests_sent: int = 0
    handed_off: int = 0
    """Peers accepted (cookie verified) and handed to the I/O layer."""
    handed_off_again: int = 0
    """Of those, peers accepted again after their earlier hand-off's socket went away."""
    returned_to_listener: int = 0
    """Datagrams of other peers that landed on a new socket before its ``connect()``."""
    drops: dict[str, int] = field(default_factory=dict)
    """Datagrams dropped, by reason."""

    def copy(self) -> HandoffStatistics:
        return HandoffStatistics(**{**self.__dict__, "drops": dict(self.drops)})


@dataclass(frozen=True)
class Accepted:
    """A peer whose cookie verified: open its socket, then call :meth:`HandoffGate.handed_off`
    (or :meth:`HandoffGate.refused` if the socket could not be opened)."""

    address: Address
    """The peer's address, as the listening socket reported it."""
    client_hello: bytes
    """The cookie-carrying ClientHello datagram, to start the server association with."""
    random: bytes


class HandoffGate:
    """The cookie exchange of a hand-off listener.

    The contract: feed each datagram to :meth:`receive_datagram`; transmit
    :meth:`datagrams_to_send`; for each :class:`Accepted` it returns, open the peer's socket and
    call :meth:`handed_off`; call :meth:`seal` after a read of the listening socket found it
    empty. Never raises for any datagram.
    """

    def __init__(
        self,
        cookies: CookieJar,
        *,
        max_client_hello_size: int = 16 * 1024,
        max_records: int = 4096,
        hello_verify_per_second: float | None = None,
    ) -> None:
        self.cookies = cookies
        self._rate = hello_verify_per_second
        self._rate_due = -math.inf
        self._max_hello = max_client_hello_size
        self._max_records = max_records
        # (address, random) -> [time handed off, sealed]
        self._records: collections.OrderedDict[tuple[Address, bytes], list[Any]] = (
            collections.OrderedDict()
        )
        self._outgoing: list[tuple[bytes, Address]] = []
        self._stats = HandoffStatistics()

    def receive_datagram(self, data: bytes, address: Address, now: float) -> Accepted | None:
        """Feed one datagram received by the listener from ``address``.

        Returns an :class:`Accepted` when it is a ClientHello whose cookie verifies and that is
        not a repeat of a live hand-off; None otherwise (a HelloVerifyRequest may be waiting in
        :meth:`datagrams_to_send`, or the datagram was dropped and counted).
        """
        self._stats.datagrams_received += 1
        try:
            hello = parse_client_hello_untrusted(data)
        except BadPacket:
            self._drop("not_client_hello" if data[:1] != b"\x16" else "malformed_client_hello")
            return None
        if hello.message_length > self._max_hello:
            self._drop("client_hello_too_large")
            return None
        if not hello.cookie or not self.cookies.verify(
            hello.cookie, address, hello.bound_fields, now
        ):
            if hello.message_sequence == 0:
                self._hello_verify(hello, data, address, now)
            else:
                self._drop("bad_cookie")
            return None
        if hello.message_sequence > 1:
            self._drop("client_hello_sequence_too_high")
            return None
        self._expire(now)
        record = self._records.get((address, hello.random))
        again = False
        if record is not None:
            if not record[1]:
                # Queued before the hand-off's connect(): a retransmission, not a new session.
                self._drop("duplicate_client_hello")
                return None
            again = True  # the handed-off socket is gone: let another worker take the peer
            del self._records[(address, hello.random)]
        if again:
            self._stats.handed_off_again += 1
        return Accepted(address, data, hello.random)

    def handed_off(self, accepted: Accepted, now: float) -> None:
        """The peer's connected socket exists now: repeats of its ClientHello queued at the
        listener until the next :meth:`seal` are retransmissions."""
        self._stats.handed_off += 1
        key = (accepted.address, accepted.random)
        self._records[key] = [now, False]
        self._records.move_to_end(key)
        while len(self._records) > self._max_records:
            self._records.popitem(last=False)

    def refused(self, reason: str) -> None:
        """The I/O layer could not take an accepted peer (count it; the client retries)."""
        self._drop(reason)

    def returned(self) -> None:
        """Count a datagram of another peer taken back from a new socket (then feed it)."""
        self._stats.returned_to_listener += 1

    def seal(self) -> None:
        """A read of the listening socket came back empty: nothing queued before the last
        hand-off's ``connect()`` is left to read."""
        for record in reversed(self._records.values()):
            if record[1]:
                break  # older ones were sealed before this one
            record[1] = True

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """``(datagram, address)`` pairs to transmit (HelloVerifyRequests), in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def statistics(self) -> HandoffStatistics:
        """A snapshot of the counters."""
        return self._stats.copy()

    def _take_token(self, now: float) -> bool:
        """``Limits.hello_verify_per_second`` for all sources together, as
        :class:`~dtlskit.core.server.ServerEngine` applies it (GCRA, burst of twice the rate)."""
        rate = self._rate
        if rate is None:
            return True
        interval = 1.0 / rate
        tolerance = (max(1.0, 2 * rate) - 1.0) * interval + 1e-6
        due = max(self._rate_due, now)
        if due - now > tolerance:
            return False
        self._rate_due = due + interval
        return True

    def _hello_verify(self, hello: ClientHello, data: bytes, address: Address, now: float) -> None:
        if not self._take_token(now):
            self._drop("hello_verify_rate_limited")
            return
        reply = build_hello_verify_request(
            hello, self.cookies.issue(address, hello.bound_fields, now)
        )
        if len(reply) > len(data):  # pragma: no cover - 32-byte cookies: never (see server.py)
            self._drop("client_hello_too_small")
            return
        self._outgoing.append((reply, address))
        self._stats.hello_verify_requests_sent += 1

    def _expire(self, now: float) -> None:
        horizon = now - 2 * self.cookies.tick_seconds  # no cookie older than this verifies
        while self._records:
            key, record = next(iter(self._records.items()))
            if record[0] > horizon:
                return
            del self._records[key]

    def _drop(self, reason: str) -> None:
        self._stats.drops[reason] = self._stats.drops.get(reason, 0) + 1


# -- the hand-off message ------------------------------------------------------------------------


@dataclass(frozen=True)
class HandoffMessage:
    """What travels with the socket: the addresses and the cookie-carrying ClientHello."""

    local_address: Address
    peer_address: Address
    client_hello: bytes


def _pack_address(address: Address) -> tuple[int, bytes, int, int]:
    ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    scope = int(address[3]) if len(address) >= 4 else 0
    return ip.version, ip.packed, int(address[1]), scope


def encode_handoff(local_address: Address, peer_address: Address, client_hello: bytes) -> bytes:
    """The hand-off message for a peer (both addresses of one family)."""
    local_version, local_ip, local_port, local_scope = _pack_address(local_address)
    peer_version, peer_ip, peer_port, peer_scope = _pack_address(peer_address)
    if local_version != peer_version:
        raise ValueError("local and peer addresses are of different families")
    if not 0 < len(client_hello) <= 65535:
        raise ValueError("a ClientHello datagram is 1 to 65535 bytes")
    header = _HEADER.pack(
        _MAGIC,
        HANDOFF_VERSION,
        local_version,
        local_port,
        peer_port,
        local_scope,
        peer_scope,
        len(client_hello),
    )
    return header + local_ip + peer_ip + client_hello


def _unpack_address(version: int, packed: bytes, port: int, scope: int) -> Address:
    if version == 4:
        return (str(ipaddress.IPv4Address(packed)), port)
    return (str(ipaddress.IPv6Address(packed)), port, 0, scope)


def decode_handoff_untrusted(data: bytes) -> HandoffMessage:
    """Parse a hand-off message from another process. Raises :class:`BadPacket` (and only it)
    for anything but a well-formed message of this version holding a cookie-carrying
    ClientHello."""
    if len(data) < _HEADER.size:
        raise BadPacket("hand-off message shorter than its header")
    magic, version, family, local_port, peer_port, local_scope, peer_scope, hello_length = (
        _HEADER.unpack_from(data)
    )
    if magic != _MAGIC:
        raise BadPacket("not a dtlskit hand-off message")
    if version != HANDOFF_VERSION:
        raise BadPacket(f"hand-off message version {version}, this dtlskit reads {HANDOFF_VERSION}")
    if family not in (4, 6):
        raise BadPacket(f"hand-off message names address family {family}")
    if local_port == 0 or peer_port == 0:
        raise BadPacket("hand-off message names port 0")
    if family == 4 and (local_scope or peer_scope):
        raise BadPacket("hand-off message gives an IPv4 address a scope")
    size = 4 if family == 4 else 16
    expected = _HEADER.size + 2 * size + hello_length
    if len(data) != expected:
        raise BadPacket(f"hand-off message is {len(data)} bytes, its header says {expected}")
    offset = _HEADER.size
    local = _unpack_address(family, data[offset : offset + size], local_port, local_scope)
    peer = _unpack_address(family, data[offset + size : offset + 2 * size], peer_port, peer_scope)
    hello_bytes = bytes(data[offset + 2 * size :])
    hello = parse_client_hello_untrusted(hello_bytes)
    if not hello.cookie:
        raise BadPacket("the handed-off ClientHello carries no cookie")
    if hello.message_sequence > 1:
        raise BadPacket("the handed-off ClientHello has message_seq above 1")
    return HandoffMessage(local, peer, hello_bytes)
