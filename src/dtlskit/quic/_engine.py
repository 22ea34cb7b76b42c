"""Sans-I/O QUIC sessions: aioquic's ``QuicConnection`` under our channel semantics.

Theory of operation
-------------------
aioquic's ``QuicConnection`` already speaks our engine contract (``receive_datagram``,
``datagrams_to_send``, ``get_timer``, ``handle_timer``, ``next_event``; time comes in as
``now``). :class:`QuicSession` wraps one connection and adds what our channels promise, so that
the asyncio and the blocking front ends get it once, identically:

* **Messages are streams.** ``send_message`` opens a bidirectional stream, writes and sends FIN
  (seed 002's semantics). A stream the peer ended with FIN that nobody claimed as a stream —
  one the peer opened, or the peer's half of a stream ``send_message`` opened — becomes the next
  message for ``next_message``, in the order the FINs arrived. Peer-opened streams can be
  claimed instead (``accept_stream``) and read and written directly; ``open_stream`` opens one.
  A peer-opened stream taken as a message has our half ended with an empty FIN, so that both
  ends can forget it; an empty stream is never a message.
* **Every received byte is bounded.** One stream holds at most ``max_stream_bytes``; all streams
  and datagrams of one connection hold at most ``limits.max_queued_bytes``; at most
  ``limits.max_queued_messages`` peer streams and datagrams wait to be taken. A stream that would
  pass a bound is refused (STOP_SENDING, and RESET_STREAM of our half) and its bytes freed; a
  datagram is dropped. Each is counted in ``drops`` by reason.
* **Deadlines.** aioquic has no overall handshake deadline: ours (``handshake_timeout``) is
  merged into ``get_timer``.
* **Errors.** The connection's end is classified once (:meth:`_terminated`) into our exception
  tree: ALPN mismatch (naming both sides' protocols), certificate rejection, handshake timeout,
  a peer's CONNECTION_CLOSE with its code and reason, an idle (vanished) peer.

aioquic reports ``ConnectionTerminated`` only when its closing period ends (three probe
timeouts later); we read the close it has already decided (``_close_event``, with its state
telling who closed) right after each call, so users learn of the end at once. Both are guarded
with ``getattr``: without them, we still classify the event when it comes.

:class:`QuicServerEngine` demultiplexes one server socket by destination connection ID, as
aioquic's asyncio server does, answers unknown versions with Version Negotiation, and enforces
``limits.max_sessions`` and ``limits.max_half_open``. Garbage never reaches a connection it
cannot belong to; each drop is counted by reason.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioquic.buffer import Buffer, BufferReadError  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

from ..exceptions import (
    CertificateVerificationError,
    ConnectionClosed,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    ConnectionLost,
    DTLSError,
    HandshakeFailure,
    HandshakeTimeout,
    InvalidMessage,
    UsageError,
    VerificationReason,
)
from ._config import QuicSettings, TicketStore
from ._initial import MAX_KEPT_BYTES, MAX_KEPT_DATAGRAMS, offered_alpn_untrusted

__all__ = ["QuicServerEngine", "QuicSession", "QuicStatistics", "StreamError"]

_CRYPTO_ERROR = 0x100
_NO_APPLICATION_PROTOCOL = 120
_APPLICATION_CLOSE_FRAME = 0x1D
_STREAM_REFUSED = 0x101  # our application error code when we refuse a stream (H3_... style)

_ALERTS = {
    10: "unexpected_message",
    20: "bad_record_mac",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    80: "internal_error",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    116: "certificate_required",
    120: "no_application_protocol",
}
_CERTIFICATE_ALERTS = {42, 43, 44, 45, 46, 48, 116}
_SERVER_ACCEPTS = re.compile(r"server accepts (\[[^\]]*\])")


class StreamError(ConnectionClosed):
    """A stream was refused or reset: by the peer (RESET_STREAM / STOP_SENDING, with its code) or
    by us (it would have held more than the bound). The connection goes on."""



@dataclass
class QuicStatistics:
    """Counters of one QUIC connection (or, summed, of a server)."""

    datagrams_received: int = 0
    datagrams_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    streams_accepted: int = 0
    streams_opened: int = 0
    quic_datagrams_received: int = 0
    quic_datagrams_sent: int = 0
    buffered_bytes: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)


class _Stream:
    __slots__ = (
        "claimed",
        "data",
        "ended",
        "error",
        "local",
        "message",
        "peer_done",
        "size",
        "write_ended",
    )

    def __init__(self, local: bool, claimed: bool, message: bool) -> None:
        self.local = local
        self.claimed = claimed  # a Stream object reads it; never a message
        self.message = message  # opened by send_message: the peer's answer is a message
        self.data = bytearray()
        self.size = 0
        self.ended = False
        self.write_ended = False
        self.peer_done = False  # FIN or RESET_STREAM received: no more bytes will come
        self.error: StreamError | None = None


class QuicSession:
    """One QUIC connection under our semantics. Not thread-safe; the front end serialises.

    After any input (``connect``, ``receive_datagram``, ``handle_timer``) or user verb, call
    ``datagrams_to_send(now)`` and send the result, then re-arm the timer at ``get_timer()``.
    ``error`` holds the exception that ended the connection, once it has ended.
    """

    def __init__(
        self,
        connection: Any,
        settings: QuicSettings,
        *,
        server: bool,
        now: float,
        keep_handshake: bool = False,
    ) -> None:
        self.quic = connection
        self.settings = settings
        self.server = server
        self.deadline = now + settings.handshake_timeout
        self.handshake_complete = False
        self.alpn_protocol: str | None = None
        self.session_resumed = False
        self.session_ticket: Any = None
        self.error: DTLSError | None = None
        self.stats = QuicStatistics()
        self.cid_events: list[tuple[bool, bytes]] = []
        self._closing = False
        self._streams: dict[int, _Stream] = {}
        self._incoming: dict[int, None] = {}  # peer-opened, not yet taken (opening order)
        self._messages: dict[int, None] = {}  # ended, unclaimed (FIN order)
        self._datagrams: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._kept: list[bytes] | None = [] if keep_handshake else None
        self._kept_bytes = 0
        self.peer_address: Any = None
        self.source = ""
        """Servers: the client's address as limits count it (IPv4 address, IPv6 /64)."""
        self._abandoned = False
        self.touched: set[int] = set()
        """Streams that received bytes, FIN or a reset since the front end last looked (it
        wakes their readers, then clears this)."""
        self.on_event: Callable[[Any], bool] | None = None
        """For an application protocol layered on the connection itself (aioquic's HTTP/3,
        say): called with each raw aioquic event first; return True to consume it (our
        streams-as-messages then never see it)."""

    # -- inputs -----------------------------------------------------------------------------

    def connect(self, address: Any, now: float) -> None:
        """Client: start the handshake. Then call ``datagrams_to_send``."""
        self.peer_address = address
        self.quic.connect(address, now=now)
        self._process()

    def receive_datagram(self, data: bytes, address: Any, now: float) -> None:
        """Feed one datagram from ``address``. Then call ``datagrams_to_send``."""
        self.stats.datagrams_received += 1
        self.stats.bytes_received += len(data)
        self.peer_address = address
        if (
            self._kept is not None
            and len(self._kept) < MAX_KEPT_DATAGRAMS
            and self._kept_bytes + len(data) <= MAX_KEPT_BYTES
        ):
            self._kept.append(data)
            self._kept_bytes += len(data)
        try:
            self.quic.receive_datagram(data, address, now)
        except Exception as exc:  # aioquic's bug must not become ours: end this one only
            self._engine_failed("a datagram", exc)
        self._process()

    def _engine_failed(self, what: str, exc: Exception) -> None:
        """aioquic raised: count it, end this connection (best-effort CONNECTION_CLOSE with
        INTERNAL_ERROR), and let every other connection go on."""
        self.stats.drops["engine_error"] += 1
        self._end(
            ConnectionLost(
                f"the QUIC engine (aioquic) failed on {what}: {type(exc).__name__}: {exc}"
            )
        )
        with contextlib.suppress(Exception):
            self.quic.close(error_code=0x1, reason_phrase="internal error")

    def abandon(self, reason: str) -> None:
        """Drop this connection without a word (a server evicting a half-open handshake): it
        sends nothing more and needs no timer."""
        self._abandoned = True
        self._end(HandshakeTimeout(reason))

    def get_timer(self) -> float | None:
        """The next deadline (caller's clock), or None."""
        if self._abandoned:
            return None
        timer: float | None = self.quic.get_timer()
        if not self.handshake_complete and self.error is None and (
            timer is None or self.deadline < timer
        ):
            timer = self.deadline
        return timer

    def handle_timer(self, now: float) -> None:
        """Call when ``get_timer()`` has passed. Then call ``datagrams_to_send``."""
        if self._abandoned:
            return
        if not self.handshake_complete and self.error is None and now >= self.deadline:
            role = "client" if self.server else "server"
            self._end(
                HandshakeTimeout(
                    "QUIC handshake did not complete within "
                    f"{self.settings.handshake_timeout:g} s: the {role} did not complete it "
                    "(nothing listening there, not QUIC, or a server too busy to take us)"
                )
            )
            self.quic.close(error_code=0, reason_phrase="handshake timeout")
        timer = self.quic.get_timer()
        if timer is not None and now >= timer:
            try:
                self.quic.handle_timer(now)
            except Exception as exc:
                self._engine_failed("its timer", exc)
        self._process()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """Datagrams to transmit now, each with its destination address."""
        if self._abandoned:
            return []
        self._name_alpn_sides()
        try:
            out: list[tuple[bytes, Any]] = self.quic.datagrams_to_send(now=now)
        except Exception as exc:
            self._engine_failed("sending", exc)
            return []
        for data, _ in out:
            self.stats.datagrams_sent += 1
            self.stats.bytes_sent += len(data)
        self._process()
        return out

    # -- user verbs ---------------------------------------------------------------------------

    def check_open(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing:
            raise ConnectionClosedLocally("the connection was closed by this side")

    def send_message(self, data: bytes) -> int:
        """Open a stream, write ``data`` and FIN. Returns the stream id."""
        self.check_open()
        payload = _payload(data)
        stream_id: int = self.quic.get_next_available_stream_id()
        self._streams[stream_id] = _Stream(local=True, claimed=False, message=True)
        self.quic.send_stream_data(stream_id, payload, end_stream=True)
        self._streams[stream_id].write_ended = True
        self.stats.messages_sent += 1
        return stream_id

    def next_message(self) -> bytes | None:
        """The next peer stream ended by FIN (see the module docstring), or None."""
        if not self._messages:
            return None
        stream_id = next(iter(self._messages))
        del self._messages[stream_id]
        self._incoming.pop(stream_id, None)
        state = self._streams.pop(stream_id)
        data = bytes(state.data)
        self._release(state)
        if not state.local and _bidirectional(stream_id) and not state.write_ended:
            self._end_write(stream_id)
        self.stats.messages_received += 1
        return data

    def open_stream(self) -> int:
        """Open a bidirectional stream for direct use; returns its id."""
        self.check_open()
        stream_id: int = self.quic.get_next_available_stream_id()
        self._streams[stream_id] = _Stream(local=True, claimed=True, message=False)
        self.stats.streams_opened += 1
        return stream_id

    def accept_stream(self) -> int | None:
        """The next peer-opened stream not yet taken, claimed for direct use, or None."""
        if not self._incoming:
            return None
        stream_id = next(iter(self._incoming))
        del self._incoming[stream_id]
        self._messages.pop(stream_id, None)
        self._streams[stream_id].claimed = True
        self.stats.streams_accepted += 1
        return stream_id

    def write_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        """Write on a claimed stream (and FIN when ``end``)."""
        self.check_open()
        state = self._streams.get(stream_id)
        if state is None or state.write_ended:
            raise UsageError(f"stream {stream_id} was ended for writing")
        if state.error is not None:
            raise state.error
        if not _bidirectional(stream_id) and not state.local:
            raise UsageError(f"stream {stream_id} is the peer's unidirectional stream")
        self.quic.send_stream_data(stream_id, bytes(data), end_stream=end)
        if end:
            state.write_ended = True
            self._forget_if_done(stream_id, state)

    def read_stream(self, stream_id: int) -> tuple[bytes, bool] | None:
        """(bytes so far, ended) of a claimed stream once something is there, else None.

        Raises the stream's :class:`StreamError` if it was reset or refused, and the
        connection's error once it has ended."""
        state = self._streams.get(stream_id)
        if state is None:
            return b"", True
        if state.error is not None:
            if state.peer_done:
                self._streams.pop(stream_id, None)
            raise state.error
        if state.data or state.ended:
            data = bytes(state.data)
            self._release(state)
            if state.ended:
                self._forget_if_done(stream_id, state, read_done=True)
            return data, state.ended
        if self.error is not None:
            raise self.error
        return None

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abandon a claimed stream both ways (RESET_STREAM and STOP_SENDING)."""
        state = self._streams.pop(stream_id, None)
        if state is None or self.error is not None:
            return
        self._release(state)
        self._abort(stream_id, error_code, state)

    def forget_stream(self, stream_id: int) -> None:
        """A claimed stream its user is done with (read to FIN and wrote FIN, or abandoned)."""
        state = self._streams.get(stream_id)
        if state is not None and state.ended and state.write_ended:
            self._streams.pop(stream_id, None)
            self._release(state)

    def send_datagram(self, data: bytes) -> None:
        """Send an RFC 9221 datagram (when the peer agreed to receive them)."""
        self.check_open()
        payload = _payload(data)
        if not self.settings.datagrams:
            raise UsageError("datagrams were not asked for: pass datagrams=True")
        self.quic.send_datagram_frame(payload)
        self.stats.quic_datagrams_sent += 1

    def next_datagram(self) -> bytes | None:
        if not self._datagrams:
            return None
        data = self._datagrams.popleft()
        self._buffered -= len(data)
        return data

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close the connection (CONNECTION_CLOSE with this application code and reason)."""
        if self._closing or self.error is not None:
            return
        self._closing = True
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self._end(ConnectionClosedLocally("the connection was closed by this side"))

    # -- state ------------------------------------------------------------------------------------

    def has_message(self) -> bool:
        return bool(self._messages)

    def has_incoming(self) -> bool:
        return bool(self._incoming)

    def has_datagram(self) -> bool:
        return bool(self._datagrams)

    @property
    def closed(self) -> bool:
        return self.error is not None

    @property
    def pending(self) -> int:
        """Messages ready to be taken by ``next_message``."""
        return len(self._messages)

    @property
    def finished(self) -> bool:
        """Over, and aioquic needs no more timers: the front end may forget it."""
        return self.error is not None and (self._abandoned or self.quic.get_timer() is None)

    def statistics(self) -> QuicStatistics:
        stats = dataclasses.replace(self.stats, drops=collections.Counter(self.stats.drops))
        stats.buffered_bytes = self._buffered
        return stats

    # -- events -----------------------------------------------------------------------------

    def _process(self) -> None:
        quic = self.quic
        hook = self.on_event
        while (event := quic.next_event()) is not None:
            if hook is not None and hook(event):
                continue
            if isinstance(event, events.StreamDataReceived):
                self._on_stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.DatagramFrameReceived):
                self._on_datagram(event.data)
            elif isinstance(event, events.HandshakeCompleted):
                self.handshake_complete = True
                self.alpn_protocol = event.alpn_protocol
                self.session_resumed = event.session_resumed
                self._kept = None
            elif isinstance(event, events.ProtocolNegotiated):
                self.alpn_protocol = event.alpn_protocol
            elif isinstance(event, events.StreamReset):
                self._on_reset(event.stream_id, event.error_code, "reset (RESET_STREAM)")
            elif isinstance(event, events.StopSendingReceived):
                self.touched.add(event.stream_id)
                state = self._streams.get(event.stream_id)
                if state is not None and not state.write_ended:
                    state.write_ended = True
                    if state.claimed and state.error is None:
                        state.error = StreamError(
                            f"the peer stopped reading stream {event.stream_id} "
                            f"(STOP_SENDING, code {event.error_code})",
                            error_code=event.error_code,
                        )
            elif isinstance(event, events.ConnectionIdIssued):
                self.cid_events.append((True, event.connection_id))
            elif isinstance(event, events.ConnectionIdRetired):
                self.cid_events.append((False, event.connection_id))
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(event.error_code, event.frame_type, event.reason_phrase, None)
        if self.error is None:
            pending = getattr(quic, "_close_event", None)
            if pending is not None:
                state = getattr(getattr(quic, "_state", None), "name", None)
                if state in ("CLOSING", "DRAINING"):
                    self._terminated(
                        pending.error_code,
                        pending.frame_type,
                        pending.reason_phrase,
                        state == "DRAINING",
                    )

    def _on_stream_data(self, stream_id: int, data: bytes, end: bool) -> None:
        self.touched.add(stream_id)
        state = self._streams.get(stream_id)
        limits = self.settings.limits
        if state is None:
            local = (stream_id & 1) == (1 if self.server else 0)
            if local:
                return  # a stream we already forgot: nothing can take its bytes
            state = _Stream(local=False, claimed=False, message=False)
            self._streams[stream_id] = state
            if len(self._incoming) + len(self._messages) + len(self._datagrams) >= (
                limits.max_queued_messages
            ):
                self._refuse(stream_id, state, "too_many_streams", "too many streams wait")
                return
            self._incoming[stream_id] = None
        if state.error is not None:  # refused or reset: its bytes are not kept
            if end:
                state.peer_done = True
                if not state.claimed:
                    self._streams.pop(stream_id, None)
            return
        if state.size + len(data) > self.settings.max_stream_bytes:
            self._refuse(
                stream_id,
                state,
                "stream_too_large",
                f"stream {stream_id} passed max_stream_bytes "
                f"({self.settings.max_stream_bytes} bytes)",
            )
            return
        if self._buffered + len(data) > limits.max_queued_bytes:
            self._refuse(
                stream_id,
                state,
                "connection_buffer_full",
                f"the connection already holds limits.max_queued_bytes "
                f"({limits.max_queued_bytes} bytes) unread",
            )
            return
        state.data += data
        state.size += len(data)
        self._buffered += len(data)
        if end:
            state.ended = True
            if not state.claimed:
                if state.size == 0:
                    self._incoming.pop(stream_id, None)
                    if state.local or state.write_ended or not _bidirectional(stream_id):
                        self._streams.pop(stream_id, None)
                    else:
                        self._end_write(stream_id)
                        self._streams.pop(stream_id, None)
                    return
                if state.local and not state.message:
                    return
                self._messages[stream_id] = None

    def _on_datagram(self, data: bytes) -> None:
        limits = self.settings.limits
        if self._buffered + len(data) > limits.max_queued_bytes:
            self.stats.drops["connection_buffer_full"] += 1
            return
        if len(self._incoming) + len(self._messages) + len(self._datagrams) >= (
            limits.max_queued_messages
        ):
            self.stats.drops["queue_full"] += 1
            return
        self._datagrams.append(data)
        self._buffered += len(data)
        self.stats.quic_datagrams_received += 1

    def _on_reset(self, stream_id: int, code: int, how: str) -> None:
        self.touched.add(stream_id)
        state = self._streams.get(stream_id)
        if state is None:
            return
        self._release(state)
        state.peer_done = True
        if not state.claimed:
            self._streams.pop(stream_id, None)
            self._incoming.pop(stream_id, None)
            self._messages.pop(stream_id, None)
            if state.error is None:
                self.stats.drops["stream_reset_by_peer"] += 1
            return
        if state.error is None:
            state.error = StreamError(
                f"the peer {how} stream {stream_id} with code {code}", error_code=code
            )

    def _refuse(self, stream_id: int, state: _Stream, reason: str, words: str) -> None:
        self.stats.drops[reason] += 1
        self._release(state)
        self._incoming.pop(stream_id, None)
        self._messages.pop(stream_id, None)
        state.error = StreamError(
            f"stream {stream_id} refused: {words}", error_code=_STREAM_REFUSED
        )
        self._abort(stream_id, _STREAM_REFUSED, state)
        if not state.claimed:
            state.data = bytearray()

    def _abort(self, stream_id: int, code: int, state: _Stream) -> None:
        readable = not state.local or _bidirectional(stream_id)
        if readable and not state.ended:
            with contextlib.suppress(ValueError, AssertionError):
                self.quic.stop_stream(stream_id, code)
        writable = state.local or _bidirectional(stream_id)
        if writable and not state.write_ended:
            state.write_ended = True
            with contextlib.suppress(ValueError, AssertionError):
                self.quic.reset_stream(stream_id, code)

    def _end_write(self, stream_id: int) -> None:
        with contextlib.suppress(ValueError, AssertionError):
            self.quic.send_stream_data(stream_id, b"", end_stream=True)

    def _release(self, state: _Stream) -> None:
        self._buffered -= len(state.data)
        state.data = bytearray()

    def _forget_if_done(self, stream_id: int, state: _Stream, read_done: bool = False) -> None:
        if state.write_ended and state.ended and not state.data:
            self._streams.pop(stream_id, None)

    # -- the end ----------------------------------------------------------------------------

    def _end(self, error: DTLSError) -> None:
        if self.error is None:
            self.error = error

    def _terminated(
        self, code: int, frame_type: int | None, reason: str, by_peer: bool | None
    ) -> None:
        if self.error is not None:
            return
        self._end(self._classify(code, frame_type, reason, by_peer))

    def _classify(
        self, code: int, frame_type: int | None, reason: str, by_peer: bool | None
    ) -> DTLSError:
        peer = "client" if self.server else "server"
        phrase = f" ({reason!r})" if reason else ""
        if reason == "Idle timeout" and by_peer is None:
            if not self.handshake_complete:
                return HandshakeTimeout(
                    f"QUIC handshake did not complete: the {peer} went silent "
                    f"(idle timeout)"
                )
            return ConnectionLost(
                f"the {peer} went silent past the idle timeout (vanished?)",
                error_code=code,
                reason_phrase=reason,
            )
        if _CRYPTO_ERROR <= code < _CRYPTO_ERROR + 256:
            alert_code = code - _CRYPTO_ERROR
            alert = _ALERTS.get(alert_code, f"alert {alert_code}")
            if alert_code == _NO_APPLICATION_PROTOCOL:
                return HandshakeFailure(self._alpn_words(reason, by_peer), alert=alert)
            if alert_code in _CERTIFICATE_ALERTS:
                if by_peer:
                    return CertificateVerificationError(
                        f"the {peer} rejected our certificate: {alert}{phrase}",
                        VerificationReason.REJECTED_BY_PEER,
                        alert=alert,
                    )
                return CertificateVerificationError(
                    f"the {peer}'s certificate was rejected: {reason or alert}",
                    _verification_reason(reason),
                )
            side = f"the {peer}" if by_peer else "this side"
            return HandshakeFailure(
                f"QUIC TLS handshake aborted by {side}: {alert}{phrase}", alert=alert
            )
        if by_peer is False:
            # aioquic closed it for a protocol violation by the peer
            return ConnectionLost(
                f"the {peer} violated the QUIC protocol: error 0x{code:x}{phrase}",
                error_code=code,
                reason_phrase=reason,
            )
        kind = "application" if frame_type in (None, _APPLICATION_CLOSE_FRAME) else "transport"
        if not self.handshake_complete:
            return HandshakeFailure(
                f"the {peer} closed the connection during the handshake: {kind} error "
                f"0x{code:x}{phrase}"
            )
        if code == 0:
            return ConnectionClosedByPeer(
                f"the {peer} closed the connection (code 0{', ' + repr(reason) if reason else ''})",
                error_code=code,
                reason_phrase=reason,
            )
        return ConnectionLost(
            f"the {peer} closed the connection with {kind} error 0x{code:x}{phrase}",
            error_code=code,
            reason_phrase=reason,
        )

    def _alpn_words(self, reason: str, by_peer: bool | None) -> str:
        ours = list(self.quic.configuration.alpn_protocols or [])
        if self.server:
            offered = offered_alpn_untrusted(self._kept or [])
            theirs = repr(offered) if offered is not None else "(could not be read)"
            return f"no common ALPN protocol: the client offered {theirs}; we accept {ours!r}"
        found = _SERVER_ACCEPTS.search(reason)
        accepts = found.group(1) if found else "none of them (it did not say which it accepts)"
        return f"no common ALPN protocol: we offered {ours!r}; the server accepts {accepts}"

    def _name_alpn_sides(self) -> None:
        """Server: put both sides' protocols in the CONNECTION_CLOSE we are about to send for
        an ALPN mismatch, so that the client can name them too."""
        if not self.server or self._kept is None:
            return
        pending = getattr(self.quic, "_close_event", None)
        if (
            pending is None
            or pending.error_code != _CRYPTO_ERROR + _NO_APPLICATION_PROTOCOL
            or "server accepts" in pending.reason_phrase
        ):
            return
        offered = offered_alpn_untrusted(self._kept)
        ours = list(self.quic.configuration.alpn_protocols or [])
        phrase = f"no common ALPN protocol: client offered {offered!r}; server accepts {ours!r}"
        with contextlib.suppress(TypeError, AttributeError):  # another aioquic: words only
            self.quic._close_event = dataclasses.replace(pending, reason_phrase=phrase[:512])


def _verification_reason(reason: str) -> VerificationReason:
    text = reason.lower()
    if "doesn't match" in text or "hostname" in text:
        return VerificationReason.HOSTNAME_MISMATCH
    if "not valid yet" in text:
        return VerificationReason.NOT_YET_VALID
    if "no longer valid" in text or "expired" in text:
        return VerificationReason.EXPIRED
    if "issuer" in text or "self-signed" in text or "self signed" in text:
        return VerificationReason.UNKNOWN_ISSUER
    return VerificationReason.INVALID


def source_key(address: Any) -> tuple[str, bool]:
    """How limits count a client address: (IPv4 address or IPv6 /64 prefix, is a prefix)."""
    host = str(address[0]).split("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host, False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped), False
        return str(ipaddress.ip_network((ip, 64), strict=False)), True
    return str(ip), False


def _bidirectional(stream_id: int) -> bool:
    return not stream_id & 2


def _payload(data: Any) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidMessage(f"a message must be bytes-like, not {type(data).__name__}")
    payload = bytes(data)
    if not payload:
        raise InvalidMessage("an empty message cannot be sent (an empty stream is no message)")
    return payload


class QuicServerEngine:
    """Demultiplexes one server socket's datagrams to :class:`QuicSession` objects."""

    def __init__(
        self,
        make_configuration: Callable[[], Any],
        settings: QuicSettings,
        *,
        session_tickets: bool = True,
    ) -> None:
        self._make_configuration = make_configuration
        self.configuration = make_configuration()
        self.settings = settings
        self._by_cid: dict[bytes, QuicSession] = {}
        self._cids: dict[QuicSession, set[bytes]] = {}
        self._half_open: dict[QuicSession, None] = {}  # oldest first
        self._half_open_by_source: dict[str, dict[QuicSession, None]] = {}
        self._sessions_by_source: collections.Counter[str] = collections.Counter()
        self.evicted: list[QuicSession] = []
        """Half-open sessions evicted for a newcomer: the front end flushes each once (it has
        nothing to send, no timer) so that it forgets them too, then clears the list."""
        self.drops: collections.Counter[str] = collections.Counter()
        self.replies: list[tuple[bytes, Any]] = []
        self.new_sessions: list[QuicSession] = []
        self._tickets = TicketStore() if session_tickets else None
        self.handshakes_completed = 0
        self.handshakes_failed = 0

    @property
    def sessions(self) -> list[QuicSession]:
        return list(self._cids)

    def receive_datagram(self, data: bytes, address: Any, now: float) -> QuicSession | None:
        """Route one datagram; returns the session it went to (call its
        ``datagrams_to_send``), or None when it was dropped or answered here (``replies``)."""
        config = self.configuration
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=config.connection_id_length
            )
        except (ValueError, BufferReadError):
            self.drops["malformed_datagram"] += 1
            return None
        session = self._by_cid.get(header.destination_cid)
        if session is not None:
            session.receive_datagram(data, address, now)
            if session.cid_events:
                self._update_cids(session)
            if session.handshake_complete and session in self._half_open:
                self._leave_half_open(session)
            return session
        if header.version is None:
            self.drops["unknown_connection"] += 1
            return None
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            self.drops["unexpected_version_negotiation"] += 1
            return None
        if header.version not in config.supported_versions:
            self.drops["unsupported_version"] += 1
            if len(data) >= 1200 and len(self.replies) < 64:
                self.replies.append(
                    (
                        encode_quic_version_negotiation(
                            source_cid=header.destination_cid,
                            destination_cid=header.source_cid,
                            supported_versions=config.supported_versions,
                        ),
                        address,
                    )
                )
            return None
        if header.packet_type != QuicPacketType.INITIAL:
            self.drops["unknown_connection"] += 1
            return None
        if len(data) < 1200:
            self.drops["initial_too_small"] += 1
            return None
        limits = self.settings.limits
        if len(self._cids) >= limits.max_sessions:
            self.drops["max_sessions"] += 1
            return None
        source, is_prefix = source_key(address)
        if self._sessions_by_source[source] >= limits.max_sessions_per_address:
            self.drops["max_sessions_per_address"] += 1
            return None
        theirs = self._half_open_by_source.get(source, {})
        cap = (
            limits.max_half_open_per_ipv6_prefix if is_prefix else limits.max_half_open_per_address
        )
        if len(theirs) >= cap:
            self.drops[
                "max_half_open_per_ipv6_prefix" if is_prefix else "max_half_open_per_address"
            ] += 1
            return None
        if len(self._half_open) >= limits.max_half_open and not self._evict_for(len(theirs)):
            self.drops["max_half_open"] += 1
            return None
        tickets = self._tickets
        connection = QuicConnection(  # raises only for a bad configuration, checked already
            configuration=config,
            original_destination_connection_id=header.destination_cid,
            session_ticket_fetcher=tickets.pop if tickets is not None else None,
            session_ticket_handler=tickets.add if tickets is not None else None,
        )
        session = QuicSession(connection, self.settings, server=True, now=now, keep_handshake=True)
        self._cids[session] = set()
        session.source = source
        self._sessions_by_source[source] += 1
        self._half_open[session] = None
        self._half_open_by_source.setdefault(source, {})[session] = None
        self._register(session, header.destination_cid)
        self._register(session, connection.host_cid)
        self.new_sessions.append(session)
        session.receive_datagram(data, address, now)
        self._update_cids(session)
        return session

    def _register(self, session: QuicSession, cid: bytes) -> None:
        self._by_cid[cid] = session
        self._cids[session].add(cid)

    def _update_cids(self, session: QuicSession) -> None:
        if not session.cid_events:
            return
        for issued, cid in session.cid_events:
            if issued:
                self._register(session, cid)
            elif self._by_cid.get(cid) is session:
                del self._by_cid[cid]
                self._cids[session].discard(cid)
        session.cid_events.clear()

    def _leave_half_open(self, session: QuicSession) -> None:
        self._half_open.pop(session, None)
        held = self._half_open_by_source.get(session.source)
        if held is not None:
            held.pop(session, None)
            if not held:
                del self._half_open_by_source[session.source]

    def _evict_for(self, newcomer_holds: int) -> bool:
        """The half-open pool is full: evict the oldest handshake of the source holding the
        most, when it holds at least two more than the newcomer's source (RELIABILITY rule 16:
        no handful of sources may hold every slot). Whether a slot was freed."""
        biggest = max(self._half_open_by_source.values(), key=len, default={})
        if len(biggest) < newcomer_holds + 2:
            return False
        victim = next(iter(biggest))
        victim.abandon(
            f"handshake evicted from a full half-open pool: its source {victim.source} held "
            f"the most half-open handshakes ({len(biggest)})"
        )
        self.drops["half_open_evicted"] += 1
        self.forget(victim)
        self.evicted.append(victim)
        return True

    def forget(self, session: QuicSession) -> None:
        """Remove a finished session and all its connection IDs (idempotent)."""
        if session not in self._cids:
            return
        self._leave_half_open(session)
        self._sessions_by_source[session.source] -= 1
        if self._sessions_by_source[session.source] <= 0:
            del self._sessions_by_source[session.source]
        for cid in self._cids.pop(session, ()):
            if self._by_cid.get(cid) is session:
                del self._by_cid[cid]
        self.drops.update(session.stats.drops)
