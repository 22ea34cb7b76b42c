"""The demultiplexer behind one listening UDP socket, sans I/O.

Theory of operation
-------------------
Every datagram arrives with its source address. If an association exists for that address and
the datagram is not a ClientHello, it goes to that association's engine. Otherwise the first
record is parsed (untrusted) as a ClientHello:

1. A first ClientHello (message_seq 0) without a valid cookie: answer statelessly with a
   HelloVerifyRequest (RFC 6347 §4.2.1). Nothing is stored. A later ClientHello whose cookie
   does not verify is dropped and counted (``bad_cookie``). The answer is sent only if it is no
   larger than the ClientHello (bytes sent toward an unvalidated address never exceed bytes
   received from it), and at most ``Limits.hello_verify_per_second`` times a second per source IP.
2. A valid cookie: the client proved it receives at its address. Only now, and only within the
   limits on sessions, sessions per IP and half-open handshakes, is an association allocated. If
   one already existed for the address, it is replaced (§4.2.8: the client restarted), unless the
   new ClientHello is an exact repeat of the one that created it (a retransmission), which is
   ignored.

Datagrams that are neither are dropped and counted by reason; nothing a peer sends can raise out
of :meth:`ServerEngine.receive_datagram`.

Events come out of :meth:`ServerEngine.next_event` as ``(address, engine, event)``. An association
whose session ended (closed or terminated) is forgotten when its terminal event is returned.
Timers of all associations are kept in one heap, so the server's deadline is cheap to ask for.
"""

from __future__ import annotations

import array
import collections
import hashlib
import heapq
import itertools
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL

from ..config import DTLSConfiguration
from ..exceptions import ConnectionLost
from . import events as ev
from .connection import Address, DTLSConnection, format_address
from .cookies import CookieJar
from .inbox import ByteBudget
from .records import (
    CONTENT_HANDSHAKE,
    HEADER_LENGTH,
    BadPacket,
    build_hello_verify_request,
    parse_client_hello_untrusted,
)

__all__ = ["ServerEngine", "ServerEvent", "ServerStatistics", "cookie_jar_for"]

ServerEvent = tuple[Address, DTLSConnection, ev.Event]

# Per-source HelloVerifyRequest rate limiting in constant memory (RELIABILITY rule 5, scenario 8).
# A token bucket per source IP in an LRU dict of up to 65,536 entries cost ~300 bytes an entry:
# 100,000 ClientHellos from distinct 127/8 sources grew a server's RSS by 20 MiB (by 0.5 MiB from
# 2,000 sources), and fresh sources could evict, so refill, a victim's bucket. Instead: a fixed
# table of _RATE_SLOTS "theoretical arrival times" (GCRA, the token bucket's one-number form), 8
# bytes a slot, 128 KiB allocated once; a source's slot is chosen by a hash salted per engine, so
# a remote sender cannot aim at another source's slot. Sources sharing a slot share its budget:
# one IP never gets more than the limit, and only rarely (1 / _RATE_SLOTS a pair) less.
_RATE_SLOTS = 16_384


@dataclass
class ServerStatistics:
    """Counters of one listening socket's demultiplexer."""

    sessions: int = 0
    """Associations held now (handshaking and established)."""
    half_open: int = 0
    """Associations still in their handshake now."""
    datagrams_received: int = 0
    bytes_received: int = 0
    hello_verify_requests_sent: int = 0
    bytes_sent_unvalidated: int = 0
    """Bytes sent to addresses that had not proven themselves (HelloVerifyRequests)."""
    bytes_received_unvalidated: int = 0
    """Bytes received in ClientHellos that carried no valid cookie."""
    associations_created: int = 0
    handshakes_completed: int = 0
    handshakes_failed: int = 0
    sessions_replaced: int = 0
    receive_buffer_bytes: int = 0
    """The socket receive buffer the kernel granted (``SO_RCVBUF``; see
    ``recv_buffer_size``), filled in by the front end."""
    kernel_drops: int = 0
    """Datagrams the kernel dropped because the socket's receive buffer was full (UDP has no
    flow control), read from ``/proc/net/udp*`` when statistics are taken (Linux)."""
    drops: dict[str, int] = field(default_factory=dict)
    """Datagrams dropped or ClientHellos refused, by reason."""

    def copy(self) -> ServerStatistics:
        """An independent snapshot."""
        return ServerStatistics(**{**self.__dict__, "drops": dict(self.drops)})


class ServerEngine:
    """Demultiplexes one socket's datagrams into DTLS associations.

    The contract: after :meth:`receive_datagram`, :meth:`handle_timer`, or any call on an
    association's engine (``send``, ``close``), call :meth:`datagrams_to_send` and transmit
    each ``(datagram, address)``, drain :meth:`next_event`, and re-arm a timer for
    :meth:`get_timer`.
    """

    def __init__(
        self,
        config: DTLSConfiguration,
        *,
        context: SSL.Context | None = None,
        cookie_jar: CookieJar | None = None,
    ) -> None:
        self._config = config
        self._limits = config.limits
        self._context = context if context is not None else config.build_context(server=True)
        self.cookies = cookie_jar if cookie_jar is not None else cookie_jar_for(config)
        self._connections: dict[Address, DTLSConnection] = {}
        self._per_ip: collections.Counter[Any] = collections.Counter()
        self._handshaking: set[int] = set()
        self._dirty: dict[int, tuple[Address, DTLSConnection]] = {}
        self._outgoing: list[tuple[bytes, Address]] = []
        self._events: collections.deque[ServerEvent] = collections.deque()
        self._timers: list[tuple[float, int, Address, DTLSConnection]] = []
        self._armed: dict[int, float] = {}
        self._counter = itertools.count()
        self._rate_salt = secrets.randbits(64)
        self._rate_due = array.array("d", [-math.inf]) * _RATE_SLOTS  # see _RATE_SLOTS
        self._stats = ServerStatistics()
        self.budget = ByteBudget(config.limits.max_buffered_bytes)
        """Bytes the inboxes of every session of this socket may hold together."""
        self._idle_timeout = (
            config.idle_timeout if config.idle_timeout is not None else config.limits.idle_timeout
        )
        self._session_config = (
            config
            if self._idle_timeout == config.idle_timeout
            else config.replace(idle_timeout=self._idle_timeout)
        )

    # -- public verbs ---------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        """Feed one datagram received from ``address``. Never raises for any ``data``."""
        stats = self._stats
        stats.datagrams_received += 1
        stats.bytes_received += len(data)
        conn = self._connections.get(address)
        if (
            conn is not None
            and data[:1] == b"\x17"
            and len(data) == 13 + int.from_bytes(data[11:13], "big")
            and conn.receive_record(data, now)
        ):
            # The fast path: one application-data record of an established session. Nothing
            # to flush: the session tells its listener if it produced output or ended.
            return
        if conn is not None and not _may_be_client_hello(data):
            conn.receive_datagram(data, now)
            self._touched(address, conn)
            return
        self._receive_client_hello(data, address, conn, now)

    def _receive_client_hello(
        self, data: bytes, address: Address, conn: DTLSConnection | None, now: float
    ) -> None:
        """A datagram that may start a handshake: from a new address, or a ClientHello from an
        address that has an association (cookies, limits and replacement live here)."""
        try:
            hello = parse_client_hello_untrusted(data)
        except BadPacket:
            if conn is not None:
                conn.receive_datagram(data, now)  # let OpenSSL judge it; it drops junk
                self._touched(address, conn)
            else:
                self._drop("not_client_hello" if data[:1] != b"\x16" else "malformed_client_hello")
            return
        if conn is not None and conn.client_hello_body == _digest(hello.body):
            # A retransmission of the ClientHello that created the association: the engine
            # takes it as a sign that its answer was lost (OpenSSL itself ignores it).
            self._drop("duplicate_client_hello")
            conn.receive_datagram(data, now)
            self._touched(address, conn)
            return
        if not hello.cookie or not self.cookies.verify(
            hello.cookie, address, hello.bound_fields, now
        ):
            if hello.message_sequence == 0:
                self._send_hello_verify(hello, data, address, now)
            else:
                self._stats.bytes_received_unvalidated += len(data)
                # Forged, tampered or stale. A new HelloVerifyRequest would lead nowhere: the
                # client would answer with message_seq 2, which OpenSSL's DTLSv1_listen refuses.
                # Cookies outlive the handshake deadline, so an honest client never gets here.
                self._drop("bad_cookie")
            return
        if hello.message_sequence > 1:
            self._drop("client_hello_sequence_too_high")
            return
        self._accept(hello.body, data, address, now, replacing=conn)

    def datagrams_to_send(self, now: float | None = None) -> list[tuple[bytes, Address]]:
        """``(datagram, address)`` pairs to transmit, in order."""
        self._flush()
        out, self._outgoing = self._outgoing, []
        return out

    def has_work(self) -> bool:
        """Whether :meth:`datagrams_to_send`, :meth:`next_event` or the timer have anything
        new (False after datagrams that only took the fast path: skip the other steps)."""
        return bool(self._dirty or self._outgoing or self._events)

    def next_event(self) -> ServerEvent | None:
        """The oldest ``(address, engine, event)`` not yet returned, or None."""
        self._flush()
        if not self._events:
            return None
        address, conn, event = self._events.popleft()
        if isinstance(event, ev.ConnectionClosed | ev.ConnectionTerminated):
            self._forget(address, conn)
        return address, conn, event

    def get_timer(self) -> float | None:
        """The earliest deadline of any association, or None."""
        self._flush()
        while self._timers:
            deadline, _, address, conn = self._timers[0]
            if self._armed.get(id(conn)) == deadline and self._connections.get(address) is conn:
                return deadline
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        """Run every association's timer that has expired."""
        self._flush()
        while self._timers and self._timers[0][0] <= now:
            deadline, _, address, conn = heapq.heappop(self._timers)
            if self._armed.get(id(conn)) != deadline or self._connections.get(address) is not conn:
                continue
            del self._armed[id(conn)]
            conn.handle_timer(now)
            self._touched(address, conn)

    @property
    def config(self) -> DTLSConfiguration:
        """The configuration this engine was built from."""
        return self._config

    def connection(self, address: Address) -> DTLSConnection | None:
        """The association for ``address``, if any."""
        return self._connections.get(address)

    @property
    def connections(self) -> dict[Address, DTLSConnection]:
        """A copy of the address → association map."""
        return dict(self._connections)

    def close_all(self) -> None:
        """Send close_notify to every established peer and end every association."""
        for address, conn in list(self._connections.items()):
            conn.close()
            self._touched(address, conn)

    def statistics(self) -> ServerStatistics:
        """A snapshot of the demultiplexer's counters."""
        self._stats.sessions = len(self._connections)
        self._stats.half_open = len(self._handshaking)
        return self._stats.copy()

    # -- internals ------------------------------------------------------------------------------

    def _send_hello_verify(self, hello: Any, data: bytes, address: Address, now: float) -> None:
        self._stats.bytes_received_unvalidated += len(data)
        if not self._take_token(address[0], now):
            self._drop("hello_verify_rate_limited")
            return
        cookie = self.cookies.issue(address, hello.bound_fields, now)
        reply = build_hello_verify_request(hello, cookie)
        if len(reply) > len(data):  # pragma: no cover - see below
            # Never amplify toward an address that has not proven it is real. With 32-byte
            # cookies a reply (60 bytes) is smaller than any well-formed ClientHello (67), so
            # this only guards against a future, longer cookie.
            self._drop("client_hello_too_small")
            return
        self._outgoing.append((reply, address))
        self._stats.hello_verify_requests_sent += 1
        self._stats.bytes_sent_unvalidated += len(reply)

    def _take_token(self, ip: Any, now: float) -> bool:
        # GCRA: a slot's "due" time runs ahead of ``now`` by 1/rate per HelloVerifyRequest sent;
        # a burst of 2 x rate is allowed while it runs at most (burst - 1)/rate ahead.
        rate = self._limits.hello_verify_per_second
        interval = 1.0 / rate
        burst = max(1.0, 2 * rate)  # at least one, or a rate below 0.5/s would refuse all
        tolerance = (burst - 1.0) * interval + 1e-6  # epsilon: float sums of ``interval``
        slot = self._rate_slot(ip)
        due = max(self._rate_due[slot], now)
        if due - now > tolerance:
            return False
        self._rate_due[slot] = due + interval
        return True

    def _rate_slot(self, ip: Any) -> int:
        """The rate-limit slot of a source IP (salted per engine: a peer cannot aim at a
        slot; two sources share one with probability 1/16384)."""
        return hash((self._rate_salt, ip)) % _RATE_SLOTS

    def _accept(
        self,
        hello_body: bytes,
        data: bytes,
        address: Address,
        now: float,
        replacing: DTLSConnection | None,
    ) -> None:
        limits = self._limits
        ip = address[0]
        sessions = len(self._connections) - (1 if replacing is not None else 0)
        if sessions >= limits.max_sessions:
            self._drop("max_sessions")
            return
        if replacing is None and self._per_ip[ip] >= limits.max_sessions_per_address:
            self._drop("max_sessions_per_address")
            return
        half_open = len(self._handshaking) - (
            1 if replacing is not None and id(replacing) in self._handshaking else 0
        )
        if half_open >= limits.max_half_open:
            self._drop("max_half_open")
            return
        if replacing is not None:
            replacing.abort(
                ConnectionLost(f"replaced by a new handshake from {format_address(address)}")
            )
            self._stats.sessions_replaced += 1
            self._touched(address, replacing)
            self._flush()
            self._forget(address, replacing)
        conn = DTLSConnection(
            self._session_config, server=True, peer_address=address, context=self._context
        )
        conn.client_hello_body = _digest(hello_body)
        conn.listener = self._on_engine_activity(address)
        conn.budget = self.budget
        conn.server_drops = self._stats.drops
        self._connections[address] = conn
        self._per_ip[ip] += 1
        self._handshaking.add(id(conn))
        self._stats.associations_created += 1
        conn.start_server(data, now)
        self._touched(address, conn)

    def _on_engine_activity(self, address: Address) -> Any:
        def listener(conn: DTLSConnection) -> None:
            self._dirty[id(conn)] = (address, conn)

        return listener

    def _touched(self, address: Address, conn: DTLSConnection) -> None:
        self._dirty[id(conn)] = (address, conn)

    def _flush(self) -> None:
        """Move output, events and timers of associations that did something."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        for address, conn in dirty.values():
            for datagram in conn.datagrams_to_send():
                self._outgoing.append((datagram, address))
            while True:
                event = conn.next_event()
                if event is None:
                    break
                self._note(conn, event)
                self._events.append((address, conn, event))
            self._arm(address, conn)
        self._compact_timers()

    def _arm(self, address: Address, conn: DTLSConnection) -> None:
        """Keep one heap entry per association, at or before its deadline.

        An idle deadline moves later with every message; pushing each new one would grow the
        heap by an entry per message (stale entries leave only when they reach the top). So a
        new entry is pushed only when the deadline moves *earlier*; an entry that fires early
        finds nothing due, and the association is re-armed at its real deadline.
        """
        deadline = conn.get_timer()
        if deadline is None or self._connections.get(address) is not conn:
            return
        armed = self._armed.get(id(conn))
        if armed is None or deadline < armed:
            self._armed[id(conn)] = deadline
            heapq.heappush(self._timers, (deadline, next(self._counter), address, conn))

    def _compact_timers(self) -> None:
        """Drop stale heap entries once they outnumber live ones (they hold engines alive)."""
        if len(self._timers) <= 2 * len(self._armed) + 64:
            return
        self._timers = [
            entry
            for entry in self._timers
            if self._armed.get(id(entry[3])) == entry[0]
            and self._connections.get(entry[2]) is entry[3]
        ]
        heapq.heapify(self._timers)

    def _note(self, conn: DTLSConnection, event: ev.Event) -> None:
        if isinstance(event, ev.HandshakeCompleted) and id(conn) in self._handshaking:
            self._handshaking.discard(id(conn))
            self._stats.handshakes_completed += 1

    def _forget(self, address: Address, conn: DTLSConnection) -> None:
        if self._connections.get(address) is not conn:
            return
        del self._connections[address]
        self._armed.pop(id(conn), None)
        ip = address[0]
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]
        if id(conn) in self._handshaking:
            self._handshaking.discard(id(conn))
            self._stats.handshakes_failed += 1
        conn.listener = None
        conn.server_drops = None
        self._compact_timers()

    def _drop(self, reason: str) -> None:
        self._stats.drops[reason] = self._stats.drops.get(reason, 0) + 1


def cookie_jar_for(config: DTLSConfiguration) -> CookieJar:
    """The cookie jar a server with this configuration uses; build one before forking workers
    and pass it to each worker's :class:`ServerEngine` so they accept each other's cookies.

    A cookie lives one to two ticks; a tick as long as the handshake deadline means no honest
    client's cookie goes stale while it is still retrying its ClientHello.
    """
    return CookieJar(config.cookie_secret, tick_seconds=max(30.0, config.handshake_timeout))


def _digest(body: bytes) -> bytes:
    """What an association keeps of the ClientHello that created it, to recognise a repeat
    (32 bytes instead of the whole message)."""
    return hashlib.sha256(body).digest()


def _may_be_client_hello(data: bytes) -> bool:
    """Cheap pre-check: an epoch-0 handshake record whose first message is a ClientHello."""
    return (
        len(data) > HEADER_LENGTH
        and data[0] == CONTENT_HANDSHAKE
        and data[3:5] == b"\x00\x00"
        and data[HEADER_LENGTH] == 1
    )
