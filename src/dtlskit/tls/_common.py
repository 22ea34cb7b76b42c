"""What the asyncio (:mod:`dtlskit.tls`) and the blocking (:mod:`dtlskit.sync.tls`) TLS front
ends share: received-data buffers with the stream helpers, server limits and statistics, and
the translation of socket errors. Nothing here waits, reads a clock or touches a loop or thread.

Limits (from the configuration's :class:`~dtlskit.config.Limits`, one vocabulary with DTLS):

* ``max_sessions``: TCP connections held at once (handshaking or established);
* ``max_sessions_per_address``: connections from one IP address;
* ``accept_backlog``: established connections waiting for ``accept()`` (``listen`` only);
* ``handshake_timeout`` (configuration): a client that does not finish its handshake in time
  is dropped; it never blocks ``accept`` or another client (each has its own task/thread);
* ``idle_timeout`` (configuration, else ``limits.idle_timeout``): an established client silent
  that long is closed (close_notify);
* ``max_queued_bytes``: received bytes waiting for the application, per connection; beyond it
  the front end stops reading the socket (TCP's flow control pushes back on the peer), so no
  byte is dropped.

Every refusal and drop is counted by reason in :class:`TLSServerStatistics`.
"""

from __future__ import annotations

import collections
import errno
import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from .._frontend.sockets import Address, format_address
from ..config import DTLSConfiguration
from ..core.inbox import ByteBudget, fresh_error
from ..core.tls import check_tls_config
from ..exceptions import (
    BufferTooSmall,
    ConfigurationError,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    ConnectionRefused,
    DTLSError,
    InvalidArgument,
    InvalidMessage,
    TransportError,
    UsageError,
)

__all__ = [
    "ConnectionGate",
    "Received",
    "SharedBudget",
    "TLSServerStatistics",
    "bind_tcp_sockets",
    "check_server_tls_config",
    "connect_error",
    "ends_iteration",
    "server_idle_timeout",
]

_DEFAULT_UNTIL_LIMIT = 65536


@dataclass
class TLSServerStatistics:
    """Counters of a TLS server (``server.statistics()``)."""

    connections: int = 0
    """TCP connections held now (handshaking or established)."""
    accepted: int = 0
    """TCP connections taken (before any limit)."""
    handshakes_completed: int = 0
    handshakes_failed: int = 0
    """Handshakes that failed (bad certificate, garbage, timeout, peer gone, ...)."""
    refused: dict[str, int] = field(default_factory=dict)
    """Connections refused or ended by a limit, by reason: ``"max_sessions"``,
    ``"max_sessions_per_address"``, ``"accept_backlog"``, ``"handshake_timeout"``,
    ``"idle_timeout"``."""

    def copy(self) -> TLSServerStatistics:
        """An independent snapshot."""
        return TLSServerStatistics(**{**self.__dict__, "refused": dict(self.refused)})

    def count(self, reason: str) -> None:
        """Count one refusal for ``reason``."""
        self.refused[reason] = self.refused.get(reason, 0) + 1


def check_server_tls_config(config: object) -> DTLSConfiguration:
    """A server's configuration, checked for TCP (raises ConfigurationError)."""
    if not isinstance(config, DTLSConfiguration):
        raise ConfigurationError(
            "config must be a DTLSConfiguration (e.g. DTLSConfiguration.server(certfile, keyfile))"
        )
    check_tls_config(config)
    if config.certfile is None and config.psk_lookup is None:
        raise ConfigurationError(
            "a TLS server needs a certificate: give certfile and keyfile "
            "(or psk_lookup for a PSK-only server)"
        )
    return config


def server_idle_timeout(config: DTLSConfiguration) -> float | None:
    """The idle limit of a server's connections."""
    return config.idle_timeout if config.idle_timeout is not None else config.limits.idle_timeout


def _address_key(address: Address) -> str:
    return _host_key(str(address[0]))


@functools.lru_cache(maxsize=1024)
def _host_key(text: str) -> str:
    """The key of a peer's host in the per-address count (an IPv4-mapped IPv6 address counts
    as its IPv4 address). Cached (bounded): each connection asks twice, and parsing an
    address costs more than the rest of admitting it."""
    host = text.split("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class ConnectionGate:
    """Admission of TCP connections by the limits on their number, in all and per address."""

    def __init__(self, config: DTLSConfiguration, stats: TLSServerStatistics) -> None:
        self._max = config.limits.max_sessions
        self._per_address = config.limits.max_sessions_per_address
        self._by_address: dict[str, int] = {}
        self._stats = stats

    def admit(self, address: Address) -> str | None:
        """Count a new connection in, or return the reason (counted) it is refused."""
        stats = self._stats
        stats.accepted += 1
        key = _address_key(address)
        reason = None
        if stats.connections >= self._max:
            reason = "max_sessions"
        elif self._by_address.get(key, 0) >= self._per_address:
            reason = "max_sessions_per_address"
        if reason is not None:
            stats.count(reason)
            return reason
        stats.connections += 1
        self._by_address[key] = self._by_address.get(key, 0) + 1
        return None

    def release(self, address: Address) -> None:
        """A connection admitted by :meth:`admit` ended."""
        key = _address_key(address)
        left = self._by_address.get(key, 0) - 1
        if left > 0:
            self._by_address[key] = left
        else:
            self._by_address.pop(key, None)
        self._stats.connections -= 1


ITEM_OVERHEAD = 64
"""Bytes each waiting chunk or message is charged beside its payload (its ``bytes`` header and
queue slot), as the DTLS inbox charges each message."""


class SharedBudget(ByteBudget):
    """A server's ``limits.max_buffered_bytes``: bytes its connections hold for the
    application (received, not yet taken) plus partial framed messages (charged by the
    engines). Past it a connection that holds data stops reading its socket (TCP's flow
    control) until the total falls back; a connection holding nothing may always read (so
    connections whose applications do read keep going), which bounds the total by the
    budget plus one read per such connection."""

    __slots__ = ("paused",)

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.paused: dict[Any, None] = {}
        """Connections that stopped reading because of the budget, oldest first."""


class Received:
    """What arrived and waits for the application: a byte stream, or whole messages when
    framed. Both flavours wait on it their own way; the taking is here.

    Framed messages wait in a deque. The stream waits in one ``bytearray`` that arrivals
    extend and reads consume from a start offset (compacted once half is consumed), and
    ``take_until`` remembers how far it searched: every byte is copied and searched a bounded
    number of times whatever the sizes of arrivals and reads (no quadratic cost a peer could
    provoke). A lone arrival taken whole by ``take`` is handed over without any copy."""

    __slots__ = (
        "_buf",
        "_chunks",
        "_framed",
        "_scan",
        "_scan_for",
        "_single",
        "_size",
        "_start",
        "error",
    )

    def __init__(self, framed: bool) -> None:
        self._framed = framed
        self._chunks: collections.deque[bytes] = collections.deque()  # framed messages
        self._single: bytes | None = None  # stream: the only data waiting, not copied yet
        self._buf = bytearray()  # stream: data waiting from _start on
        self._start = 0
        self._scan = 0  # stream: take_until has searched _buf up to here ...
        self._scan_for = b""  # ... for this separator
        self._size = 0
        self.error: DTLSError | None = None
        """Set when the connection ended: raised once what arrived before it is taken."""

    @property
    def size(self) -> int:
        """What waits, as charged against the limits: its bytes plus :data:`ITEM_OVERHEAD`
        per framed message (so that empty framed messages are not free) or for the stream."""
        if self._framed:
            return self._size + ITEM_OVERHEAD * len(self._chunks)
        return self._size + ITEM_OVERHEAD if self._size else 0

    @property
    def nbytes(self) -> int:
        """Bytes waiting (payload only)."""
        return self._size

    def pending(self) -> int:
        """Bytes (stream) or messages (framed) waiting."""
        return len(self._chunks) if self._framed else self._size

    def put(self, data: bytes) -> None:
        """Data from the engine."""
        if not data and not self._framed:
            return
        self._size += len(data)
        if self._framed:
            self._chunks.append(data)
        elif self._size == len(data):
            self._single = data  # nothing else waits: keep it as it is
        else:
            self._gather()
            self._buf += data

    def ready(self) -> bool:
        """Whether :meth:`take` returns at once (data, or the end)."""
        if self._framed:
            return bool(self._chunks) or self.error is not None
        return self._size > 0 or self.error is not None

    def _gather(self) -> None:
        """Stream: move a lone arrival into the buffer (before a second one or a partial
        read)."""
        if self._single is not None:
            self._buf += self._single
            self._single = None

    def _consume(self, end: int) -> bytes:
        """Stream: the bytes from the start to ``end`` (an index into the buffer), removed."""
        data = bytes(self._buf[self._start : end])
        self._start = end
        self._size -= len(data)
        if self._start == len(self._buf):
            self._buf = bytearray()
            self._start = 0
        elif self._start > len(self._buf) // 2:
            del self._buf[: self._start]  # compact: each byte moves at most once more
            self._start = 0
        self._scan = self._start
        return data

    def take(self) -> bytes:
        """Everything that arrived (stream) or the next message (framed); raises the end."""
        if self._framed:
            if self._chunks:
                data = self._chunks.popleft()
                self._size -= len(data)
                return data
        elif self._size:
            single = self._single
            if single is not None:
                self._single = None
                self._size = 0
                return single
            return self._consume(len(self._buf))
        raise fresh(self.error)

    def take_into(self, view: memoryview, offset: int, length: int) -> int | None:
        """``recv_into``: stream: copy up to ``length`` bytes of what arrived (at least one);
        framed: the next message, which must fit (else :class:`BufferTooSmall`, and it stays
        queued). None to wait; raises the end."""
        if not self.ready():
            return None
        if self._framed:
            if not self._chunks:
                raise fresh(self.error)
            message = self._chunks[0]
            if len(message) > length:
                raise BufferTooSmall(len(message), length)
            self._chunks.popleft()
            self._size -= len(message)
            view[offset : offset + len(message)] = message
            return len(message)
        if not self._size:
            raise fresh(self.error)
        self._gather()
        data = self._consume(self._start + min(length, self._size))
        view[offset : offset + len(data)] = data
        return len(data)

    def take_exactly(self, n: int) -> bytes | None:
        """``n`` bytes if that many arrived; None to wait; raises when the stream ended
        short (``ConnectionLost`` naming how many bytes came)."""
        self._stream_only("read_exactly")
        if self._size >= n:
            if n == self._size and self._single is not None:
                return self.take()
            self._gather()
            return self._consume(self._start + n)
        if self.error is not None:
            raise _short(self.error, f"{self._size} of the {n} bytes asked for arrived")
        return None

    def take_until(self, separator: bytes, limit: int) -> bytes | None:
        """Bytes up to and including ``separator``; None to wait; raises
        :class:`~dtlskit.exceptions.InvalidMessage` when ``limit`` bytes came without it (they
        stay buffered), the end when it ends first."""
        self._stream_only("read_until")
        self._gather()
        buf = self._buf
        if separator != self._scan_for:  # another separator: search again from the start
            self._scan_for = separator
            self._scan = self._start
        end_of_window = min(len(buf), self._start + limit)
        index = buf.find(separator, max(self._scan, self._start), end_of_window)
        if index >= 0:
            return self._consume(index + len(separator))
        # Not within the first `limit` bytes; resume the next search where this one stopped.
        self._scan = max(self._start, end_of_window - len(separator) + 1)
        if self._size >= limit:
            raise InvalidMessage(
                f"no {separator!r} within the first {limit} bytes (the limit): they stay buffered"
            )
        if self.error is not None:
            raise _short(self.error, f"the stream ended before {separator!r}")
        return None

    def take_until_eof(self, limit: int) -> bytes | None:
        """Everything, once the peer closed cleanly; None to wait; raises ConnectionLost past
        ``limit`` bytes or on any end but close_notify."""
        self._stream_only("read_until_eof")
        if self._size > limit:
            raise InvalidMessage(f"more than {limit} bytes (the limit) before the end")
        if self.error is None:
            return None
        if isinstance(self.error, ConnectionClosedByPeer | ConnectionClosedLocally):
            if self._single is not None:
                return self.take()
            return self._consume(len(self._buf)) if self._size else b""
        raise fresh(self.error)

    def _stream_only(self, name: str) -> None:
        if self._framed:
            raise UsageError(
                f"{name}() reads a byte stream; this channel uses framing='length-prefixed' "
                "(use recv() for whole messages)"
            )


def check_limit(limit: object, name: str = "limit") -> int:
    """A positive byte count argument."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidArgument(f"{name} must be a positive number of bytes, not {limit!r}")
    return limit


def check_count(n: object) -> int:
    """``read_exactly``'s byte count."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidArgument(f"read_exactly() needs a byte count >= 0, not {n!r}")
    return n


def check_separator(separator: object) -> bytes:
    """``read_until``'s separator."""
    if not isinstance(separator, bytes) or not separator:
        raise InvalidArgument(f"separator must be non-empty bytes, not {separator!r}")
    return separator


def fresh(error: DTLSError | None) -> DTLSError:
    """A new copy of a terminal error (each raise gets its own traceback)."""
    if error is None:  # pragma: no cover - callers check
        return UsageError("the connection has not ended")
    return fresh_error(error)


def _short(error: DTLSError, what: str) -> DTLSError:
    from ..exceptions import ConnectionLost

    if isinstance(error, ConnectionClosedByPeer):
        return ConnectionLost(f"{error} before the read was complete: {what}", alert=error.alert)
    return fresh(error)


def ends_iteration(error: DTLSError) -> bool:
    """Whether ``error`` ends ``for``/``async for`` cleanly (a close_notify either way)."""
    return isinstance(error, ConnectionClosedByPeer | ConnectionClosedLocally)


def connect_error(exc: OSError, host: str, port: int) -> DTLSError:
    """The dtlskit error for a failed TCP connect."""
    where = format_address((host, port))
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return ConnectionRefused(
            errno.ECONNREFUSED, f"nothing listens at {where} (TCP connection refused)"
        )
    return TransportError(exc.errno or errno.EIO, f"cannot connect to {where}: {exc}")


def peer_of(transport_or_sock: Any) -> Address:
    """The peer address of a socket (or ``("?", 0)`` once it is gone)."""
    try:
        address = transport_or_sock.getpeername()
    except OSError:
        return ("?", 0)
    return tuple(address)


def bind_tcp_sockets(
    host: str | None, port: int, reuse_port: bool, backlog: int
) -> list[socket.socket]:
    """Listening, non-blocking TCP sockets: ``host`` None or ``""`` binds every address family
    (the IPv6 socket ``IPV6_V6ONLY``), all on the same port (the first one's, when 0 was
    asked for). Raises :class:`TransportError` naming the address."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise TransportError(exc.errno, f"cannot resolve {host!r}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    seen: set[int] = set()
    try:
        for family, kind, proto, _, address in infos[:1] if host else infos:
            if family in seen:
                continue
            seen.add(family)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and not host:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(backlog)
            sock.setblocking(False)
            if port == 0:
                port = int(sock.getsockname()[1])
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise TransportError(
            exc.errno or 0, f"cannot listen on {format_address((host or '*', port))}: {exc}"
        ) from exc
    return sockets


def recv_into_slice(buffer: Any, offset: int, length: int | None) -> tuple[memoryview, int, int]:
    """``recv_into``'s arguments checked, as the DTLS channels check them."""
    from .._frontend.channel_base import ChannelBase

    return ChannelBase._recv_into_slice(buffer, offset, length)
