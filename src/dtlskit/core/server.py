"""The demultiplexer behind one listening UDP socket, sans I/O.

Theory of operation
-------------------
Every datagram arrives with its source address. If an association exists for that address and
the datagram is not a ClientHello, it goes to that association's engine. Otherwise the first
record is parsed (untrusted) as a ClientHello, whole or its first fragment:

1. A first ClientHello (message_seq 0) without a valid cookie: answer statelessly with a
   HelloVerifyRequest (RFC 6347 §4.2.1). Nothing is stored. A later ClientHello whose cookie
   does not verify is dropped and counted (``bad_cookie``). The answer is sent only if it is no
   larger than the datagram that asked for it.
2. A valid cookie: the client proved it receives at its address. Only now, and only within the
   limits (sessions, sessions per IP, half-open handshakes in total and per source), is an
   association allocated. If one already existed for the address, it is replaced (§4.2.8: the
   client restarted) — but only by a genuinely new ClientHello (see *Replays* below).

*Fragmented ClientHellos* (a small-MTU client; a resumption ClientHello carrying a large
ticket). The cookie and every field it is bound to (version, random, session id) are in the
first fragment, so steps 1 and 2 run on that fragment alone and nothing is kept for a peer
before its cookie verifies; later fragments from an address with no association are dropped
(``unvalidated_client_hello_fragment``). Once the cookie verifies, the association is created
from the first fragment (OpenSSL's ``DTLSv1_listen`` accepts a first fragment that holds the
cookie) and the later fragments go to it, one per ``bio_write``; OpenSSL reassembles. What a
validated peer can make us hold is bounded by ``Limits.max_client_hello_size`` (checked on the
first fragment's message length; ``client_hello_too_large``) and by the half-open limits.

*Amplification and the HelloVerifyRequest rate* (RELIABILITY rules 5 and 16). Bytes sent toward
an address that has not proven itself never exceed the bytes received from it, datagram by
datagram: a HelloVerifyRequest (60 bytes) is smaller than any ClientHello that asks for it, and
one that would not be is not sent. So a spoofer reflecting through us reaches its target with
fewer bytes than it sends us; it could send them to the target itself. A per-source rate limit
adds nothing to that bound, and it hands an off-path spoofer a weapon: ClientHellos forged from
a victim's address use up the victim's budget and lock it (or everyone behind its NAT) out; it
also capped an honest address at a few dozen handshakes a second. So there is no per-source
limit. ``Limits.hello_verify_per_second`` (off by default) caps HelloVerifyRequests from all
sources together, for an operator who wants to bound the CPU and bandwidth spent on cookies;
with it set a flood delays everyone equally rather than one chosen address.

*Fairness of the half-open pool* (RELIABILITY rule 16). A half-open association costs an
OpenSSL object (~70 KiB), and a peer with cookies for its addresses can hold one as long as it
stays silent after our first flight. So: at most ``Limits.max_half_open_per_address`` half-open
associations per IPv4 address and ``Limits.max_half_open_per_ipv6_prefix`` per IPv6 /64 (one
host's worth of addresses); one that never got past our first flight is dropped after
``Limits.first_flight_timeout`` (a third of the handshake deadline by default;
``first_flight_timeout``); and when the pool is full, a new
validated client evicts the oldest half-open association that has not got past our first flight
(``half_open_evicted``); if every one has (a validated attacker gets there with one more
datagram, a ClientKeyExchange, then stalls), it evicts the oldest of the source holding the
most half-open associations, provided that source holds at least two more than the newcomer's.
Associations are kept in creation order for this, so the oldest is found at the front and the
first-flight deadlines come due in that order.

*Replays* (RFC 6347 §4.2.8). A cookie-carrying ClientHello stays valid for the cookie's
lifetime, so one seen on the path could be replayed to tear down the session it created, or the
session after it. Replacement therefore needs a client random not seen from that address in the
cookie's lifetime: an exact repeat of the ClientHello that created the association is a
retransmission (fed to OpenSSL, which ignores it: ``duplicate_client_hello``); a repeat of an
earlier one is dropped (``replayed_client_hello``); a replay with the random changed carries a
cookie made for another random and fails it (``bad_cookie``). The randoms are kept per address,
a few dozen bytes each, at most :data:`_HELLO_HISTORY` of them, and forgotten with the address.

Datagrams that are neither are dropped and counted by reason; nothing a peer sends can raise out
of :meth:`ServerEngine.receive_datagram`.

Events come out of :meth:`ServerEngine.next_event` as ``(address, engine, event)``. An association
whose session ended (closed or terminated) is forgotten when its terminal event is returned.
Timers of all associations are kept in one heap, so the server's deadline is cheap to ask for.
"""

from __future__ import annotations

import collections
import heapq
import ipaddress
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL

from .._frontend import accel as _accel
from ..exceptions import ConnectionLost, DTLSError, HandshakeTimeout
from . import events as ev
from .connection import Address, DTLSConnection, State, format_address
from .context import build_context
from .cookies import CookieJar
from .inbox import ByteBudget
from .records import (
    CONTENT_HANDSHAKE,
    HEADER_LENGTH,
    BadPacket,
    ClientHello,
    build_hello_verify_request,
    half_open_view_untrusted,
    parse_client_hello_untrusted,
)

if TYPE_CHECKING:
    from ..config import DTLSConfiguration

__all__ = ["ServerEngine", "ServerEvent", "ServerStatistics", "cookie_jar_for"]

ServerEvent = tuple[Address, DTLSConnection, ev.Event]

# A cookie is bound to the address, the time tick and the ClientHello fields before the cookie
# (version, random, session id: all in the first fragment, RFC 6347 §4.2.1). Without the random,
# an on-path observer could take one cookie-carrying ClientHello, change its random, and replay
# it from the client's address to replace (kill) the client's live session: the random record of
# *Replays* refuses only randoms already seen. The price: a spoofer who knows a client's exact
# address *and port*, and races its first flight, can make it adopt a cookie made for another
# random (answers to spoofed ClientHellos reach the client); guessing an ephemeral port makes
# that much harder than the per-address rate-limit lock-out it replaces.

# Client randoms remembered per address to refuse replayed ClientHellos (see *Replays*).
_HELLO_HISTORY = 16

# OpenSSL handshake states of a server association that has not heard anything from the client
# since its first flight: waiting for the rest of a fragmented ClientHello, or for the client's
# answer to our ServerHello...ServerHelloDone (full) or ServerHello...Finished (resumed).
# What a half-open client may still send in plaintext after the ClientHello with message_seq h:
# its second flight, Certificate (h+1, the only large one: OpenSSL caps it at its max_cert_list,
# 100 KiB), ClientKeyExchange and CertificateVerify (at most h+3). OpenSSL itself buffers up to
# ten messages ahead of the one it expects, each allocated at its declared length; so anything
# further ahead, or larger than ``Limits.max_client_hello_size`` other than at h+1, is dropped
# before OpenSSL sees it (``handshake_fragment_out_of_window``).
_SECOND_FLIGHT_MESSAGES = 3

# Bytes of records past epoch 0 a half-open client may send before its handshake completes:
# its Finished (and retransmissions of it), and at most one full record of application data
# sent right behind it. OpenSSL keeps such records until the epoch starts (~300 KiB of them
# per association when unbounded); beyond this budget they are dropped
# (``half_open_next_epoch_budget``).
_HALF_OPEN_NEXT_EPOCH_BYTES = 24 * 1024

# A datagram may take the established fast path when it is one application-data (23) or one
# alert (21) record (OpenSSL judges it either way; see DTLSConnection.receive_record): tested in
# receive_datagram by indexing, which costs less per datagram than slices.

_FIRST_FLIGHT_STATES = frozenset(
    {b"before SSL initialization", b"SSLv3/TLS write server done", b"SSLv3/TLS write finished"}
)


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
        self._context = context if context is not None else build_context(config, server=True)
        self.cookies = cookie_jar if cookie_jar is not None else cookie_jar_for(config)
        self._connections: dict[Address, DTLSConnection] = {}
        # Plain dicts, not Counters: a Counter's missing key and its ``del`` run Python code
        # (every handshake from a new address met both, twice).
        self._per_ip: dict[Any, int] = {}
        # Half-open associations: id → source key (IPv4 address or IPv6 /64), counted per key.
        self._handshaking: dict[int, Any] = {}
        self._half_open_per_source: dict[Any, int] = {}
        # Half-open associations not yet seen past our first flight, oldest first (pruned lazily).
        self._first_flight: dict[int, tuple[float, Address, DTLSConnection]] = {}
        self._hello_history: dict[Address, tuple[tuple[float, bytes], ...]] = {}
        # Half-open associations: id → message_seq of the ClientHello that created them, and
        # id → bytes of later-epoch records fed to them (see _HALF_OPEN_NEXT_EPOCH_BYTES).
        self._hello_sequence: dict[int, int] = {}
        self._next_epoch_bytes: dict[int, int] = {}
        self._dirty: dict[int, tuple[Address, DTLSConnection]] = {}
        self._outgoing: list[tuple[bytes, Address]] = []
        self._events: collections.deque[ServerEvent] = collections.deque()
        # (deadline, tie-break, address, id of the association): the heap names associations by
        # address and id, never holds them, so an ended one is freed at once (an entry whose
        # address now maps elsewhere is stale; one that fires early finds nothing due).
        self._timers: list[tuple[float, int, Address, int]] = []
        self._armed: dict[int, float] = {}
        self._first_flight_timeout = (
            self._limits.first_flight_timeout
            if self._limits.first_flight_timeout is not None
            else config.handshake_timeout / 3
        )
        self._rate_due = -math.inf  # global HelloVerifyRequest budget (GCRA), if one is set
        self._stats = ServerStatistics()
        self._per_port = self._limits.address_key == "address_and_port"
        self._listener = self._on_engine_activity  # made once (each access makes a new one)
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
        size = len(data)
        stats.datagrams_received += 1
        stats.bytes_received += size
        conn = self._connections.get(address)
        if (
            conn is not None
            and size >= 13
            and (data[0] == 23 or data[0] == 21)
            and size == 13 + (data[11] << 8 | data[12])
            and conn.receive_record(data, now)
        ):
            # The fast path: one application-data (or alert: a close_notify) record of an
            # established session. Nothing to flush: the session tells its listener if it
            # produced output or ended.
            return
        self._receive_other(data, address, conn, now)

    def receive_batch(
        self,
        batch: Iterable[tuple[bytes, Address]],
        now: float,
        failed: Callable[[Address, Exception], object] | None = None,
    ) -> None:
        """Feed ``(datagram, address)`` pairs as :meth:`receive_datagram` does, in one call
        (a driver's read batch: one Python call for the batch instead of one per datagram).

        An exception out of one datagram's handling — an engine bug, or an ``on_message``
        callback that raised — goes to ``failed(address, exception)`` and the rest of the
        batch is still fed; without ``failed`` it propagates.
        """
        connections = self._connections
        stats = self._stats
        established = _accel.receive_established
        if established is not None and type(batch) is list:
            # The accelerator takes the run of datagrams that are established sessions' single
            # application-data records (receive_record's steps, in C); it stops at the first
            # other one, which the loop below takes, then hands the rest back to it.
            index = 0
            while index < len(batch):  # (re-read: a callback may change the list)
                index, error, address = established(connections, batch, index, now, stats)
                if error is not None:
                    if failed is None:
                        raise error
                    failed(address, error)
                    continue
                if index < len(batch):
                    self._receive_one(batch[index], now, failed)
                    index += 1
            return
        for data, address in batch:  # (_receive_one's steps inline: no call per datagram)
            try:
                size = len(data)
                stats.datagrams_received += 1
                stats.bytes_received += size
                conn = connections.get(address)
                if (
                    conn is not None
                    and size >= 13
                    and (data[0] == 23 or data[0] == 21)
                    and size == 13 + (data[11] << 8 | data[12])
                    and conn.receive_record(data, now)
                ):
                    continue
                self._receive_other(data, address, conn, now)
            except Exception as exc:
                if failed is None:
                    raise
                failed(address, exc)

    def _receive_one(
        self,
        item: tuple[bytes, Address],
        now: float,
        failed: Callable[[Address, Exception], object] | None,
    ) -> None:
        """One datagram of a batch (receive_datagram's steps, same order, same fast-path
        test)."""
        data, address = item
        try:
            size = len(data)
            stats = self._stats
            stats.datagrams_received += 1
            stats.bytes_received += size
            conn = self._connections.get(address)
            if (
                conn is not None
                and size >= 13
                and (data[0] == 23 or data[0] == 21)
                and size == 13 + (data[11] << 8 | data[12])
                and conn.receive_record(data, now)
            ):
                return
            self._receive_other(data, address, conn, now)
        except Exception as exc:
            if failed is None:
                raise
            failed(address, exc)

    def _receive_other(
        self, data: bytes, address: Address, conn: DTLSConnection | None, now: float
    ) -> None:
        """A datagram off the fast path: an association's handshake or records, else a
        ClientHello (or nothing)."""
        if conn is not None and not _may_be_client_hello(data):
            self._feed(address, conn, data, now)
            return
        self._receive_client_hello(data, address, conn, now)

    def _feed(self, address: Address, conn: DTLSConnection, data: bytes, now: float) -> None:
        """Give a datagram to an existing association (a half-open one only within the window
        of handshake messages its client may still send: see ``_SECOND_FLIGHT_MESSAGES``)."""
        hello_seq = self._hello_sequence.get(id(conn))
        if hello_seq is not None:
            cap = self._limits.max_client_hello_size
            headers, later = half_open_view_untrusted(data)
            for message_seq, message_length in headers:
                if message_seq > hello_seq + _SECOND_FLIGHT_MESSAGES or (
                    message_length > cap and message_seq != hello_seq + 1
                ):
                    self._drop("handshake_fragment_out_of_window")
                    return
            if later:
                spent = self._next_epoch_bytes.get(id(conn), 0) + later
                if spent > _HALF_OPEN_NEXT_EPOCH_BYTES:
                    self._drop("half_open_next_epoch_budget")
                    return
                self._next_epoch_bytes[id(conn)] = spent
        conn.receive_datagram(data, now)
        self._touched(address, conn)

    def _receive_client_hello(
        self, data: bytes, address: Address, conn: DTLSConnection | None, now: float
    ) -> None:
        """A datagram that may start a handshake: from a new address, or a ClientHello from an
        address that has an association (cookies, limits and replacement live here)."""
        try:
            hello = parse_client_hello_untrusted(data)
        except BadPacket:
            if conn is not None:
                # The rest of a fragmented ClientHello, or junk: OpenSSL judges it.
                self._feed(address, conn, data, now)
            elif _is_later_client_hello_fragment(data):
                self._drop("unvalidated_client_hello_fragment")
            else:
                self._drop("not_client_hello" if data[:1] != b"\x16" else "malformed_client_hello")
            return
        if hello.message_length > self._limits.max_client_hello_size:
            self._drop("client_hello_too_large")
            return
        history = self._hello_history.get(address) if conn is not None else None
        if conn is not None and history and history[-1][1] == hello.random:
            # A retransmission of the ClientHello that created the association (or of one of
            # its fragments): the engine takes it as a sign that its answer was lost (OpenSSL
            # itself ignores it).
            self._drop("duplicate_client_hello")
            self._feed(address, conn, data, now)
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
        if history and any(random == hello.random for _, random in history):
            # A valid cookie, but this ClientHello already started a handshake from here: a
            # replay must not replace the session that followed it (§4.2.8).
            self._drop("replayed_client_hello")
            return
        self._accept(hello, data, address, now, replacing=conn)

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
        if isinstance(event, ev.ENDED):
            self._forget(address, conn)
        return address, conn, event

    def get_timer(self) -> float | None:
        """The earliest deadline of any association, or None."""
        self._flush()
        first_flight = self._first_flight_deadline()
        while self._timers:
            deadline, _, address, ident = self._timers[0]
            if self._live_entry(deadline, address, ident) is not None:
                return deadline if first_flight is None else min(deadline, first_flight)
            heapq.heappop(self._timers)
        return first_flight

    def handle_timer(self, now: float) -> None:
        """Run every association's timer that has expired."""
        self._flush()
        self._expire_first_flights(now)
        while self._timers and self._timers[0][0] <= now:
            deadline, _, address, ident = heapq.heappop(self._timers)
            conn = self._live_entry(deadline, address, ident)
            if conn is None:
                continue
            del self._armed[ident]
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

    def _send_hello_verify(
        self, hello: ClientHello, data: bytes, address: Address, now: float
    ) -> None:
        self._stats.bytes_received_unvalidated += len(data)
        if not self._take_token(now):
            self._drop("hello_verify_rate_limited")
            return
        cookie = self.cookies.issue(address, hello.bound_fields, now)
        reply = build_hello_verify_request(hello, cookie)
        if len(reply) > len(data):  # pragma: no cover - see below
            # Never amplify toward an address that has not proven it is real. With 32-byte
            # cookies a reply (60 bytes) is smaller than any well-formed ClientHello (67), or
            # first fragment holding its cookie field, so this only guards a longer cookie.
            self._drop("client_hello_too_small")
            return
        self._outgoing.append((reply, address))
        self._stats.hello_verify_requests_sent += 1
        self._stats.bytes_sent_unvalidated += len(reply)

    def _take_token(self, now: float) -> bool:
        """The optional global HelloVerifyRequest budget (see the module essay: no per-source
        limit). GCRA: the due time runs ahead of ``now`` by 1/rate per request sent; a burst of
        2 x rate is allowed while it runs at most (burst - 1)/rate ahead."""
        rate = self._limits.hello_verify_per_second
        if rate is None:
            return True
        interval = 1.0 / rate
        burst = max(1.0, 2 * rate)  # at least one, or a rate below 0.5/s would refuse all
        tolerance = (burst - 1.0) * interval + 1e-6  # epsilon: float sums of ``interval``
        due = max(self._rate_due, now)
        if due - now > tolerance:
            return False
        self._rate_due = due + interval
        return True

    def _accept(
        self,
        hello: ClientHello,
        data: bytes,
        address: Address,
        now: float,
        replacing: DTLSConnection | None,
    ) -> None:
        limits = self._limits
        ip, source = self._limit_keys(address)
        sessions = len(self._connections) - (1 if replacing is not None else 0)
        if sessions >= limits.max_sessions:
            self._drop("max_sessions")
            return
        if replacing is None and self._per_ip.get(ip, 0) >= limits.max_sessions_per_address:
            self._drop("max_sessions_per_address")
            return
        replaces_half_open = replacing is not None and id(replacing) in self._handshaking
        same_source = replaces_half_open and self._handshaking.get(id(replacing)) == source
        per_source_limit = (
            limits.max_half_open_per_ipv6_prefix
            if source[0] == 6
            else limits.max_half_open_per_address
        )
        held = self._half_open_per_source.get(source, 0)
        if held - (1 if same_source else 0) >= per_source_limit:
            self._drop(
                "max_half_open_per_ipv6_prefix" if source[0] == 6 else "max_half_open_per_address"
            )
            return
        half_open = len(self._handshaking) - (1 if replaces_half_open else 0)
        if half_open >= limits.max_half_open:
            victim = self._least_progressed(exclude=replacing)
            why = "it had not answered the first flight"
            if victim is None:
                own = self._half_open_per_source.get(source, 0) - (1 if same_source else 0)
                victim = self._from_busiest_source(own, exclude=replacing)
                why = "its source held more half-open handshakes than any other"
            if victim is None:
                self._drop("max_half_open")
                return
            victim_address, victim_conn = victim
            self._drop("half_open_evicted")
            self._end(
                victim_address,
                victim_conn,
                HandshakeTimeout(
                    f"handshake with {format_address(victim_address)} was dropped to make room: "
                    f"the server's half-open pool was full and {why}"
                ),
            )
        history = self._hello_history.get(address, ()) if replacing is not None else ()
        if replacing is not None:
            self._stats.sessions_replaced += 1
            self._end(
                address,
                replacing,
                ConnectionLost(f"replaced by a new handshake from {format_address(address)}"),
            )
        horizon = now - 2 * self.cookies.tick_seconds  # older randoms carry no valid cookie
        kept = [entry for entry in history if entry[0] > horizon][-(_HELLO_HISTORY - 1) :]
        self._hello_history[address] = (*kept, (now, hello.random))  # a tuple: no spare room
        conn = DTLSConnection(
            self._session_config, server=True, peer_address=address, context=self._context
        )
        conn.listener = self._listener  # one bound method for every session
        conn.budget = self.budget
        conn.server_drops = self._stats.drops
        self._connections[address] = conn
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._handshaking[id(conn)] = source
        self._half_open_per_source[source] = self._half_open_per_source.get(source, 0) + 1
        self._hello_sequence[id(conn)] = hello.message_sequence
        self._first_flight[id(conn)] = (now, address, conn)
        self._stats.associations_created += 1
        conn.start_server(data, now)
        self._touched(address, conn)

    def _end(self, address: Address, conn: DTLSConnection, error: DTLSError) -> None:
        """Abort an association now, deliver its terminal event, and forget it."""
        conn.abort(error)
        self._touched(address, conn)
        self._flush()
        self._forget(address, conn)

    def _progressed(self, conn: DTLSConnection) -> bool:
        """Whether a half-open association heard from its client after our first flight."""
        return conn.ssl_object.get_state_string() not in _FIRST_FLIGHT_STATES

    def _least_progressed(
        self, exclude: DTLSConnection | None
    ) -> tuple[Address, DTLSConnection] | None:
        """The oldest half-open association still at our first flight, if any. Entries that
        ended or got further are dropped from the front as they are met (each once)."""
        stale = []
        found = None
        for key, (_, address, conn) in self._first_flight.items():
            if (
                id(conn) not in self._handshaking
                or self._connections.get(address) is not conn
                or conn.state is not State.HANDSHAKING
                or self._progressed(conn)
            ):
                stale.append(key)
            elif conn is not exclude:
                found = address, conn
                break
        for key in stale:
            del self._first_flight[key]
        return found

    def _from_busiest_source(
        self, own: int, exclude: DTLSConnection | None
    ) -> tuple[Address, DTLSConnection] | None:
        """When every half-open association got past our first flight (which costs a validated
        attacker one datagram): the oldest of the source holding the most of them, if it holds
        at least two more than the newcomer's source would. Otherwise a few addresses could
        still hold the whole pool for the handshake deadline; this way they keep at most their
        share of it. (Scans the associations: only when the pool is full.)"""
        if not self._half_open_per_source:
            return None
        busiest, count = max(self._half_open_per_source.items(), key=lambda item: item[1])
        if count <= own + 1:
            return None
        for address, conn in self._connections.items():
            if conn is not exclude and self._handshaking.get(id(conn)) == busiest:
                return address, conn
        return None  # pragma: no cover - the counts mirror _handshaking

    def _first_flight_deadline(self) -> float | None:
        for created, _, _ in self._first_flight.values():
            return created + self._first_flight_timeout
        return None

    def _expire_first_flights(self, now: float) -> None:
        """Drop half-open associations that never got past our first flight in time."""
        timeout = self._first_flight_timeout
        while self._first_flight:
            key = next(iter(self._first_flight))
            created, address, conn = self._first_flight[key]
            if created + timeout > now:
                return
            del self._first_flight[key]
            if (
                id(conn) not in self._handshaking
                or self._connections.get(address) is not conn
                or conn.state is not State.HANDSHAKING
                or self._progressed(conn)
            ):
                continue
            self._drop("first_flight_timeout")
            self._end(
                address,
                conn,
                HandshakeTimeout(
                    f"handshake with {format_address(address)} did not get past the server's "
                    f"first flight within {timeout:g} s"
                ),
            )

    def _on_engine_activity(self, conn: DTLSConnection) -> None:
        """An engine's listener: it produced output or events outside a call we made."""
        # A server makes every engine with its peer_address set.
        self._dirty[id(conn)] = (conn.peer_address, conn)  # type: ignore[assignment]

    def _touched(self, address: Address, conn: DTLSConnection) -> None:
        # The engine's own address tuple, not the equal one each datagram brings: what is kept
        # (timers, events) shares the one tuple per session.
        self._dirty[id(conn)] = (conn.peer_address, conn)  # type: ignore[assignment]

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
        ident = id(conn)  # one int object for the map key and the heap entry (32 bytes each)
        armed = self._armed.get(ident)
        if armed is None or deadline < armed:
            self._armed[ident] = deadline
            # The id also breaks ties (no counter: one int less per session); entries with the
            # same deadline and id are one association's, and then compare their addresses.
            heapq.heappush(self._timers, (deadline, ident, address, ident))

    def _live_entry(self, deadline: float, address: Address, ident: int) -> DTLSConnection | None:
        """The association a heap entry stands for, or None if the entry is stale."""
        conn = self._connections.get(address)
        if conn is None or id(conn) != ident or self._armed.get(ident) != deadline:
            return None
        return conn

    def _compact_timers(self) -> None:
        """Drop stale heap entries once they outnumber live ones."""
        if len(self._timers) <= 2 * len(self._armed) + 64:
            return
        self._timers = [
            entry
            for entry in self._timers
            if self._live_entry(entry[0], entry[2], entry[3]) is not None
        ]
        heapq.heapify(self._timers)

    def _note(self, conn: DTLSConnection, event: ev.Event) -> None:
        if isinstance(event, ev.HandshakeCompleted) and id(conn) in self._handshaking:
            self._end_half_open(conn)
            self._stats.handshakes_completed += 1

    def _end_half_open(self, conn: DTLSConnection) -> None:
        self._first_flight.pop(id(conn), None)  # ~130 bytes a session would keep until expiry
        source = self._handshaking.pop(id(conn))
        self._hello_sequence.pop(id(conn), None)
        self._next_epoch_bytes.pop(id(conn), None)
        held = self._half_open_per_source.get(source, 0) - 1
        if held <= 0:
            self._half_open_per_source.pop(source, None)
        else:
            self._half_open_per_source[source] = held

    def _forget(self, address: Address, conn: DTLSConnection) -> None:
        if self._connections.get(address) is not conn:
            return
        del self._connections[address]
        self._armed.pop(id(conn), None)
        ip = self._limit_keys(address)[0]
        held = self._per_ip.get(ip, 0) - 1
        if held <= 0:
            self._per_ip.pop(ip, None)
        else:
            self._per_ip[ip] = held
        if id(conn) in self._handshaking:
            self._end_half_open(conn)
            self._stats.handshakes_failed += 1
        self._first_flight.pop(id(conn), None)
        self._hello_history.pop(address, None)
        conn.listener = None
        conn.server_drops = None
        self._compact_timers()

    def _drop(self, reason: str) -> None:
        self._stats.drops[reason] = self._stats.drops.get(reason, 0) + 1

    def _limit_keys(self, address: Address) -> tuple[Any, tuple[int, Any]]:
        """What the per-address limits count ``address`` against: the sessions key and the
        half-open source key (``Limits.address_key``: per IP, or per IP and port behind a
        proxy)."""
        if self._per_port:
            key = (address[0], address[1])
            return key, (4, key)  # counted against max_half_open_per_address
        return address[0], _source_key(address[0])


def cookie_jar_for(config: DTLSConfiguration) -> CookieJar:
    """The cookie jar a server with this configuration uses; build one before forking workers
    and pass it to each worker's :class:`ServerEngine` so they accept each other's cookies.

    A cookie lives one to two ticks; a tick as long as the handshake deadline means no honest
    client's cookie goes stale while it is still retrying its ClientHello.
    """
    return CookieJar(config.cookie_secret, tick_seconds=max(30.0, config.handshake_timeout))


def _source_key(host: Any) -> tuple[int, Any]:
    """Who a half-open association counts against: an IPv4 address, or an IPv6 /64 (one host
    can hold a whole /64). IPv4-mapped IPv6 addresses count as IPv4."""
    text = str(host)
    if ":" not in text:  # the common case: an IPv4 address as the socket gives it
        return (4, text)
    text = text.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return (0, text)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return (4, str(ip.ipv4_mapped))
        return (6, int(ip) >> 64)
    return (4, text)


def _is_later_client_hello_fragment(data: bytes) -> bool:
    """A whole handshake header of a ClientHello fragment at a non-zero offset."""
    return (
        _may_be_client_hello(data)
        and len(data) >= HEADER_LENGTH + 12
        and data[HEADER_LENGTH + 6 : HEADER_LENGTH + 9] != b"\x00\x00\x00"
    )


def _may_be_client_hello(data: bytes) -> bool:
    """Cheap pre-check: an epoch-0 handshake record whose first message is a ClientHello."""
    return (
        len(data) > HEADER_LENGTH
        and data[0] == CONTENT_HANDSHAKE
        and data[3:5] == b"\x00\x00"
        and data[HEADER_LENGTH] == 1
    )
