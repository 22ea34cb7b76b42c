"""One DTLS association (one peer), sans I/O: bytes and ``now`` in; datagrams, events and
deadlines out.

Theory of operation
-------------------
OpenSSL runs the DTLS 1.2 state machine on a pair of memory BIOs. Around it this module owns
what OpenSSL either does not do or does on a clock we cannot control:

*Datagrams.* Input: each received datagram is written to OpenSSL alone, then OpenSSL is drained
(two datagrams written back to back are read as one packet, and a bad first one would make
OpenSSL drop the good second one). Output: OpenSSL's bytes are split into records and packed into
datagrams of at most :attr:`mtu` bytes, never splitting a record (RFC 6347 §4.1.1).

*Retransmission* (RFC 6347 §4.2.4). Our timer, driven by the ``now`` the caller passes, decides
when: 1 s initially, doubling up to 60 s, kept after a lossy flight and reset after a loss-free
one. OpenSSL's own DTLS timer reads the wall clock, which a test's hand-advanced clock does not
move. On expiry we first ask OpenSSL to retransmit (``DTLSv1_handle_timeout``), which rebuilds the
flight with fresh record sequence numbers and re-fragments it for the current MTU; when OpenSSL's
clock disagrees (a simulated clock) we re-send the flight's records as they were. After two lost
flights in a row the MTU backs off to the path minimum (548 bytes over IPv4, 1232 over IPv6).
An overall handshake deadline (30 s by default) ends a stalled handshake with
:class:`~dtlskit.exceptions.HandshakeTimeout`; OpenSSL alone would try for minutes.

*Peer repeats.* When the peer retransmits the flight our current flight answers, ours was lost
and we re-send it at once; the side that sent the final flight (which no timer covers) re-sends
it the same way. The bookkeeping (timers, flight names, fingerprints, rate) is
:mod:`dtlskit.core.flights`. Datagrams keep flowing through OpenSSL after the handshake, so
OpenSSL's own repeat-Finished logic also works with peers that renumber their retransmissions.

The contract for callers: after any method that takes ``now``, and after :meth:`send` and
:meth:`close`, call :meth:`datagrams_to_send` and transmit the result, drain :meth:`next_event`,
and re-arm a timer for :meth:`get_timer`, calling :meth:`handle_timer` when it expires.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL

from .._frontend import accel as _accel
from ..exceptions import (
    CertificateVerificationError,
    ConfigurationError,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    ConnectionLost,
    DTLSError,
    HandshakeFailure,
    HandshakeTimeout,
    InvalidMessage,
    MessageTooLarge,
    UsageError,
    VerificationReason,
)
from . import _bindings, _errors
from . import events as ev
from .context import context as shared_context
from .flights import Flights
from .hibernation import ALERT_NAMES, Hibernated, hibernate, release
from .inbox import ByteBudget, Inbox
from .record_protection import RecordProtection
from .records import (
    BadPacket,
    pack_datagrams,
    split_records_prefix_untrusted,
    split_records_trusted,
)
from .session import NegotiatedSession, Session
from .state import State
from .trace import alerts_in, datagram_log, describe_records, handshake_log

if TYPE_CHECKING:
    from ..config import DTLSConfiguration

__all__ = ["ConnectionStatistics", "DTLSConnection", "State", "fallback_mtu_for"]

Address = tuple[Any, ...]

_APPLICATION_DATA = 23
_ALERT = 21
_FAST_TYPES = frozenset({b"\x17", b"\x15"})  # one application-data or alert record
# The drop counters of a session that dropped nothing: shared, never written (``_drop`` gives a
# session a dict of its own first): 64 bytes less per session.
_NO_DROPS: dict[str, int] = {}
# The output and event queues of a session that has none (almost always, once established):
# shared, never appended to (``_emit`` and ``_event`` give a session a list of its own).
_NONE_YET: list[Any] = []
_ESTABLISHED_EPOCH = 1  # renegotiation (a later epoch) keeps the general path
_MAX_PLAINTEXT = 2**14  # largest plaintext of one record
# How far OpenSSL's wall-clock timer may lag ours before we stop waiting for it.
_CLOCK_SKEW = 0.05
# Seconds without a message after which a hibernated session drops its AEAD objects (at least;
# hibernate_after when longer). An AES-GCM object holds ~2.5 KiB of tables; the keys are 32 B.
_REST_AFTER = 10.0
# Records of one datagram read one at a time (OpenSSL path: so each message is attributed to
# its record; hibernated path: opened); beyond, see receive_datagram and _receive_hibernated.
_RECORDS_ONE_BY_ONE = 32


def fallback_mtu_for(address: Address | None) -> int:
    """Minimum datagram size every path carries: 576-28 over IPv4, 1280-48 over IPv6."""
    if address is not None and ":" in str(address[0]):  # an IPv4 address has no colon
        try:
            if ipaddress.ip_address(str(address[0]).split("%")[0]).version == 6:
                return 1232
        except ValueError:
            pass
    return 548


@dataclass(slots=True)
class ConnectionStatistics:
    """Counters of one association. A snapshot is returned by ``statistics()``."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    retransmissions: int = 0
    """Flights we re-sent after our timer expired (OpenSSL-rebuilt or as stored)."""
    final_flight_resends: int = 0
    """Times our final flight was re-sent because the peer repeated its last flight."""
    early_resends: int = 0
    """Times a flight was re-sent at once because the peer repeated the flight it answers
    (RFC 6347 §4.2.4: a retransmitted peer flight means ours was lost)."""
    mtu_backoffs: int = 0
    handshake_seconds: float | None = None
    """Time from the first flight to completion, in the caller's clock."""
    drops: dict[str, int] = field(default_factory=dict)
    """Datagrams or messages dropped, by reason."""

    def copy(self) -> ConnectionStatistics:
        """An independent snapshot."""
        copied = copy.copy(self)
        copied.drops = dict(self.drops)
        return copied


class DTLSConnection(NegotiatedSession):
    """The engine of one DTLS association. See the module docstring for the contract.

    A client may pass ``session=`` (a :class:`~dtlskit.core.session.Session` taken from an
    earlier connection's :attr:`session`) to resume it; what the handshake negotiated (ALPN,
    SRTP, PSK identity, exported keys, the session) comes from
    :class:`~dtlskit.core.session.NegotiatedSession`.
    """

    __slots__ = (
        "_cleartext_limit",
        "_config",
        "_events",
        "_fallback_mtu",
        "_final_pending",
        "_flights",
        "_handle",
        "_handshake_deadline",
        "_handshake_started",
        "_hib",
        "_hibernate_after",
        "_hibernate_deadline",
        "_hibernate_mark",
        "_idle_deadline",
        "_idle_timeout",
        "_limits",
        "_mtu",
        "_outgoing",
        "_protection",
        "_queued_bytes",
        "_queued_messages",
        "_read_high",
        "_server",
        "_ssl",
        "_stats",
        "_unknown_reads",
        "budget",
        "error",
        "inbox",
        "listener",
        "on_message",
        "peer_address",
        "server_drops",
        "state",
    )

    def __init__(
        self,
        config: DTLSConfiguration,
        *,
        server: bool,
        peer_address: Address | None = None,
        context: SSL.Context | None = None,
        server_hostname: str | None = None,
        session: Session | None = None,
    ) -> None:
        self._config = config
        self._server = server
        self.peer_address = peer_address
        ctx = context if context is not None else shared_context(config, server)
        self._ssl = SSL.Connection(ctx, None)
        self._mtu = config.mtu
        self._fallback_mtu = min(fallback_mtu_for(peer_address), self._mtu)
        self._ssl.set_ciphertext_mtu(self._mtu)
        self._verify_reason: str | None = None
        self._verify_code: int | None = None
        self._verify_timestamp: int | None = None
        self._clock_failure: ConfigurationError | None = None
        self._setup_verification(server_hostname)
        name = server_hostname or config.server_hostname
        self._setup_negotiation(
            name,
            config.alpn_protocols,
            session,
            None if server else config.verification_policy(name),
        )

        self.state: State = State.INITIAL
        # A few at a time, and mostly none: the shared empty list until the first (a list is
        # 56 bytes, a deque 624); see _event and _emit.
        self._events: list[ev.Event] = _NONE_YET
        self._queued_messages = 0
        self._queued_bytes = 0
        self._limits = config.limits
        self.inbox: Inbox | None = None
        """Where received messages go once a front end attached its channel (queue style)."""
        self.on_message: Callable[[bytes], object] | None = None
        """Called with each received message instead of queueing it (callback style)."""
        self.budget: ByteBudget | None = None
        """A server's byte budget, shared by the inboxes of all its sessions."""
        self.server_drops: dict[str, int] | None = None
        """A server's drop counters: drops of this session a server must see are added there
        too (full queues, records OpenSSL discarded)."""
        self._handle: Any = None  # the accelerator's handle, once established
        self._cleartext_limit = 0
        self._final_pending = False
        self._outgoing: list[bytes] = _NONE_YET
        self._stats = ConnectionStatistics(drops=_NO_DROPS)  # a dict of its own at the first drop
        self.error: DTLSError | None = None
        self.listener: Callable[[DTLSConnection], None] | None = None
        """Called (without arguments but the engine) whenever output or events are produced
        outside a call that takes ``now``; a server demultiplexer uses it to track work."""

        self._flights = Flights(config.initial_retransmit_timeout, config.max_retransmit_timeout)
        self._handshake_started: float | None = None
        self._handshake_deadline: float | None = None
        # Idle expiry.
        self._idle_timeout = config.idle_timeout
        self._idle_deadline: float | None = None
        # Hibernation (see dtlskit.core.hibernation): the state kept once OpenSSL is released,
        # when to release it, and the highest epoch||seq OpenSSL authenticated from the peer.
        self._hib: Hibernated | None = None
        # The hibernated record keys while established (None otherwise): the fast paths' test.
        self._protection: RecordProtection | None = None
        self._hibernate_after = self._limits.hibernate_after
        self._hibernate_deadline: float | None = None
        self._hibernate_mark = 0
        self._read_high = b""
        self._unknown_reads = False

    # -- set-up ---------------------------------------------------------------------------------

    # -- public verbs ---------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Client: start the handshake. Then call :meth:`datagrams_to_send`."""
        if self._server or self.state is not State.INITIAL:
            raise UsageError("connect() is for a client engine that has not started")
        self._ssl.set_connect_state()
        self._begin_handshake(now)
        self._advance_handshake(now)

    def start_server(self, client_hello: bytes, now: float) -> bool:
        """Server: begin with a ClientHello whose cookie the demultiplexer already verified.

        Returns False (and terminates) if OpenSSL rejects it. Then call :meth:`datagrams_to_send`.
        """
        if not self._server or self.state is not State.INITIAL:
            raise UsageError("start_server() is for a server engine that has not started")
        self._ssl.set_accept_state()
        self._begin_handshake(now)
        self._count_received(client_hello)
        self._flights.heard(client_hello)
        if self._clock_failure is not None:
            failure = f"handshake with {self._peer_text} refused: {self._clock_failure}"
            self._terminate(HandshakeFailure(failure))
            return False
        try:
            self._ssl.bio_write(client_hello)
            self._ssl.DTLSv1_listen()
        except SSL.Error as exc:
            self._terminate(
                _errors.handshake_error(exc, verify_reason=None, server=True, peer=self._peer_text)
            )
            return False
        self._advance_handshake(now)
        return self._state_now() is not State.TERMINATED

    def receive_record(self, data: bytes, now: float) -> bool:
        """The fast path for one datagram that is exactly one application-data or alert
        record of this established session (the caller checked the framing: first byte 23 or
        21, length field + 13 == ``len(data)``). Returns False, having done nothing, when the
        fast path does not apply (not established yet, renegotiation allowed): call
        :meth:`receive_datagram`.

        A message goes straight to :attr:`on_message` or :attr:`inbox` (no event, no timer
        change but the idle deadline, a plain float). An application-data record OpenSSL
        discards is counted (``"wrong_epoch"`` or ``"bad_record"``); an alert it takes quietly
        (a warning) is not, as on the general path, unless its framing is not DTLS
        (``"malformed_record"``). Only when the session ends (close_notify, a fatal error) is
        there output or an event: then the :attr:`listener` is told.
        """
        handle = self._handle
        if handle is None:
            protection = self._protection
            if protection is None or data[:1] != b"\x17":
                if self._hib is None:
                    return False
                # Hibernated and ended (counted there), or an alert: the general hibernated path.
                self._receive_hibernated(data, now)
                return True
            # Hibernated: Python's AEAD path (not the accelerator's).
            plaintext = protection.open_as(data, _APPLICATION_DATA)
            stats = self._stats
            stats.datagrams_received += 1
            stats.bytes_received += len(data)
            if type(plaintext) is not bytes:
                self._report_drop(str(plaintext))
                return True
            if self._hibernate_deadline is None:
                self._wake(now)
            if plaintext:  # (an empty record carries nothing: OpenSSL skips it too)
                stats.messages_received += 1
                if self._idle_timeout is not None:
                    self._idle_deadline = now + self._idle_timeout
                if self._final_pending:
                    self._final_pending = False
                    self._flights.peer_finished()
                callback = self.on_message
                if callback is not None:
                    callback(plaintext)
                else:
                    self._deliver(plaintext)
            return True
        stats = self._stats
        stats.datagrams_received += 1
        stats.bytes_received += len(data)
        result = _accel.open_record(handle, data)
        if type(result) is bytes:
            stats.messages_received += 1
            sequence = data[3:11]
            if sequence > self._read_high:
                self._read_high = sequence
            if self._idle_timeout is not None:
                self._idle_deadline = now + self._idle_timeout
            if self._final_pending:
                self._final_pending = False
                self._flights.peer_finished()
            # _deliver's two usual cases without its call: the callback, else the inbox
            callback = self.on_message
            if callback is not None:
                callback(result)
                return True
            inbox = self.inbox
            if inbox is not None:
                reason = inbox.offer(result)
                if reason is not None:
                    self._report_drop(reason)
                return True
            self._deliver(result)
            return True
        self._record_failed(int(result), data)
        return True

    def _record_failed(self, code: int, data: bytes) -> None:
        if code == _accel.WANT_READ:
            if data[0] == _ALERT:  # a warning alert, or one OpenSSL discarded
                if not _well_framed(data):
                    self._report_drop("malformed_record")
                return
            epoch = int.from_bytes(data[3:5], "big")
            self._report_drop("wrong_epoch" if epoch != _ESTABLISHED_EPOCH else "bad_record")
            return
        if code == _accel.ZERO_RETURN:
            self._peer_closed()
        else:
            try:
                _accel.raise_error(self._ssl, code)
            except SSL.ZeroReturnError:  # pragma: no cover - reported as ZERO_RETURN above
                self._peer_closed()
            except SSL.Error as exc:
                self._collect_output()
                self._terminate(_errors.session_error(exc, peer=self._peer_text))
        self._notify()

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one datagram from the peer. Then drain events and send datagrams."""
        if (
            self._handle is not None
            and data[:1] in _FAST_TYPES
            and len(data) == 13 + int.from_bytes(data[11:13], "big")
        ):
            self.receive_record(data, now)
            return
        if self.state in (State.CLOSED, State.TERMINATED, State.INITIAL):
            self._drop("after_close" if self.state is not State.INITIAL else "before_start")
            return
        if self._hib is not None:
            self._receive_hibernated(data, now)
            return
        self._count_received(data)
        if not data:
            self._drop("empty_datagram")
            return
        flights = self._flights
        if datagram_log.isEnabledFor(logging.DEBUG):
            datagram_log.debug(
                "%s: received %d bytes: %s", self._peer_text, len(data), describe_records(data)
            )
        if self.state is State.HANDSHAKING:
            if handshake_log.isEnabledFor(logging.DEBUG):
                handshake_log.debug("%s: received %s", self._peer_text, describe_records(data))
            repeat = flights.heard(data)
            flight = flights.current_name()
            self._bio_write(data)
            self._advance_handshake(now)
            state = self._state_now()
            if state is State.ESTABLISHED:
                received_before = self._stats.messages_received
                self._read_application_data(now)
                if self._stats.messages_received != received_before:
                    # Messages read at completion came from this datagram or from records
                    # OpenSSL buffered during the handshake: which records (and which sequence
                    # numbers) is unknowable, so no replay window could be sure to start above
                    # them. Such a session (rare: early data in a resumed handshake) keeps OpenSSL.
                    self._unknown_reads = True
                if self._hibernate_after == 0:
                    self._hibernate(now)
            elif (
                repeat
                and state is State.HANDSHAKING
                and flight == flights.current_name()
                and self._stored_flight_fits()
                and flights.resend_early(now)
            ):
                # The peer repeated what our flight answers: ours was lost, send it again now.
                self._queue(flights.records)
                self._stats.early_resends += 1
                handshake_log.debug(
                    "%s: the peer repeated its flight, so ours was lost: re-sending %s",
                    self._peer_text,
                    describe_records(flights.records),
                )
            return
        # Established: OpenSSL keeps seeing everything (a lost final flight is recovered this way).
        repeat = flights.final_repeat(data)
        produced_before = len(self._outgoing)
        received_before = self._stats.messages_received
        if _is_single_record(data):
            self._bio_write(data)
            self._read_application_data(now, single_record=True)
            if self._stats.messages_received != received_before:
                self._note_read(data)  # the one record delivered a message: authenticated
        elif _record_count(data, _RECORDS_ONE_BY_ONE + 1) <= _RECORDS_ONE_BY_ONE:
            self._read_records_one_by_one(data, now)
        else:
            # Too many records to feed one at a time (no genuine peer packs so many): OpenSSL
            # reads them together, as before, and a message among them cannot be attributed
            # to its record, so this session then keeps OpenSSL.
            self._bio_write(data)
            self._read_application_data(now)
            if self._stats.messages_received != received_before:
                self._unknown_reads = True
        if not _well_framed(data):
            # Whatever OpenSSL made of it, part of the datagram was not a DTLS 1.x record.
            self._report_drop("malformed_record")
        elif (
            not repeat
            and self._stats.messages_received == received_before
            and len(self._outgoing) == produced_before
            and self.state is State.ESTABLISHED
            and data[0] not in (21, 22)  # an alert or handshake record OpenSSL may take quietly
        ):
            self._report_drop(
                "wrong_epoch"
                if data[0] == _APPLICATION_DATA
                and len(data) >= 5
                and int.from_bytes(data[3:5], "big") != _ESTABLISHED_EPOCH
                and self._handle is not None
                else "bad_record"
            )
        if repeat and self.state is State.ESTABLISHED and flights.resend_final(now):
            self._stats.final_flight_resends += 1
            handshake_log.debug(
                "%s: the peer repeated its last flight: re-sending our final flight",
                self._peer_text,
            )
            if len(self._outgoing) == produced_before:  # OpenSSL did not re-send it itself
                self._emit(flights.final)

    def send(self, message: bytes) -> None:
        """Encrypt one message into one record. Then call :meth:`datagrams_to_send`.

        Raises :class:`InvalidMessage` for an empty or non-bytes message (the session goes on),
        :class:`MessageTooLarge` above :attr:`cleartext_mtu`.
        """
        data = _check_message(message)
        self._check_usable()
        limit = self.cleartext_mtu
        if len(data) > limit:
            raise MessageTooLarge(len(data), limit)
        if self._hib is not None:
            self._emit([self._seal_hibernated(data)])
            self._stats.messages_sent += 1
            self._notify()
            return
        try:
            self._ssl.write(data)
        except SSL.Error as exc:
            error = _errors.session_error(exc, peer=self._peer_text)
            self._terminate(error)
            self._notify()  # a server demultiplexer must see the session end
            raise error from exc
        self._stats.messages_sent += 1
        self._collect_output()
        self._notify()

    def seal(self, message: bytes | bytearray | memoryview) -> bytes | None:
        """Send one message on the fast path: validate it, encrypt it into one record and
        return that record, a datagram to transmit now (counted as sent here; nothing is
        queued, :meth:`datagrams_to_send` will not return it).

        Returns None when the session is not on the fast path (renegotiation allowed): the
        message was handed to :meth:`send`; call :meth:`datagrams_to_send`. Raises as
        :meth:`send` does.
        """
        handle = self._handle
        if handle is None:
            protection = self._protection
            if protection is not None:  # hibernated and established
                data = message if type(message) is bytes else _check_message(message)
                size = len(data)
                if not size:
                    _check_message(data)
                if size > self._cleartext_limit:
                    raise MessageTooLarge(size, self._cleartext_limit)
                record = protection.seal(_APPLICATION_DATA, data)
                if record is None:
                    record = self._seal_hibernated(data)  # raises: sequence numbers used up
                stats = self._stats
                stats.messages_sent += 1
                stats.datagrams_sent += 1
                stats.bytes_sent += len(record)
                return record
            self.send(_check_message(message))
            return None
        data = message if type(message) is bytes else _check_message(message)
        size = len(data)
        if not size:
            _check_message(data)
        if size > self._cleartext_limit:
            raise MessageTooLarge(size, self._cleartext_limit)
        result = _accel.seal_record(handle, data)
        if type(result) is bytes:
            stats = self._stats
            stats.messages_sent += 1
            stats.datagrams_sent += 1
            stats.bytes_sent += len(result)
            return result
        try:
            _accel.raise_error(self._ssl, int(result))
        except SSL.Error as exc:
            error = _errors.session_error(exc, peer=self._peer_text)
            self._terminate(error)
            self._notify()
            raise error from exc
        raise ConnectionLost(f"the connection to {self._peer_text} failed")  # pragma: no cover

    def open_inbox(self) -> Inbox:
        """Attach the session's one receive queue (bounded by ``limits.max_queued_bytes`` and
        ``max_queued_messages``, and by the server's :attr:`budget`) and return it."""
        limits = self._limits
        self.inbox = Inbox(limits.max_queued_bytes, limits.max_queued_messages, self.budget)
        return self.inbox

    def deliver(self, data: bytes) -> None:
        """Hand a message taken from a :class:`MessageReceived` event to the consumer attached
        since (:attr:`inbox` or :attr:`on_message`), under the same bounds."""
        self._deliver(data)

    def close(self) -> None:
        """Send close_notify (once, best effort) and end the session. Idempotent."""
        if self.state in (State.CLOSED, State.TERMINATED):
            return
        if self.state is State.ESTABLISHED:
            self._shutdown()
        self._finish(State.CLOSED)
        self.error = ConnectionClosedLocally("the connection was closed locally")
        self._event(ev.SessionClosed(by_peer=False))
        self._notify()

    def abort(self, error: DTLSError) -> None:
        """End the session at once with ``error`` (no alert is sent). Idempotent."""
        if self.state in (State.CLOSED, State.TERMINATED):
            return
        self._terminate(error)
        self._notify()

    def has_work(self) -> bool:
        """Whether :meth:`datagrams_to_send` or :meth:`next_event` have anything (False after
        datagrams that only took the fast path; those move no deadline but the idle one, and
        only later)."""
        return bool(self._outgoing or self._events)

    def datagrams_to_send(self, now: float | None = None) -> list[bytes]:
        """Datagrams to transmit to the peer, in order; each at most :attr:`mtu` bytes."""
        out = self._outgoing
        if out is _NONE_YET:
            return []
        self._outgoing = _NONE_YET
        for datagram in out:
            self._stats.datagrams_sent += 1
            self._stats.bytes_sent += len(datagram)
        if out and datagram_log.isEnabledFor(logging.DEBUG):
            for datagram in out:
                datagram_log.debug(
                    "%s: sending %d bytes: %s",
                    self._peer_text,
                    len(datagram),
                    describe_records(datagram),
                )
        return out

    def next_event(self) -> ev.Event | None:
        """The oldest event not yet returned, or None."""
        events = self._events
        if not events:
            return None
        event = events.pop(0)
        if not events:
            self._events = _NONE_YET
        if isinstance(event, ev.MessageReceived):
            self._queued_messages -= 1
            self._queued_bytes -= len(event.data)
        return event

    def get_timer(self) -> float | None:
        """The absolute deadline (caller's clock) at which to call :meth:`handle_timer`."""
        flights = self._flights
        earliest = flights.deadline
        for deadline in (
            self._handshake_deadline,
            self._idle_deadline,
            flights.final_deadline,
            self._hibernate_deadline,
        ):
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed. Then send datagrams and drain events."""
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self._terminate(
                HandshakeTimeout(
                    f"handshake with {self._peer_text} did not complete within "
                    f"{self._config.handshake_timeout:g} s"
                )
            )
            return
        if self._flights.deadline is not None and now >= self._flights.deadline:
            self._retransmit(now)
        final_deadline = self._flights.final_deadline
        if final_deadline is not None and now >= final_deadline:
            # The peer had the whole window to repeat its last flight: forget our answer.
            self._flights.peer_finished()
            self._final_pending = False
        hibernate_at = self._hibernate_deadline
        if hibernate_at is not None and now >= hibernate_at and self.state is State.ESTABLISHED:
            stats = self._stats
            mark = stats.messages_received + stats.messages_sent
            hib = self._hib
            if mark != self._hibernate_mark:  # not idle since armed: look again a period on
                self._hibernate_mark = mark
                self._hibernate_deadline = now + (
                    self._hibernate_after or 0.0 if hib is None else self._rest_after()
                )
            elif hib is None:
                self._hibernate(now)
            else:  # hibernated and idle: keep only keys until the next record (see _wake)
                if hib.protection is not None:
                    hib.protection.rest()
                self._hibernate_deadline = None
        if self._idle_deadline is not None and now >= self._idle_deadline:
            timeout = self._idle_timeout or 0.0
            self._shutdown()
            self._terminate(
                ConnectionLost(f"no message from {self._peer_text} for {timeout:g} s (idle)"),
            )

    @property
    def _peer_text(self) -> str:
        # Made when an error or a log line needs it: one string less per session.
        return format_address(self.peer_address)

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of this association's counters."""
        return self._stats.copy()

    # -- properties ---------------------------------------------------------------------------

    @property
    def config(self) -> DTLSConfiguration:
        """The configuration this engine was built from."""
        return self._config

    def note_drop(self, reason: str) -> None:
        """Count a drop that happened outside the engine (e.g. a front end's full queue), so
        :meth:`statistics` reports every drop of the session in one place."""
        self._drop(reason)

    @property
    def handshake_completed(self) -> bool:
        """Whether the handshake ever completed (stays True after the session ends)."""
        return self._stats.handshake_seconds is not None

    @property
    def is_server(self) -> bool:
        """Whether this engine plays the server role."""
        return self._server

    @property
    def mtu(self) -> int:
        """Current largest datagram size in bytes (it may back off during the handshake)."""
        return self._mtu

    @property
    def cleartext_mtu(self) -> int:
        """Largest message that fits in one record at the current MTU."""
        # A record carries at most 2**14 bytes of plaintext (RFC 6347 §4.1, RFC 5246 §6.2.1);
        # OpenSSL's figure ignores that above an MTU of ~16.5 kB, and a larger write then
        # fails inside OpenSSL and terminates the session instead of raising MessageTooLarge.
        hib = self._hib
        if hib is not None:
            return min(self._mtu - hib.cleartext_mtu_overhead, _MAX_PLAINTEXT)
        if self.state is State.ESTABLISHED:
            try:
                return min(int(self._ssl.get_cleartext_mtu()), _MAX_PLAINTEXT)
            except SSL.Error:  # pragma: no cover - only before keys exist
                pass
        return min(self._mtu - 64, _MAX_PLAINTEXT)

    @property
    def version(self) -> str | None:
        """Negotiated protocol version, once established."""
        if self.state is State.INITIAL:
            return None
        if self._hib is not None:
            return self._hib.version
        version = self._ssl.get_protocol_version_name()
        return str(version) if version and version != "Unknown" else None

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite name, once established."""
        if self._hib is not None:
            return self._hib.cipher
        name = self._ssl.get_cipher_name()
        return str(name) if name else None

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        if self._hib is not None:
            return self._hib.reused
        return _bindings.session_reused(self._ssl)

    @property
    def peer_certificate(self) -> Any:
        """The peer's certificate as a ``cryptography.x509.Certificate``, or None."""
        if self._hib is not None:
            return self._hib.peer_chain[0] if self._hib.peer_chain else None
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        return cert

    @property
    def peer_certificate_chain(self) -> list[Any]:
        """The chain the peer sent, leaf first, as ``cryptography`` certificates."""
        if self._hib is not None:
            return list(self._hib.peer_chain)
        chain = list(self._ssl.get_peer_cert_chain(as_cryptography=True) or [])
        # OpenSSL leaves the leaf out of a server's view of the client's chain: put it back.
        leaf = self.peer_certificate
        if leaf is not None and (not chain or chain[0] != leaf):
            chain.insert(0, leaf)
        return chain

    @property
    def ssl_object(self) -> SSL.Connection:
        """The underlying pyOpenSSL connection (for advanced use; do not drive its I/O).
        Raises :class:`UsageError` once the session hibernated (:attr:`hibernated`): OpenSSL's
        object was released."""
        if self._hib is not None:
            raise UsageError(
                "this session hibernated (Limits.hibernate_after): its OpenSSL object was released"
            )
        return self._ssl

    @property
    def hibernated(self) -> bool:
        """Whether the session's OpenSSL object was released and its records are protected by
        :mod:`dtlskit.core.record_protection` (``Limits.hibernate_after``)."""
        return self._hib is not None

    # -- handshake ------------------------------------------------------------------------------

    def _begin_handshake(self, now: float) -> None:
        self.state = State.HANDSHAKING
        self._handshake_started = now
        self._handshake_deadline = now + self._config.handshake_timeout

    def _advance_handshake(self, now: float) -> None:
        try:
            complete = _bindings.do_handshake(self._ssl)
        except SSL.WantReadError:  # pragma: no cover - do_handshake returns False for it
            complete = False
        except SSL.Error as exc:
            alert = self._drain_openssl()  # the alert OpenSSL queued, if any
            self._queue(alert)
            self._terminate(
                _errors.handshake_error(
                    exc,
                    verify_reason=self._verify_reason,
                    verify_code=self._verify_code,
                    notes=self._notes,
                    server=self._server,
                    peer=self._peer_text,
                )
            )
            if handshake_log.isEnabledFor(logging.DEBUG):
                sent = alerts_in(alert)
                handshake_log.debug(
                    "%s: handshake failed: %s%s",
                    self._peer_text,
                    self.error,
                    f" (we sent the alert {', '.join(sent)})" if sent else "",
                )
            return
        records = self._drain_openssl()
        if complete:
            # If we sent the last flight, nothing acknowledges it but silence: keep it (as the
            # datagrams it goes out in: one object, not one per record).
            final = pack_datagrams(records, self._mtu) if records else _NONE_YET
            self._flights.completed(final, now, window=self._config.handshake_timeout)
            if records and handshake_log.isEnabledFor(logging.DEBUG):
                handshake_log.debug(
                    "%s: sent %s (final flight)", self._peer_text, describe_records(records)
                )
            self._emit(final)
            self._handshake_completed(now)
        elif records:
            if not self._flights.sent(records, now):
                # OpenSSL re-sent the flight on its own wall-clock timer while reading.
                self._stats.retransmissions += 1
                handshake_log.debug("%s: OpenSSL re-sent our flight", self._peer_text)
            elif handshake_log.isEnabledFor(logging.DEBUG):
                handshake_log.debug("%s: sent %s", self._peer_text, describe_records(records))
            self._queue(records)

    def _retransmit(self, now: float) -> None:
        flights = self._flights
        remaining = self._ssl.DTLSv1_get_timeout()
        if remaining is not None and 0 < remaining <= _CLOCK_SKEW and not flights.deferred_for_skew:
            # OpenSSL's clock is a hair behind ours: let OpenSSL retransmit in a moment.
            flights.deferred_for_skew = True
            flights.deadline = now + remaining
            return
        if flights.timed_out() >= 2 and self._mtu > self._fallback_mtu:
            self._set_mtu(self._fallback_mtu)
            self._stats.mtu_backoffs += 1
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._terminate(
                _errors.handshake_error(
                    exc, verify_reason=None, server=self._server, peer=self._peer_text
                )
            )
            return
        rebuilt = self._drain_openssl()
        if not rebuilt and remaining and not self._stored_flight_fits():
            # The MTU just backed off and OpenSSL (its wall clock not yet expired) did not
            # rebuild the flight: the stored records no longer fit. Sending them would only
            # repeat the loss; wait for OpenSSL's timer, which re-fragments the flight.
            flights.deadline = now + remaining
            return
        flights.retransmitted(now, rebuilt)
        self._queue(flights.records)
        self._stats.retransmissions += 1
        if handshake_log.isEnabledFor(logging.DEBUG):
            handshake_log.debug(
                "%s: no answer in time: retransmission %d of %s (MTU %d)",
                self._peer_text,
                self._stats.retransmissions,
                describe_records(flights.records),
                self._mtu,
            )

    def _handshake_completed(self, now: float) -> None:
        if (
            not self._server
            and self.session_reused
            and self._config.effective_verify_mode(False) != ssl.CERT_NONE
            and _bindings.verify_result(self._ssl) != 0
        ):
            # Defence in depth behind the policy match: a resumed session skips certificate
            # checks, so one whose certificate did not verify when it was made is refused.
            reason = _bindings.verify_error_string(_bindings.verify_result(self._ssl))
            self._terminate(
                CertificateVerificationError(
                    f"the resumed session with {self._peer_text} was made without verifying "
                    f"the server certificate ({reason}); connect without it",
                    reason=VerificationReason.UNVERIFIED_SESSION,
                ),
            )
            return
        self.state = State.ESTABLISHED
        self._handshake_deadline = None
        _bindings.watch_established(self._ssl)
        self._cleartext_limit = self.cleartext_mtu
        self._final_pending = bool(self._flights.final)
        if not self._config.allow_renegotiation:
            self._handle = _accel.make_handle(self._ssl)
            if self._hibernate_after:
                self._hibernate_deadline = now + self._hibernate_after
        if self._handshake_started is not None:
            self._stats.handshake_seconds = now - self._handshake_started
        if self._idle_timeout is not None:
            self._idle_deadline = now + self._idle_timeout
        if handshake_log.isEnabledFor(logging.DEBUG):
            handshake_log.debug(
                "%s: handshake complete (%s, %s)%s",
                self._peer_text,
                self.version,
                self.cipher,
                self._resumption_note(),
            )
        self._event(
            ev.HandshakeCompleted(
                version=self.version or "DTLS",
                cipher=self.cipher or "",
                session_reused=self.session_reused,
            )
        )

    # -- hibernation ----------------------------------------------------------------------------

    def hibernate(self, now: float) -> bool:
        """Release OpenSSL's object now (as ``Limits.hibernate_after`` does on its own). Returns
        whether the session is hibernated; False (nothing changed) when it cannot be: not
        established, renegotiation allowed, or a suite :mod:`dtlskit.core.record_protection`
        does not implement."""
        if self._hib is None:
            self._hibernate(now)
        return self._hib is not None

    def _hibernate(self, now: float) -> None:
        self._hibernate_deadline = None
        if self.state is not State.ESTABLISHED or self._handle is None or self._hib is not None:
            return
        self._collect_output()  # what OpenSSL already wrote goes out first
        high = int.from_bytes(self._read_high[2:], "big") if self._read_high else -1
        result = (
            "records of unknown sequence numbers were read"
            if self._unknown_reads
            else hibernate(
                self._ssl, server=self._server, read_high=high, keep_session=not self._server
            )
        )
        if isinstance(result, str):
            self._drop("hibernation_refused")
            return
        release(self._ssl)
        self._hib = result
        self._protection = result.protection
        self._handle = None
        self._ssl = None  # type: ignore[assignment]  # released: every reader checks _hib first
        self._wake(now)

    def _note_read(self, record: bytes) -> None:
        """Remember the sequence number of a record OpenSSL authenticated (it delivered a
        message): after hibernation the replay window starts above the highest one."""
        if record[3:5] == b"\x00\x01":
            sequence = record[3:11]
            if sequence > self._read_high:
                self._read_high = sequence

    def _read_records_one_by_one(self, data: bytes, now: float) -> None:
        """A datagram of several records, given to OpenSSL one record at a time, so that each
        message read is known to come from the record just written (and its sequence number
        is noted: a record glued on by someone else never is). A framing error ends it."""
        offset, end = 0, len(data)
        while offset < end and self.state is State.ESTABLISHED:
            size = 13 + int.from_bytes(data[offset + 11 : offset + 13], "big")
            record = data[offset : offset + size]
            before = self._stats.messages_received
            self._bio_write(record)
            self._read_application_data(now, single_record=True)
            if self._stats.messages_received != before and len(record) == size:
                self._note_read(record)
            offset += size

    def _seal_hibernated(self, data: bytes, content_type: int = _APPLICATION_DATA) -> bytes:
        hib = self._hib
        assert hib is not None
        protection = hib.protection
        record = None if protection is None else protection.seal(content_type, data)
        if record is None:
            error = ConnectionLost(
                f"the session with {self._peer_text} used up its record sequence numbers"
            )
            self._terminate(error)
            self._notify()
            raise error
        return record

    def _send_alert(self, level: int, description: int) -> None:
        hib = self._hib
        if hib is not None:
            protection = hib.protection
            record = (
                None if protection is None else protection.seal(21, bytes((level, description)))
            )
            if record is not None:
                self._emit([record])

    def _shutdown(self) -> None:
        """Queue our close_notify, best effort."""
        if self._hib is not None:
            self._send_alert(1, 0)
            return
        with contextlib.suppress(SSL.Error):
            self._ssl.shutdown()
        self._collect_output()

    def _receive_hibernated(self, data: bytes, now: float) -> None:
        """A datagram for a hibernated session: records authenticated by our AEAD path, each
        bad one dropped and counted (RFC 6347 §4.1.2.7), never fatal."""
        stats = self._stats
        stats.datagrams_received += 1
        stats.bytes_received += len(data)
        if self.state is not State.ESTABLISHED:
            self._drop("after_close")
            return
        hib = self._hib
        assert hib is not None
        protection = hib.protection
        assert protection is not None  # established (checked above): secrets not yet forgotten
        if not data:
            self._drop("empty_datagram")
            return
        produced_before = len(self._outgoing)
        events_before = len(self._events)
        # The records before a framing error are read, the rest counted once (as OpenSSL reads
        # a datagram up to its first bad record); so is what follows the first few dozen
        # records (no genuine peer packs more: the work per datagram stays bounded).
        records, rest = split_records_prefix_untrusted(data, _RECORDS_ONE_BY_ONE)
        if rest is not None:
            self._report_drop(rest)
        flights = self._flights
        repeat = flights.final_repeat(data)
        for record in records:
            if self.state is not State.ESTABLISHED:
                break
            if record.epoch != protection.epoch:
                if not repeat:  # epoch 0 records of the peer's repeated flight are expected
                    self._report_drop("wrong_epoch")
                continue
            opened = protection.open(record.raw)
            if isinstance(opened, str):
                if not (repeat and record.content_type == 22):
                    self._report_drop(opened)
                # (else: the Finished of the peer's repeated flight, sent again as it was:
                # answered below, not counted, as OpenSSL takes such a copy quietly)
                continue
            if self._hibernate_deadline is None:
                self._wake(now)
            content_type, plaintext = opened
            if content_type == _APPLICATION_DATA:
                self._hibernated_data(plaintext, now)
            elif content_type == 21:
                self._hibernated_alert(plaintext)
            elif content_type == 22:
                self._hibernated_handshake(plaintext, repeat)
            else:  # ChangeCipherSpec inside epoch 1: the peer is broken
                self._hibernated_fatal(10, "an encrypted ChangeCipherSpec")
        if repeat and self.state is State.ESTABLISHED and flights.resend_final(now):
            stats.final_flight_resends += 1
            self._emit(flights.final)  # (kept as the datagrams it went out in)
        if len(self._outgoing) != produced_before or len(self._events) != events_before:
            self._notify()

    def _wake(self, now: float) -> None:
        """A rested session (AEAD objects dropped) authenticated a record: watch it again."""
        hib = self._hib
        if hib is not None and self.state is State.ESTABLISHED:
            self._hibernate_deadline = now + self._rest_after()
            stats = self._stats
            self._hibernate_mark = stats.messages_received + stats.messages_sent
            self._notify()  # a server must re-arm its timer for this session

    def _rest_after(self) -> float:
        return max(self._hibernate_after or 0.0, _REST_AFTER)

    def _hibernated_data(self, plaintext: bytes, now: float) -> None:
        if not plaintext:
            return  # an empty application-data record carries nothing (OpenSSL skips it too)
        self._stats.messages_received += 1
        if self._idle_timeout is not None:
            self._idle_deadline = now + self._idle_timeout
        if self._final_pending:
            self._final_pending = False
            self._flights.peer_finished()
        self._deliver(plaintext)

    def _hibernated_alert(self, plaintext: bytes) -> None:
        if len(plaintext) != 2:
            self._hibernated_fatal(50, "a malformed alert")
            return
        level, description = plaintext
        if description == 0:
            self._peer_closed()
            self._notify()
            return
        name = ALERT_NAMES.get(description, f"alert {description}")
        if level == 2:
            error = (
                ConnectionLost(
                    f"{self._peer_text} refused to renegotiate (alert: no renegotiation); "
                    "OpenSSL ends a session whose renegotiation the peer refuses",
                    alert=name,
                )
                if description == 100
                else ConnectionLost(f"{self._peer_text} sent fatal alert: {name}", alert=name)
            )
            self._terminate(error)
            self._notify()
            return
        self._report_drop("warning_alert")  # a warning other than close_notify: ignored

    def _hibernated_handshake(self, plaintext: bytes, repeat: bool) -> None:
        kind = plaintext[0] if plaintext else -1
        if kind == 20 and repeat:
            return  # the Finished of the peer's repeated final flight: answered by the caller
        if kind == (1 if self._server else 0):
            # A renegotiating ClientHello (server) or a HelloRequest (client): refused as
            # OpenSSL refuses it, with a no_renegotiation warning.
            self._notes.renegotiation_refused = True
            self._send_alert(1, 100)
            self._report_drop("renegotiation_refused")
            return
        self._report_drop("unexpected_handshake")

    def _hibernated_fatal(self, description: int, what: str) -> None:
        self._send_alert(2, description)
        name = ALERT_NAMES[description]
        self._terminate(
            ConnectionLost(
                f"session with {self._peer_text} failed: it sent {what} (sent alert: {name})",
                alert=name,
            )
        )
        self._notify()

    # -- established ----------------------------------------------------------------------------

    def _read_application_data(self, now: float, single_record: bool = False) -> None:
        """Decrypt every record OpenSSL holds. ``single_record``: the datagram held exactly one
        record, so one successful read is all there is (saves a read that would only raise)."""
        got_data = False
        while self.state is State.ESTABLISHED:
            data = _bindings.read_plaintext(self._ssl)
            if type(data) is not bytes:
                code = int(data)
                if code == _accel.WANT_READ:
                    break
                try:
                    _accel.raise_error(self._ssl, code)
                except SSL.ZeroReturnError:
                    self._peer_closed()
                    break
                except SSL.Error as exc:
                    self._collect_output()
                    self._terminate(_errors.session_error(exc, peer=self._peer_text))
                    return
            got_data = True
            self._stats.messages_received += 1
            self._deliver(data)  # type: ignore[arg-type]
            if single_record:
                break
        if got_data:
            # Authenticated data from the peer: it has finished, our final flight arrived.
            self._flights.peer_finished()
            self._final_pending = False
            if self._idle_timeout is not None:
                self._idle_deadline = now + self._idle_timeout
        self._collect_output()

    def _deliver(self, data: bytes) -> None:
        """One received message to its consumer, within the bounds (the one place they are
        checked): the callback, else the inbox, else (no consumer attached yet) an event."""
        callback = self.on_message
        if callback is not None:
            callback(data)
            return
        inbox = self.inbox
        if inbox is not None:
            reason = inbox.offer(data)
            if reason is not None:
                self._report_drop(reason)
            return
        limits = self._limits
        size = len(data)
        if (
            self._queued_messages >= limits.max_queued_messages
            or self._queued_bytes + size > limits.max_queued_bytes
        ):
            self._report_drop("queue_full")
            return
        self._queued_messages += 1
        self._queued_bytes += size
        self._event(ev.MessageReceived(data))
        self._notify()  # a server demultiplexer must collect it

    def _peer_closed(self) -> None:
        if handshake_log.isEnabledFor(logging.DEBUG):  # (the address text costs even unlogged)
            handshake_log.debug("%s: received close_notify", self._peer_text)
        self._shutdown()  # answer with our close_notify, best effort
        self._finish(State.CLOSED)
        self.error = ConnectionClosedByPeer(
            f"{self._peer_text} closed the connection (close_notify)", alert="close notify"
        )
        self._event(ev.SessionClosed(by_peer=True, alert="close notify"))

    def _stored_flight_fits(self) -> bool:
        """Whether the flight's records, cut by OpenSSL before any MTU back-off, still fit."""
        return all(len(record) <= self._mtu for record in self._flights.records)

    def _state_now(self) -> State:
        """The state after a call that may have changed it (keeps type checkers from assuming
        it is still what it was before the call)."""
        return self.state

    def _bio_write(self, data: bytes) -> None:
        if not _bindings.write_input(self._ssl, data):  # pragma: no cover - empty ones are
            self._drop("bio_write_failed")  # dropped before this

    def _drain_openssl(self) -> list[bytes]:
        data = _bindings.read_output(self._ssl)
        if not data:
            return []
        try:
            return split_records_trusted(data)
        except BadPacket:  # pragma: no cover - OpenSSL's output is always framed
            self._drop("unframed_output")
            return []

    def _collect_output(self) -> None:
        records = self._drain_openssl()
        if records:
            self._queue(records)

    def _queue(self, records: list[bytes]) -> None:
        self._emit(pack_datagrams(records, self._mtu))

    def _set_mtu(self, mtu: int) -> None:
        self._mtu = mtu
        self._ssl.set_ciphertext_mtu(mtu)

    def _count_received(self, data: bytes) -> None:
        self._stats.datagrams_received += 1
        self._stats.bytes_received += len(data)

    def _drop(self, reason: str) -> None:
        drops = self._stats.drops
        if drops is _NO_DROPS:
            drops = self._stats.drops = {}
        drops[reason] = drops.get(reason, 0) + 1

    def _report_drop(self, reason: str) -> None:
        """Count a drop here and in the server's counters (when a server owns this engine)."""
        drops = self._stats.drops
        if drops is _NO_DROPS:
            drops = self._stats.drops = {}
        drops[reason] = drops.get(reason, 0) + 1
        server = self.server_drops
        if server is not None:
            server[reason] = server.get(reason, 0) + 1

    def _check_usable(self) -> None:
        if self.state is State.ESTABLISHED:
            return
        if self.error is not None:
            raise self.error
        raise ConnectionLost(f"the connection to {self._peer_text} is not established yet")

    def _finish(self, state: State) -> None:
        self.state = state
        self._handle = None
        self._protection = None
        if self._hib is not None:
            self._hib.forget_secrets()
        self._hibernate_deadline = None
        self._flights.clear()
        self._handshake_deadline = None
        self._idle_deadline = None

    def _terminate(self, error: DTLSError) -> None:
        if self.state in (State.CLOSED, State.TERMINATED):
            return
        error = self._explain_failure(error)
        self._finish(State.TERMINATED)
        self.error = error
        self._event(ev.ConnectionTerminated(error))

    def _event(self, event: ev.Event) -> None:
        if self._events is _NONE_YET:
            self._events = [event]
        else:
            self._events.append(event)

    def _emit(self, datagrams: list[bytes]) -> None:
        """Queue datagrams for :meth:`datagrams_to_send`."""
        if not datagrams:
            return
        if self._outgoing is _NONE_YET:
            self._outgoing = list(datagrams)
        else:
            self._outgoing.extend(datagrams)

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener(self)


def _check_message(message: object) -> bytes:
    """The message as bytes, or :class:`InvalidMessage` (a ValueError) naming what is wrong."""
    if not isinstance(message, bytes | bytearray | memoryview):
        hint = "; encode text first, e.g. text.encode()" if isinstance(message, str) else ""
        raise InvalidMessage(
            f"send() takes bytes, bytearray or memoryview, not {type(message).__name__}{hint}"
        )
    data = bytes(message)
    if not data:
        raise InvalidMessage("cannot send an empty message: DTLS records carry 1 byte or more")
    return data


def _well_framed(data: bytes) -> bool:
    """Whether a datagram is a sequence of whole records of a DTLS 1.x version (untrusted:
    reads only the headers' version and length fields)."""
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 13 or data[offset + 1] != 0xFE or data[offset + 2] not in (0xFD, 0xFF):
            return False
        offset += 13 + int.from_bytes(data[offset + 11 : offset + 13], "big")
    return offset == end


def _record_count(data: bytes, limit: int) -> int:
    """How many records a datagram's framing shows, counting at most ``limit``."""
    count, offset, end = 0, 0, len(data)
    while offset < end and count < limit:
        count += 1
        if end - offset < 13:
            break
        offset += 13 + int.from_bytes(data[offset + 11 : offset + 13], "big")
    return count


def _is_single_record(data: bytes) -> bool:
    """Whether a datagram's framing says it holds exactly one record (OpenSSL still judges it)."""
    return len(data) >= 13 and 13 + int.from_bytes(data[11:13], "big") == len(data)


def format_address(address: Address | None) -> str:
    """``host:port`` or ``[v6host]:port`` for messages (the core cannot import _sockets)."""
    if address is None:
        return "the peer"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
