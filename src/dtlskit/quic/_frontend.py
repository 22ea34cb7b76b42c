"""What the asyncio and the blocking QUIC front ends share (``dtlskit.quic`` and
``dtlskit.sync.quic``), as the DTLS front ends share ``_frontend/channel_base.py``.

Nothing here waits, reads a clock, or touches an event loop or a thread: a flavour supplies
those. This module makes and binds the UDP socket and names its errors, routes a server
socket's datagram through :class:`QuicServerEngine` (its stateless replies, its evictions),
keeps the server's record of which sessions got a handler and which failed their handshake
(:class:`HandshakeBook`), logs how a handler ended, sums a server's statistics, and reads the
channel and stream state both flavours show (:class:`ChannelBase`, :class:`StreamBase`), so the
two flavours behave identically.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Generator
from typing import Any

from ..config import DTLSConfiguration
from ..exceptions import ConnectionRefused, DTLSError, InvalidArgument, TransportError
from ._engine import QuicServerEngine, QuicSession, QuicStatistics

__all__ = [
    "ChannelBase",
    "HandshakeBook",
    "StreamBase",
    "check_config",
    "client_bind_address",
    "handler_outcome",
    "pick_address",
    "resolution_error",
    "route_datagram",
    "server_statistics",
    "socket_error",
    "udp_socket",
]

logger = logging.getLogger("dtlskit.quic")

_SUMMED = (
    "datagrams_received",
    "datagrams_sent",
    "bytes_received",
    "bytes_sent",
    "messages_received",
    "messages_sent",
    "streams_accepted",
    "streams_opened",
    "buffered_bytes",
)
"""The per-session counters a server's statistics add up."""


# -- sockets ------------------------------------------------------------------------------------


def check_config(config: object) -> None:
    """``connect`` and ``serve`` take a :class:`DTLSConfiguration`, nothing else."""
    if not isinstance(config, DTLSConfiguration):
        raise InvalidArgument("config must be a dtlskit.DTLSConfiguration")


def client_bind_address(family: int) -> tuple[str, int]:
    """Where a client socket binds when the caller names no local address."""
    return ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)


def udp_socket(family: int, address: Any, recv_buffer_size: int | None) -> socket.socket:
    """A non-blocking UDP socket bound to ``address`` (dual-stack for IPv6), its receive
    buffer asked for ``recv_buffer_size`` bytes when set; :class:`TransportError` if binding
    fails."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if recv_buffer_size is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_size)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise TransportError(exc.errno, f"cannot bind {address!r}: {exc.strerror}") from exc
    return sock


def resolution_error(host: str, exc: socket.gaierror) -> TransportError:
    """What a failed name lookup raises."""
    return TransportError(exc.errno, f"cannot resolve {host!r}: {exc.strerror}")


def pick_address(infos: list[Any]) -> tuple[int, Any]:
    """The family and address ``getaddrinfo`` listed first."""
    family, _, _, _, address = infos[0]
    return int(family), address


def socket_error(exc: Exception) -> DTLSError | None:
    """The error a socket's failure means for its connections (None: not a socket error)."""
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefused(f"nothing listens there (ICMP port unreachable): {exc}")
    if isinstance(exc, OSError):
        return TransportError(exc.errno, f"socket error: {exc.strerror or exc}")
    return None


# -- servers ------------------------------------------------------------------------------------


def route_datagram(
    engine: QuicServerEngine,
    data: bytes,
    address: Any,
    now: float,
    send: Callable[[bytes, Any], None],
    flush: Callable[[QuicSession], None],
) -> QuicSession | None:
    """Feed a server socket's datagram to its engine: ``send`` the engine's stateless replies
    (Version Negotiation, Retry), ``flush`` each session it evicted (nothing to send, no timer:
    the flavour forgets it), and return the session the datagram was for, if any (the caller
    flushes it)."""
    session = engine.receive_datagram(data, address, now)
    if engine.replies:
        replies, engine.replies = engine.replies, []
        for reply, to in replies:
            send(reply, to)
    if engine.evicted:
        evicted, engine.evicted = engine.evicted, []
        for victim in evicted:
            flush(victim)
    return session


class HandshakeBook:
    """A server's record of its sessions' handshakes: which got a handler (``started``) and
    which failed (``failed``, each counted and logged once)."""

    def __init__(self, engine: QuicServerEngine) -> None:
        self.engine = engine
        self.started: set[QuicSession] = set()
        self.failed: set[QuicSession] = set()

    def needs_handler(self, session: QuicSession) -> bool:
        """True once per session, when its handshake has completed and it is still up: the
        caller starts its handler. A session that ended before that is counted as failed."""
        if session.error is not None:
            if session not in self.started and session not in self.failed:
                self.failed.add(session)
                self.engine.handshakes_failed += 1
                logger.info("%r: QUIC handshake failed: %s", session.peer_address, session.error)
            return False
        if session.handshake_complete and session not in self.started:
            self.started.add(session)
            self.engine.handshakes_completed += 1
            return True
        return False

    def forget(self, session: QuicSession) -> None:
        """The session is over: drop it here and from the engine."""
        self.failed.discard(session)
        self.started.discard(session)
        self.engine.forget(session)


@contextlib.contextmanager
def handler_outcome(channel: Any) -> Generator[None, None, None]:
    """Around a server's handler: log how it ended; an exception that is not a
    :class:`DTLSError` (a bug in the handler) closes the connection with code 0x1. The caller
    closes the connection afterwards in every case."""
    try:
        yield
    except DTLSError as exc:
        logger.info("%r: handler ended: %s", channel.getpeername(), exc)
    except Exception:
        logger.exception("%r: the QUIC handler raised", channel.getpeername())
        channel.close(0x1, "internal error in the server's handler")


def server_statistics(engine: QuicServerEngine) -> QuicStatistics:
    """A server's statistics: its engine's drops plus the sum over its live sessions."""
    total = QuicStatistics()
    total.drops.update(engine.drops)
    for session in engine.sessions:
        stats = session.statistics()
        for name in _SUMMED:
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        total.drops.update(stats.drops)
    return total


# -- channels and streams -----------------------------------------------------------------------


class StreamBase:
    """A stream's received bytes, gathered up to the peer's FIN."""

    def __init__(self, channel: Any, stream_id: int) -> None:
        self._channel = channel
        self.stream_id = stream_id
        self._received = bytearray()
        self._ended = False

    def _take(self, session: QuicSession) -> bool:
        """Gather what arrived on the stream; False when nothing did (wait, then call again)."""
        got = session.read_stream(self.stream_id)
        if got is None:
            return False
        data, self._ended = got
        self._received += data
        return True

    def _whole(self, session: QuicSession) -> bytes:
        """Everything gathered (the stream has ended): the stream is forgotten."""
        data = bytes(self._received)
        self._received = bytearray()
        session.forget_stream(self.stream_id)
        return data


class ChannelBase:
    """What a QUIC channel shows of its session, the same in both flavours."""

    _session: QuicSession
    _peer: Any
    _kind = "QuicChannel"

    @property
    def alpn_protocol(self) -> str | None:
        """The negotiated ALPN protocol."""
        return self._session.alpn_protocol

    @property
    def session_resumed(self) -> bool:
        """Whether the handshake resumed an earlier session (a ticket)."""
        return self._session.session_resumed

    @property
    def session(self) -> Any:
        """Client: the latest session ticket the server issued (pass it to
        ``connect(..., session=)`` to resume), or None."""
        return self._session.session_ticket

    @property
    def closed(self) -> bool:
        return self._session.error is not None

    def pending(self) -> int:
        """Messages ready for ``recv`` without waiting."""
        return self._session.pending

    def getpeername(self) -> Any:
        return self._peer

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{self._kind} {state} peer={self._peer!r} alpn={self.alpn_protocol!r}>"
