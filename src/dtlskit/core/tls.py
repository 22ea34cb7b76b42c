"""One TLS 1.2/1.3 connection over a byte stream (TCP), sans I/O: bytes and ``now`` in; bytes,
events and deadlines out.

Theory of operation
-------------------
OpenSSL runs TLS (``TLS_METHOD``, TLS 1.2 and 1.3) on a pair of memory BIOs, exactly as the DTLS
engine (:mod:`dtlskit.core.connection`) runs DTLS; the context comes from the same factory
(:meth:`DTLSConfiguration.context(server, tls=True) <dtlskit.config.DTLSConfiguration.context>`),
so certificates, trust, verify modes, host-name checks, PSK, SNI, ALPN, key log and session
tickets are configured with one vocabulary, and failures are translated by the same
:mod:`dtlskit.core._errors`.

A stream needs far less than datagrams: TCP retransmits and orders, so there is no flight
bookkeeping, no MTU and no cookie. What this module adds around OpenSSL:

*Stream or messages.* By default every :meth:`receive_data` call that decrypts application
bytes yields one :class:`~dtlskit.core.events.MessageReceived` with all of them (what arrived, as
``socket.recv`` returns it). With ``framing="length-prefixed"`` each message travels behind a
4-byte big-endian length and comes out whole; a length above ``max_message_size`` ends the
connection (:class:`~dtlskit.exceptions.ConnectionLost` naming the size), so a peer cannot make
us buffer more than that.

*Truncation.* A TCP FIN (:meth:`receive_eof`) that comes before the peer's close_notify is an
attack or a crash: :class:`~dtlskit.exceptions.ConnectionLost` says the stream was truncated.

*TLS 1.3 tickets* arrive after the handshake (RFC 8446 §4.6.1), in records read like any other.
After every read the engine checks whether OpenSSL replaced the connection's session and then
reports :class:`SessionTicketReceived`; :attr:`session` always gives the newest one.

*Deadlines.* The handshake must complete within ``handshake_timeout``; an established connection
that hears nothing for ``idle_timeout`` (when set) ends with ConnectionLost. Both are returned
by :meth:`get_timer` in the caller's clock.

*Fields that make no sense over TCP* (``mtu``, ``cookie_secret``, ``srtp_profiles``, the
retransmission timers, ``Limits.hello_verify_per_second``/``first_flight_timeout``) are refused
with a :class:`~dtlskit.exceptions.ConfigurationError` naming the field.

The contract for callers: after any method that takes ``now``, and after :meth:`send` and
:meth:`close`, write :meth:`data_to_send` to the stream, drain :meth:`next_event`, and re-arm a
timer for :meth:`get_timer`, calling :meth:`handle_timer` when it expires. Feed every chunk the
stream returns to :meth:`receive_data` and its end to :meth:`receive_eof`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

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
    InvalidArgument,
    InvalidMessage,
    MessageTooLarge,
    UsageError,
    VerificationReason,
)
from . import _bindings, _errors
from . import events as ev
from .connection import format_address
from .context import offers_only_psk
from .inbox import ByteBudget
from .session import NegotiatedSession, Session
from .state import State

if TYPE_CHECKING:
    from ..config import DTLSConfiguration

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FRAMINGS",
    "Framing",
    "SessionTicketReceived",
    "TLSConnection",
    "TLSStatistics",
    "check_tls_config",
]

Address = tuple[Any, ...]
Framing = Literal["stream", "length-prefixed"]
FRAMINGS = ("stream", "length-prefixed")

#: Largest message accepted or sent with ``framing="length-prefixed"`` unless told otherwise.
DEFAULT_MAX_MESSAGE_SIZE = 1_048_576
_MAX_FRAME = 2**31 - 1
_READ_SIZE = 65536
_HEADER = 4


_DEFAULTS: dict[tuple[type, str], Any] = {}
_checked: object = None  # the configuration check_tls_config passed last


def _default(instance: Any, name: str) -> Any:
    """The default of dataclass field ``name`` of ``instance``'s class (looked up once per
    class and name: a server checks its configuration for every connection)."""
    key = (type(instance), name)
    try:
        return _DEFAULTS[key]
    except KeyError:
        pass
    for item in dataclasses.fields(instance):
        if item.name == name:
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()  # a fresh one each time, never cached
            _DEFAULTS[key] = item.default
            return item.default
    raise AttributeError(name)  # pragma: no cover - names are fixed here


@dataclass(frozen=True)
class SessionTicketReceived(ev.Event):
    """Client: the server sent a session ticket after the handshake (TLS 1.3); the engine's
    :attr:`TLSConnection.session` now resumes with it."""


@dataclass
class TLSStatistics:
    """Counters of one TLS connection. A snapshot is returned by ``statistics()``."""

    bytes_sent: int = 0
    """Bytes written to the stream (TLS records)."""
    bytes_received: int = 0
    """Bytes read from the stream (TLS records)."""
    messages_sent: int = 0
    """``send`` calls (stream) or framed messages sent."""
    messages_received: int = 0
    """Chunks delivered (stream) or framed messages received."""
    tickets_received: int = 0
    """TLS 1.3 session tickets that arrived after the handshake (clients)."""
    handshake_seconds: float | None = None
    """Time from the start of the handshake to its completion, in the caller's clock."""
    drops: dict[str, int] = field(default_factory=dict)
    """Data refused, by reason (kept for the shape of the DTLS statistics)."""

    def copy(self) -> TLSStatistics:
        """An independent snapshot."""
        return TLSStatistics(**{**self.__dict__, "drops": dict(self.drops)})


def check_tls_config(config: DTLSConfiguration) -> DTLSConfiguration:
    """Refuse the settings that only datagrams have; return ``config``.

    Raises :class:`ConfigurationError` naming the first such field that differs from its
    default (``mtu``, ``cookie_secret``, ``srtp_profiles``, ``initial_retransmit_timeout``,
    ``max_retransmit_timeout``, ``limits.hello_verify_per_second``,
    ``limits.first_flight_timeout``, ``limits.max_half_open_per_ipv6_prefix``).
    """
    global _checked
    if config is _checked:  # a server checks its one configuration for every connection
        return config
    if not dataclasses.is_dataclass(config) or not hasattr(config, "limits"):
        raise ConfigurationError(f"config must be a DTLSConfiguration, not {config!r}")
    for name in ("mtu", "cookie_secret", "initial_retransmit_timeout", "max_retransmit_timeout"):
        if getattr(config, name) != _default(config, name):
            raise ConfigurationError(
                f"{name} is a DTLS setting with no meaning over TCP: leave it at its default "
                "for a TLS endpoint"
            )
    if config.srtp_profiles:
        raise ConfigurationError(
            "srtp_profiles (DTLS-SRTP, RFC 5764) exist only over DTLS: drop them for TLS"
        )
    for name in ("hello_verify_per_second", "first_flight_timeout"):
        if getattr(config.limits, name) != _default(config.limits, name):
            raise ConfigurationError(
                f"limits.{name} is a DTLS setting with no meaning over TCP: leave it at its "
                "default for a TLS endpoint"
            )
    _checked = config  # frozen: what passed once passes again
    return config


class TLSConnection(NegotiatedSession):
    """The engine of one TLS connection. See the module docstring for the contract.

    ``framing``: ``"stream"`` (default; each delivery is what arrived) or
    ``"length-prefixed"`` (whole messages behind a 4-byte big-endian length, up to
    ``max_message_size`` bytes each, both ways). A client may pass ``session=`` to resume.
    """

    __slots__ = (
        "_config",
        "_events",
        "_frame",
        "_framing",
        "_handle",
        "_handshake_deadline",
        "_handshake_started",
        "_hib",
        "_idle_deadline",
        "_idle_timeout",
        "_last_address",
        "_last_session",
        "_max_message",
        "_outgoing",
        "_server",
        "_ssl",
        "_stats",
        "_step",
        "budget",
        "error",
        "on_data",
        "peer_address",
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
        framing: Framing = "stream",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        check_tls_config(config)
        if framing not in FRAMINGS:
            raise ConfigurationError(
                f"framing must be one of {', '.join(map(repr, FRAMINGS))}, not {framing!r}"
            )
        if (
            not isinstance(max_message_size, int)
            or isinstance(max_message_size, bool)
            or not 1 <= max_message_size <= _MAX_FRAME
        ):
            raise ConfigurationError(
                f"max_message_size must be from 1 to {_MAX_FRAME} bytes, not {max_message_size!r}"
            )
        self._config = config
        self._server = server
        self.peer_address = peer_address
        ctx = context if context is not None else config.context(server, tls=True)
        self._ssl = SSL.Connection(ctx, None)
        helpers = _bindings.has_helpers(ctx)  # asked once: the context does not change
        self._step = _bindings.do_handshake if helpers else _bindings.do_handshake_unchecked
        self._hib = None  # TLS sessions never hibernate (NegotiatedSession's accessors ask)
        self._handle: Any = None  # the accelerator's handle, once established
        self._verify_reason: str | None = None
        self._verify_code: int | None = None
        self._verify_timestamp: int | None = None
        self._clock_failure: ConfigurationError | None = None
        name = server_hostname or config.server_hostname
        self._setup_verification(name)
        self._setup_negotiation(
            name,
            config.alpn_protocols,
            session,
            None if server else config.verification_policy(name),
        )
        self._framing: Framing = framing
        self._max_message = max_message_size
        self._frame = bytearray()
        self.state: State = State.INITIAL
        self.error: DTLSError | None = None
        self._events: list[ev.Event] = []
        self._outgoing: list[bytes] = []
        self._stats = TLSStatistics()
        self._handshake_started: float | None = None
        self._handshake_deadline: float | None = None
        self._idle_timeout = config.idle_timeout
        self._idle_deadline: float | None = None
        self._last_session: Any = None
        self._last_address = 0
        self.budget: ByteBudget | None = None
        """A server's byte budget (``limits.max_buffered_bytes``) that partial framed messages
        of all its connections are charged to; past it the connection whose partial message
        would pass it ends (``ConnectionLost``, server buffer full)."""
        self.on_data: Callable[[bytes], object] | None = None
        """Called with each delivery (a chunk, or a framed message) instead of a
        :class:`~dtlskit.core.events.MessageReceived` event (a front end's fast path)."""

    # -- set-up ---------------------------------------------------------------------------------

    # -- public verbs ---------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Client: start the handshake (the ClientHello). Then call :meth:`data_to_send`."""
        if self._server or self.state is not State.INITIAL:
            raise UsageError("connect() is for a client engine that has not started")
        self._ssl.set_connect_state()
        self._begin(now)
        self._advance_handshake(now)

    def start_server(self, now: float) -> None:
        """Server: wait for the client's ClientHello (the deadline starts now). Then feed the
        stream to :meth:`receive_data`."""
        if not self._server or self.state is not State.INITIAL:
            raise UsageError("start_server() is for a server engine that has not started")
        self._ssl.set_accept_state()
        self._begin(now)
        if self._clock_failure is not None:
            self._terminate(
                HandshakeFailure(f"handshake with {self._peer_text} refused: {self._clock_failure}")
            )

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the stream. Then write :meth:`data_to_send`, drain events and
        re-arm the timer."""
        state = self.state
        if state is State.ESTABLISHED and data:  # the common case, first
            self._stats.bytes_received += len(data)
            self._read_application_data(now, data)
            return
        if state in (State.CLOSED, State.TERMINATED):
            return
        if state is State.INITIAL:
            raise UsageError("receive_data() before connect() or start_server()")
        if not data:
            return
        self._stats.bytes_received += len(data)
        _bindings.stream_feed(self._ssl, bytes(data))
        self._advance_handshake(now)
        if self.state is State.ESTABLISHED:
            self._read_application_data(now, b"")

    def receive_eof(self, now: float) -> None:
        """The stream ended (the peer's FIN, or a reset). After a close_notify this changes
        nothing; before one the connection ends with :class:`ConnectionLost` (truncated)."""
        if self.state in (State.CLOSED, State.TERMINATED):
            return
        if self.state is State.HANDSHAKING:
            self._terminate(
                HandshakeFailure(
                    f"{self._peer_text} closed the TCP connection during the handshake"
                )
            )
            return
        self._terminate(
            ConnectionLost(
                f"{self._peer_text} closed the TCP connection without close_notify: the stream "
                "was truncated (data may be missing)"
            )
        )

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` (stream: any length; framed: one message up to
        ``max_message_size``). Then call :meth:`data_to_send`. Raises :class:`InvalidMessage`
        for empty or non-bytes data, :class:`MessageTooLarge` for a framed message above the
        limit, the session's error once it ended."""
        payload = _check_data(data)
        if self.state is not State.ESTABLISHED:
            if self.error is not None:
                raise self.error
            raise ConnectionLost(f"the connection to {self._peer_text} is not established yet")
        if self._framing == "length-prefixed":
            if len(payload) > self._max_message:
                raise MessageTooLarge(len(payload), self._max_message)
            payload = len(payload).to_bytes(_HEADER, "big") + payload
        records = _accel.stream_seal(self._handle, payload)  # one call: encrypt, take records
        if type(records) is not bytes:
            raise self._write_failed(int(records))
        self._stats.messages_sent += 1
        if records:
            self._outgoing.append(records)

    def _write_failed(self, code: int) -> DTLSError:
        """End the session for the error ``stream_seal`` returned; the error to raise."""
        try:
            _accel.raise_error(self._ssl, code)  # at once: the error queue is this thread's
        except SSL.Error as exc:
            self._collect_output()
            error = _errors.session_error(exc, peer=self._peer_text)
            error.__cause__ = exc
        else:  # pragma: no cover - raise_error always raises
            error = ConnectionLost(f"writing to {self._peer_text} failed")
        self._terminate(error)
        return error

    def close(self) -> None:
        """Send close_notify (once) and end the session. Idempotent."""
        if self.state in (State.CLOSED, State.TERMINATED):
            return
        if self.state is State.ESTABLISHED:
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()
            self._collect_output()
        self._finish(State.CLOSED)
        self.error = ConnectionClosedLocally("the connection was closed locally")
        self._events.append(ev.SessionClosed(by_peer=False))

    def abort(self, error: DTLSError) -> None:
        """End the session at once with ``error`` (nothing is sent). Idempotent."""
        self._terminate(error)

    def data_to_send(self) -> bytes:
        """Bytes to write to the stream, in order (empty when there are none)."""
        out = self._outgoing
        if not out:
            return b""
        self._outgoing = []
        data = out[0] if len(out) == 1 else b"".join(out)
        self._stats.bytes_sent += len(data)
        return data

    def drain(self) -> tuple[bytes, Sequence[ev.Event]]:
        """:meth:`data_to_send` and every event :meth:`next_event` would return, in one call
        (a front end's wake-up step)."""
        data = self.data_to_send() if self._outgoing else b""
        events = self._events
        if not events:
            return data, ()
        self._events = []
        return data, events

    def has_events(self) -> bool:
        """Whether :meth:`next_event` has anything."""
        return bool(self._events)

    def has_work(self) -> bool:
        """Whether :meth:`data_to_send` or :meth:`next_event` have anything."""
        return bool(self._events or self._outgoing)

    def next_event(self) -> ev.Event | None:
        """The oldest event not yet returned, or None."""
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        """The absolute deadline (caller's clock) at which to call :meth:`handle_timer`."""
        if self._handshake_deadline is not None:
            return self._handshake_deadline
        return self._idle_deadline

    def handle_timer(self, now: float) -> None:
        """Act on a deadline that passed (handshake, idle). Then send and drain events."""
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self._terminate(
                HandshakeTimeout(
                    f"handshake with {self._peer_text} did not complete within "
                    f"{self._config.handshake_timeout:g} s"
                )
            )
            return
        if self._idle_deadline is not None and now >= self._idle_deadline:
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()
            self._collect_output()
            self._terminate(
                ConnectionLost(
                    f"no data from {self._peer_text} for {self._idle_timeout or 0:g} s (idle)"
                )
            )

    def set_idle_timeout(self, seconds: float | None, now: float) -> None:
        """Use ``seconds`` of silence (None: never) as this connection's idle limit, from now."""
        self._idle_timeout = seconds
        if self.state is State.ESTABLISHED:
            self._idle_deadline = None if seconds is None else now + seconds

    def statistics(self) -> TLSStatistics:
        """A snapshot of this connection's counters."""
        return self._stats.copy()

    # -- properties -----------------------------------------------------------------------------

    @property
    def config(self) -> DTLSConfiguration:
        """The configuration this engine was built from."""
        return self._config

    @property
    def framing(self) -> Framing:
        """``"stream"`` or ``"length-prefixed"``."""
        return self._framing

    @property
    def max_message_size(self) -> int:
        """Largest framed message accepted or sent (``framing="length-prefixed"``)."""
        return self._max_message

    @property
    def partial_message_bytes(self) -> int:
        """Bytes of a framed message received in part (``framing="length-prefixed"``)."""
        return len(self._frame)

    @property
    def is_server(self) -> bool:
        """Whether this engine plays the server role."""
        return self._server

    @property
    def handshake_completed(self) -> bool:
        """Whether the handshake ever completed (stays True after the session ends)."""
        return self._stats.handshake_seconds is not None

    @property
    def version(self) -> str | None:
        """Negotiated protocol version (``"TLSv1.3"``, ``"TLSv1.2"``), once established."""
        if self.state is State.INITIAL:
            return None
        version = self._ssl.get_protocol_version_name()
        return str(version) if version and version != "Unknown" else None

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite name, once established."""
        name = self._ssl.get_cipher_name()
        return str(name) if name else None

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        return _bindings.session_reused(self._ssl)

    @property
    def peer_certificate(self) -> Any:
        """The peer's certificate as a ``cryptography.x509.Certificate``, or None."""
        return self._ssl.get_peer_certificate(as_cryptography=True)

    @property
    def peer_certificate_chain(self) -> list[Any]:
        """The chain the peer sent, leaf first, as ``cryptography`` certificates."""
        chain = list(self._ssl.get_peer_cert_chain(as_cryptography=True) or [])
        leaf = self.peer_certificate
        if leaf is not None and (not chain or chain[0] != leaf):
            chain.insert(0, leaf)
        return chain

    @property
    def ssl_object(self) -> SSL.Connection:
        """The underlying pyOpenSSL connection (for advanced use; do not drive its I/O)."""
        return self._ssl

    @property
    def _peer_text(self) -> str:
        return format_address(self.peer_address)

    # -- internals ------------------------------------------------------------------------------

    def _begin(self, now: float) -> None:
        self.state = State.HANDSHAKING
        self._handshake_started = now
        self._handshake_deadline = now + self._config.handshake_timeout

    def _advance_handshake(self, now: float) -> None:
        try:
            complete = self._step(self._ssl)
        except SSL.Error as exc:
            self._collect_output()  # the alert OpenSSL queued, if any
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
            return
        self._collect_output()
        if complete:
            self._handshake_completed(now)

    def _handshake_completed(self, now: float) -> None:
        config = self._config
        if not self._server:
            verifying = config.effective_verify_mode(False) != ssl.CERT_NONE
            if self.session_reused and verifying and _bindings.verify_result(self._ssl) != 0:
                self._terminate(
                    CertificateVerificationError(
                        f"the resumed session with {self._peer_text} was made without "
                        "verifying the server certificate; connect without it",
                        reason=VerificationReason.UNVERIFIED_SESSION,
                    )
                )
                return
            if (
                not verifying
                and config.psk is not None
                and offers_only_psk(config.effective_ciphers(False))
                and self.peer_certificate is not None
            ):
                # A PSK-only client verifies no certificate: a TLS 1.3 server that ignored our
                # PSK and authenticated with a certificate instead is not the peer we trust.
                self._terminate(
                    HandshakeFailure(
                        f"{self._peer_text} did not accept our PSK and presented a certificate "
                        "instead, which this PSK-only client does not verify"
                    )
                )
                return
        self.state = State.ESTABLISHED
        self._handshake_deadline = None
        self._stats.handshake_seconds = (
            now - self._handshake_started if self._handshake_started is not None else 0.0
        )
        if self._idle_timeout is not None:
            self._idle_deadline = now + self._idle_timeout
        if not self._server:  # a client watches for tickets that replace its session
            self._last_session = _bindings.get_session(self._ssl)
            self._last_address = _bindings.session_address_of(self._last_session)
        self._handle = _accel.make_handle(self._ssl)
        self._events.append(
            ev.HandshakeCompleted(
                version=self.version or "TLS",
                cipher=self.cipher or "",
                session_reused=self.session_reused,
            )
        )

    def _read_application_data(self, now: float, data: bytes) -> None:
        """Feed ``data`` (established) and take every record OpenSSL can decrypt now, and what
        it wrote meanwhile, in one accelerator call."""
        plaintext, code, output = _accel.stream_open(self._handle, data)
        error: SSL.Error | None = None
        if code != _accel.WANT_READ and code != _accel.ZERO_RETURN:
            try:
                _accel.raise_error(self._ssl, code)  # at once: the error queue is this thread's
            except SSL.ZeroReturnError:  # pragma: no cover - reported as ZERO_RETURN above
                code = _accel.ZERO_RETURN
            except SSL.Error as exc:
                error = exc
        if output:
            self._outgoing.append(output)
        if plaintext:
            self._deliver(plaintext)
        if error is not None:
            self._collect_output()
            self._terminate(self._session_error(error))
            return
        if code == _accel.ZERO_RETURN:
            self._peer_closed()
        if self._idle_timeout is not None and self.state is State.ESTABLISHED:
            self._idle_deadline = now + self._idle_timeout
        if not self._server and _bindings.session_address(self._ssl) != self._last_address:
            # A ticket replaced the session (TLS 1.3, RFC 8446 §4.6.1). The session is held,
            # so its address cannot be reused by another while it is compared.
            self._last_session = _bindings.get_session(self._ssl)
            self._last_address = _bindings.session_address_of(self._last_session)
            self._stats.tickets_received += 1
            self._events.append(SessionTicketReceived())

    def _session_error(self, exc: SSL.Error) -> DTLSError:
        """A fatal error once established. A TLS 1.3 client learns that the server refused
        its certificate only after its own Finished (RFC 8446 §4.4.2.4): a certificate alert
        before any data is still that handshake's failure."""
        if (
            not self._server
            and self._stats.messages_received == 0
            and _errors.alert_name(exc) in _errors.CERTIFICATE_ALERTS
        ):
            return _errors.handshake_error(
                exc, verify_reason=None, server=False, peer=self._peer_text, notes=self._notes
            )
        return _errors.session_error(exc, peer=self._peer_text)

    def _deliver(self, data: bytes) -> None:
        if self._framing == "stream":
            self._stats.messages_received += 1
            if self.on_data is not None:
                self.on_data(data)
            else:
                self._events.append(ev.MessageReceived(data))
            return
        frame = self._frame
        before = len(frame)
        frame += data
        offset = 0
        while len(frame) - offset >= _HEADER:
            size = int.from_bytes(frame[offset : offset + _HEADER], "big")
            if size > self._max_message:
                self._collect_output()
                self._release_frame(before)
                self._frame = bytearray()
                self._terminate(
                    ConnectionLost(
                        f"{self._peer_text} sent a message of {size} bytes, more than "
                        f"max_message_size ({self._max_message} bytes)"
                    )
                )
                return
            if len(frame) - offset - _HEADER < size:
                break
            start = offset + _HEADER
            self._stats.messages_received += 1
            message = bytes(frame[start : start + size])
            if self.on_data is not None:
                self.on_data(message)
            else:
                self._events.append(ev.MessageReceived(message))
            offset = start + size
        del frame[:offset]
        budget = self.budget
        if budget is not None:
            budget.held += len(frame) - before
            if len(frame) > before and budget.held > budget.limit:
                self._release_frame(len(frame))
                self._frame = bytearray()
                self._collect_output()
                self._terminate(
                    ConnectionLost(
                        f"{self._peer_text}: the server's buffer for partly received messages "
                        f"is full (limits.max_buffered_bytes, {budget.limit} bytes)"
                    )
                )

    def _release_frame(self, size: int) -> None:
        """Give back to the budget the ``size`` bytes of partial message it was charged."""
        if self.budget is not None and size:
            self.budget.held -= size

    def _peer_closed(self) -> None:
        with contextlib.suppress(SSL.Error):
            self._ssl.shutdown()  # answer with our close_notify
        self._collect_output()
        if self._frame:
            partial = len(self._frame)
            self._finish(State.TERMINATED)
            self.error = ConnectionLost(
                f"{self._peer_text} closed the connection in the middle of a framed message "
                f"({partial} bytes of it received)"
            )
            self._events.append(ev.ConnectionTerminated(self.error))
            return
        self._finish(State.CLOSED)
        self.error = ConnectionClosedByPeer(
            f"{self._peer_text} closed the connection (close_notify)", alert="close notify"
        )
        self._events.append(ev.SessionClosed(by_peer=True, alert="close notify"))

    def _collect_output(self) -> None:
        data = _bindings.stream_drain(self._ssl)
        if data:
            self._outgoing.append(data)

    def _finish(self, state: State) -> None:
        if self._frame:
            self._release_frame(len(self._frame))
            self._frame = bytearray()
        self.state = state
        self._handshake_deadline = None
        self._idle_deadline = None

    def _terminate(self, error: DTLSError) -> None:
        if self.state in (State.CLOSED, State.TERMINATED):
            return
        error = self._explain_failure(error)
        self._finish(State.TERMINATED)
        self.error = error
        self._events.append(ev.ConnectionTerminated(error))


def _check_data(data: object) -> bytes:
    if type(data) is bytes and data:
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        hint = "; encode text first, e.g. text.encode()" if isinstance(data, str) else ""
        raise InvalidMessage(
            f"send() takes bytes, bytearray or memoryview, not {type(data).__name__}{hint}"
        )
    payload = bytes(data)
    if not payload:
        raise InvalidMessage("cannot send an empty message")
    return payload


def check_framing(framing: object, max_message_size: object) -> None:
    """Validate front-end arguments early (the engine checks them again)."""
    if framing not in FRAMINGS:
        raise InvalidArgument(
            f"framing must be one of {', '.join(map(repr, FRAMINGS))}, not {framing!r}"
        )
    if (
        not isinstance(max_message_size, int)
        or isinstance(max_message_size, bool)
        or not 1 <= max_message_size <= _MAX_FRAME
    ):
        raise InvalidArgument(
            f"max_message_size must be from 1 to {_MAX_FRAME} bytes, not {max_message_size!r}"
        )
