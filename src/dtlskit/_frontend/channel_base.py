"""What the asyncio and the blocking front ends share about a channel and a server.

Nothing here waits, reads a clock, or touches an event loop or a thread: a flavour supplies
those. This module turns engine events into channel state (:class:`Inbox`), terminal events into
the exception a user sees, and reads the channel properties from the engine
(:class:`ChannelBase`), so both flavours behave identically.

The channel life cycle, common to both flavours:

* Messages wait in the session's one queue, the engine's :class:`~dtlskit.core.inbox.Inbox`
  (bounded in bytes and messages per session and by the server's byte budget, all checked by
  the engine), unless the handler takes them as callbacks.
* When the session ends (close_notify either way, a fatal alert, idle expiry, a socket error),
  the inbox records the error. Messages already received are still returned by ``recv``; after
  them ``recv`` raises that error, a fresh copy on every call.
* Iteration stops cleanly when the session ended with close_notify (sent by the peer, or by this
  side's ``close()``, including a server shutting down); any other end raises.
* A socket error on a client's connected socket (the kernel's report of an ICMP error) is
  mapped by :func:`client_socket_error`: during the handshake it fails the handshake at once
  (:class:`ConnectionRefused` for port unreachable, :class:`TransportError` otherwise, so
  ``connect`` can try the next address); once established it ends the session with
  :class:`ConnectionLost` naming the cause. Only ``EMSGSIZE`` ends nothing.
* ``send`` takes ``bytes``, ``bytearray`` or ``memoryview`` of at least one byte; anything else
  is :class:`InvalidMessage` (checked by the engine's ``seal``), and the session goes on.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..config import DTLSConfiguration
from ..core import events as ev
from ..core.connection import ConnectionStatistics, DTLSConnection, State
from ..core.inbox import fresh_error
from ..core.server import ServerStatistics
from ..exceptions import (
    ConfigurationError,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    ConnectionLost,
    DTLSError,
    InvalidArgument,
    TransportError,
)
from . import accel as _accel
from .negotiated import NegotiatedProperties
from .sockets import Address, SocketOptions, format_address, translate_os_error

__all__ = [
    "ChannelBase",
    "SessionProtocol",
    "aggregate_server_statistics",
    "check_server_config",
    "client_socket_error",
    "end_protocol",
    "ends_iteration",
    "feed_batch",
    "fresh_error",
    "is_protocol_factory",
    "log_peer_event",
    "send_error",
    "start_protocol",
    "terminal_error",
]


def terminal_error(engine: DTLSConnection, event: ev.Event) -> DTLSError:
    """The exception a user sees after a terminal event (SessionClosed/ConnectionTerminated)."""
    if isinstance(event, ev.ConnectionTerminated):
        return event.error
    if engine.error is not None:
        return engine.error
    if isinstance(event, ev.SessionClosed) and event.by_peer:  # pragma: no cover - engine sets
        return ConnectionClosedByPeer("the peer closed the connection", alert=event.alert)
    return ConnectionClosedLocally("the connection was closed locally")  # pragma: no cover


def ends_iteration(error: DTLSError) -> bool:
    """Whether ``error`` ends ``for``/``async for`` cleanly (a close_notify either way)."""
    return isinstance(error, ConnectionClosedByPeer | ConnectionClosedLocally)


def send_error(exc: OSError, address: Address | None, mtu: int) -> DTLSError:
    """The dtlskit exception for a failed datagram send, naming the MTU when it is too large."""
    if exc.errno == errno.EMSGSIZE:
        return TransportError(
            errno.EMSGSIZE,
            f"a datagram of up to {mtu} bytes (the mtu setting) is too large for the path to "
            f"{format_address(address)}: lower the mtu setting",
        )
    return translate_os_error(exc, "send to", address)


def client_socket_error(engine: DTLSConnection, exc: OSError, peer: Address) -> DTLSError:
    """A socket error on a client's connected socket: end the session as its state says.

    Handshaking: the handshake fails at once with :class:`ConnectionRefused` (port
    unreachable) or :class:`TransportError` (host or network unreachable, ...), the errors on
    which ``connect`` moves on to the next resolved address. Established: the session ends
    with :class:`ConnectionLost` naming the cause (ConnectionClosed family, like every other
    end of a session). ``EMSGSIZE`` ends nothing: it is returned as the TransportError naming
    the MTU, for the ``send`` that caused it.

    The engine is aborted with the returned error (except for EMSGSIZE); the caller then
    drains its events and transmits, as after any engine call, and raises the error if a
    ``send`` of its user caused it.
    """
    if exc.errno == errno.EMSGSIZE:
        return send_error(exc, peer, engine.mtu)
    error: DTLSError
    if engine.state in (State.INITIAL, State.HANDSHAKING):
        error = translate_os_error(exc, "connect to", peer)
    elif isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        error = ConnectionLost(
            f"{format_address(peer)} is gone: its host answered port unreachable"
        )
    else:
        cause = exc.strerror or str(exc)
        error = ConnectionLost(f"the path to {format_address(peer)} failed: {cause}")
    error.__cause__ = exc
    engine.abort(error)  # idempotent: a session already over keeps how it ended
    return error


class FailOver(Exception):
    """Internal: a client's handshake got no answer at all; start again from a new port."""


def should_fail_over(engine: DTLSConnection, lost_flights: int | None, now: float) -> bool:
    """Whether a client handshaking with ``engine``, whose retransmission timer is due at
    ``now``, should start again from a new source port instead of retransmitting: ``lost_flights``
    flights in a row (its first flight and its retransmissions) went unanswered, and nothing at
    all came back (``DTLSConfiguration.new_port_after_lost_flights``)."""
    if lost_flights is None or engine.state is not State.HANDSHAKING:
        return False
    timer = engine.get_timer()
    if timer is None or now < timer:
        return False
    stats = engine.statistics()
    # Bytes, not datagrams: a proxy may answer an upstream's ICMP error with an empty datagram
    # (nginx stream does), which tells nothing about a live node.
    return stats.bytes_received == 0 and stats.retransmissions >= lost_flights - 1


def check_server_config(config: object) -> DTLSConfiguration:
    """``config`` if it is a server's configuration; :class:`ConfigurationError` otherwise."""
    if not isinstance(config, DTLSConfiguration):
        raise ConfigurationError(
            f"config must be a DTLSConfiguration (DTLSConfiguration.server()), not "
            f"{type(config).__name__}"
        )
    return config


class ChannelBase(SocketOptions, NegotiatedProperties):
    """State and properties of a channel, read from its engine; the flavour adds the waiting.

    ``sock`` is the socket datagrams go through: the client's own connected socket, or on a
    server the listening socket shared by every peer.
    """

    _engine: DTLSConnection

    def __init__(self, engine: DTLSConnection, sock: Any, peer_address: Address) -> None:
        self._engine = engine
        self._sock = sock
        self._peer_address = tuple(peer_address)
        self._inbox = engine.inbox if engine.inbox is not None else engine.open_inbox()
        self._close_called = False
        self._protocol: SessionProtocol | None = None
        """The callback-style handler of this session, if any."""

    # -- engine events --------------------------------------------------------------------------

    def _handle_event(self, event: ev.Event) -> bool:
        """Apply one engine event; True when the session ended now.

        A message received before the channel existed (it came in the handshake's last
        datagram) goes through the engine's bounds like any other (:meth:`deliver`).
        """
        if isinstance(event, ev.MessageReceived):
            self._engine.deliver(event.data)
            return False
        if isinstance(event, ev.SessionClosed | ev.ConnectionTerminated):
            return self._inbox.end(terminal_error(self._engine, event))
        return False

    def close(self) -> None:
        """Send close_notify and end the session (the flavour's)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Give the bytes of messages nobody will read back to the server's budget."""
        self._inbox.release()

    def _end(self, error: DTLSError) -> bool:
        """End the channel without an engine event (the socket went away); True if it was live."""
        return self._inbox.end(error)

    def _check_open(self) -> None:
        """Raise the error that ended the session once it is over (the engine validates the
        message itself)."""
        if self._inbox.error is not None:
            raise fresh_error(self._inbox.error)

    @staticmethod
    def _recv_into_slice(
        buffer: Any, offset: int, length: int | None
    ) -> tuple[memoryview, int, int]:
        """``recv_into``'s arguments checked: (byte view of ``buffer``, offset, length)."""
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise InvalidArgument("recv_into needs a writable buffer (bytearray, memoryview, ...)")
        if not isinstance(offset, int) or not 0 <= offset <= len(view):
            raise InvalidArgument(f"offset must be from 0 to {len(view)}, not {offset!r}")
        if length is None:
            length = len(view) - offset
        if not isinstance(length, int) or not 0 <= length <= len(view) - offset:
            raise InvalidArgument(
                f"length must be from 0 to {len(view) - offset} (buffer of {len(view)} bytes, "
                f"offset {offset}), not {length!r}"
            )
        return view, offset, length

    @property
    def _peer_text(self) -> str:
        return format_address(self._peer_address)

    # -- SocketOptions ------------------------------------------------------------------------

    def _bound_socket(self) -> Any:
        return self._sock

    # -- properties -----------------------------------------------------------------------------

    def getpeername(self) -> Address:
        """The peer's address."""
        return self._peer_address

    def pending(self) -> int:
        """Number of received messages waiting to be read."""
        return len(self._inbox.messages)

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of the engine's counters for this session."""
        return self._engine.statistics()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called or the session ended."""
        return self._close_called or self._inbox.ended

    @property
    def mtu(self) -> int:
        """Largest datagram this session sends, in bytes."""
        return self._engine.mtu

    @property
    def cleartext_mtu(self) -> int:
        """Largest message that fits in one datagram; larger ones raise MessageTooLarge."""
        return self._engine.cleartext_mtu

    @property
    def hibernated(self) -> bool:
        """Whether the session's OpenSSL object was released (``Limits.hibernate_after``): its
        records are then protected by :mod:`dtlskit.core.record_protection`."""
        return self._engine.hibernated

    @property
    def peer_verified_chain(self) -> list[Any]:
        """The peer's chain as OpenSSL verified it, leaf to trusted root
        (``cryptography.x509.Certificate``); empty when the peer sent none or it was not
        verified."""
        return self._engine.peer_verified_chain

    @property
    def srtp_profile(self) -> str | None:
        """The DTLS-SRTP protection profile agreed (RFC 5764), e.g.
        ``"SRTP_AES128_CM_SHA1_80"``; None without ``srtp_profiles`` or a common one."""
        return self._engine.srtp_profile

    def __repr__(self) -> str:
        state = "closed" if self.closed else self._engine.state.value
        return f"<{type(self).__name__} {self._peer_text} {state}>"


def aggregate_server_statistics(
    parts: Iterable[ServerStatistics], extra_drops: dict[str, int] | None = None
) -> ServerStatistics:
    """One ServerStatistics summing every socket's, plus drops the front end counted itself."""
    total = ServerStatistics()
    drops: collections.Counter[str] = collections.Counter()
    for part in parts:
        for item in dataclasses.fields(ServerStatistics):
            if item.name == "drops":
                continue
            setattr(total, item.name, getattr(total, item.name) + getattr(part, item.name))
        drops.update(part.drops)
    if extra_drops:
        drops.update(extra_drops)
    total.drops = dict(drops)
    return total


_server_logger = logging.getLogger("dtlskit.server")


def log_peer_event(address: Address, engine: DTLSConnection, event: ev.Event) -> None:
    """One log line per peer life-cycle event, the same in both flavours: connected and ended
    at INFO, a failed handshake at WARNING (only peers that passed the cookie exchange get
    that far, so spoofed traffic cannot flood the log)."""
    if not _server_logger.isEnabledFor(logging.INFO) and not (
        isinstance(event, ev.ConnectionTerminated) and _server_logger.isEnabledFor(logging.WARNING)
    ):
        return  # nothing is formatted for a line nobody logs
    peer = format_address(address)
    if isinstance(event, ev.HandshakeCompleted):
        reused = ", resumed" if event.session_reused else ""
        _server_logger.info("%s connected (%s, %s%s)", peer, event.version, event.cipher, reused)
    elif isinstance(event, ev.ConnectionTerminated) and not engine.handshake_completed:
        _server_logger.warning("handshake with %s failed: %s", peer, event.error)
    elif isinstance(event, ev.SessionClosed | ev.ConnectionTerminated):
        _server_logger.info("%s disconnected: %s", peer, terminal_error(engine, event))


class SessionProtocol:
    """The callback handler style: one instance per session, its methods called on the event
    loop (asyncio) or on the socket's I/O thread (blocking), with no task or thread switch
    per message. Subclass it and pass the class to ``serve`` in place of a handler function::

        class Echo(dtlskit.SessionProtocol):
            def connection_made(self, channel):
                self.channel = channel

            def message_received(self, data):
                self.channel.send_nowait(data)

        async with dtlskit.serve(Echo, "::", 4433, config=config) as server: ...

    Methods must not block: they run where every other peer's datagrams are handled. Send
    with ``channel.send_nowait(data)`` (both flavours; the blocking ``channel.send`` works
    too). A method that raises is logged (logger ``"dtlskit.server"``) and closes its own
    session only. Messages are not queued: there is no ``recv`` in this style.
    """

    def connection_made(self, channel: Any) -> None:
        """The handshake completed; ``channel`` is this session's Channel (keep it to send)."""

    def message_received(self, data: bytes) -> None:
        """One message from the peer."""

    def connection_lost(self, exc: DTLSError | None) -> None:
        """The session ended: ``None`` for close_notify (either side), else the error."""


def is_protocol_factory(handler: object) -> bool:
    """Whether ``handler`` passed to ``serve`` is a :class:`SessionProtocol` class."""
    return isinstance(handler, type) and issubclass(handler, SessionProtocol)


def start_protocol(
    factory: Callable[[], SessionProtocol],
    channel: ChannelBase,
    defer: Callable[[Callable[[], None]], object],
) -> None:
    """Make the protocol of a new session, route its messages to it, call connection_made.

    ``defer`` schedules a call after the current engine call (a raising callback closes its
    session that way, never from inside the engine).
    """
    protocol = factory()
    channel._protocol = protocol
    channel._engine.on_message = _accel.ProtocolCall(
        protocol.message_received, functools.partial(_message_failed, channel, defer)
    )
    try:
        protocol.connection_made(channel)
    except Exception:
        _server_logger.exception(
            "connection_made failed for %s; closing that session", channel._peer_text
        )
        defer(channel.close)


def _message_failed(
    channel: ChannelBase, defer: Callable[[Callable[[], None]], object], exc: Exception
) -> None:
    """``message_received`` raised ``exc``: log it, close that session after the engine call.
    (The engine's ``on_message`` for a callback-style session is an
    :class:`dtlskit._frontend.accel.ProtocolCall` of ``message_received`` and this: no Python
    frame of its own per message with the accelerator.)"""
    _server_logger.error(
        "message_received failed for %s; closing that session", channel._peer_text, exc_info=exc
    )
    defer(channel.close)


def end_protocol(channel: ChannelBase) -> None:
    """The session of a callback-style channel ended: tell its protocol (once)."""
    protocol = channel._protocol
    if protocol is None:
        return
    channel._protocol = None
    channel._engine.on_message = None
    error = channel._inbox.error
    try:
        protocol.connection_lost(None if error is None or ends_iteration(error) else error)
    except Exception:
        _server_logger.exception("connection_lost failed for %s", channel._peer_text)


def feed_batch(
    driver: Any,
    batch: list[tuple[bytes, Any]],
    now: float,
    send: Callable[[list[tuple[bytes, Any]]], object],
    drop: Callable[[str], object],
) -> None:
    """Feed one read batch to a server driver's engine, the same in both flavours.

    Replies that callback handlers send meanwhile are collected on the driver
    (``driver._collected``, which its ``send_nowait`` path appends to) and handed to ``send``
    together at the end — also when a handler raises — so they leave in one ``send_batch``, in
    order, before anything else the driver sends.

    An exception out of the engine for one datagram (a bug: the engine drops and counts bad
    input itself) is logged and counted with ``drop("internal_error")``; the rest of the batch,
    and every other peer, are still served.
    """
    if driver._collected is None:  # (a driver may hand in datagrams to lead the batch's)
        driver._collected = []

    def failed(address: Any, exc: Exception) -> None:
        _server_logger.error(
            "internal error handling a datagram from %s; dropped, serving on",
            format_address(address),
            exc_info=exc,
        )
        drop("internal_error")

    try:
        driver.engine.receive_batch(batch, now, failed)
    finally:
        collected, driver._collected = driver._collected, None
        if collected:
            send(collected)
