"""Plain UDP echo server and client: the first chapter of every DTLS tutorial, without DTLS.

``dtlskit server --transport udp`` and ``dtlskit client --transport udp`` use this module to
show (and measure) the baseline that DTLS is layered on: no handshake, no encryption, no
retransmission. It is deliberately small and blocking, and everything is bounded: one datagram
is read at a time (at most :data:`MAX_DATAGRAM` bytes), nothing is queued, every wait has a
timeout, and socket errors become :mod:`dtlskit.exceptions` the same way the DTLS front ends
report them.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._frontend.sockets import (
    Address,
    bind_udp_sockets,
    format_address,
    make_udp_socket,
    resolve,
    translate_os_error,
)
from .exceptions import DTLSTimeoutError, TransportError

__all__ = ["MAX_DATAGRAM", "UDPClient", "UDPEchoServer", "UDPStatistics"]

MAX_DATAGRAM = 65535
"""Largest datagram read in one call (the largest UDP payload is 65507 bytes over IPv4)."""

_POLL_INTERVAL = 0.2
"""Seconds between two checks of the stop flag while the server waits for datagrams."""


@dataclass
class UDPStatistics:
    """Counters of one UDP endpoint."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    send_errors: int = 0
    """Echoes that could not be sent (the peer vanished, the buffer was full)."""


class UDPEchoServer:
    """Sends every datagram back to its sender, unchanged. One socket per resolved address.

    ``host`` None or ``""`` binds every interface (IPv4 and, where available, IPv6), by the rule
    every dtlskit server follows (:func:`dtlskit._frontend.sockets.bind_udp_sockets`). Use it
    as a context manager, run :meth:`serve_forever` and stop it with :meth:`shutdown` (from
    another thread or a signal handler); ``on_datagram(address, size)`` is called for each
    datagram received, e.g. to log it.
    """

    def __init__(
        self,
        host: str | None,
        port: int,
        *,
        on_datagram: Callable[[Address, int], None] | None = None,
    ) -> None:
        self.statistics = UDPStatistics()
        self._on_datagram = on_datagram
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        try:
            self._sockets = bind_udp_sockets(host, port)
            for sock in self._sockets:
                self._selector.register(sock, selectors.EVENT_READ)
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[Address]:
        """The bound addresses, one per socket."""
        return [tuple(sock.getsockname()) for sock in self._sockets]

    def serve_forever(self) -> None:
        """Echo datagrams until :meth:`shutdown`; returns within ``0.2`` s of it."""
        while not self._stop.is_set():
            for key, _ in self._selector.select(_POLL_INTERVAL):
                self._echo_one(key.fileobj)  # type: ignore[arg-type]

    def _echo_one(self, sock: socket.socket) -> None:
        try:
            data, address = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # an ICMP error for an earlier echo: not fatal to the server
            self.statistics.send_errors += 1
            return
        self.statistics.datagrams_received += 1
        self.statistics.bytes_received += len(data)
        if self._on_datagram is not None:
            self._on_datagram(tuple(address), len(data))
        try:
            sock.sendto(data, address)
        except OSError:
            self.statistics.send_errors += 1
            return
        self.statistics.datagrams_sent += 1
        self.statistics.bytes_sent += len(data)

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return. Safe from any thread or a signal handler."""
        self._stop.set()

    def close(self) -> None:
        """Stop and close the sockets. Idempotent."""
        self._stop.set()
        self._selector.close()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def __enter__(self) -> UDPEchoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class UDPClient:
    """A connected UDP socket: :meth:`send` a datagram, :meth:`recv` one with a timeout.

    The socket is ``connect()``-ed, so an ICMP port unreachable from the server's host surfaces
    as :class:`~dtlskit.exceptions.ConnectionRefused` on the next call.
    """

    def __init__(self, host: str, port: int) -> None:
        self.statistics = UDPStatistics()
        infos = resolve(host, port)
        if not infos:  # pragma: no cover - getaddrinfo raises instead
            raise TransportError(errno.EADDRNOTAVAIL, f"{host!r} resolved to no address")
        family, self.peer = infos[0]
        self._sock = make_udp_socket(family, connect=self.peer, blocking=True)

    def send(self, data: bytes) -> None:
        """Send one datagram."""
        try:
            sent = self._sock.send(data)
        except OSError as exc:
            raise translate_os_error(exc, "send to", self.peer) from exc
        self.statistics.datagrams_sent += 1
        self.statistics.bytes_sent += sent

    def recv(self, timeout: float) -> bytes:
        """The next datagram; raises :class:`DTLSTimeoutError` after ``timeout`` seconds."""
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(MAX_DATAGRAM)
        except TimeoutError:
            raise DTLSTimeoutError(
                f"no datagram from {format_address(self.peer)} within {timeout:g} s "
                "(UDP has no retransmission: it may have been lost)"
            ) from None
        except OSError as exc:
            raise translate_os_error(exc, "receive from", self.peer) from exc
        self.statistics.datagrams_received += 1
        self.statistics.bytes_received += len(data)
        return data

    def close(self) -> None:
        """Close the socket. Idempotent."""
        self._sock.close()

    def __enter__(self) -> UDPClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
