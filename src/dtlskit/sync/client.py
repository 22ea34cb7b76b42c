"""Blocking DTLS client: :func:`connect` returns a :class:`~dtlskit.sync.Channel` after the
handshake.

The handshake runs on the channel's I/O thread; the calling thread waits for it on an event,
bounded by ``timeout``. The UDP socket is ``connect()``-ed, so an ICMP port unreachable comes
back as ``ECONNREFUSED`` on the next read and fails the handshake at once with
:class:`~dtlskit.exceptions.ConnectionRefused` instead of after the timeout.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
import weakref
from typing import Any

from .. import _sockets
from .._channel_base import fresh_error, send_error
from ..config import DTLSConfiguration
from ..core import events as ev
from ..core.connection import DTLSConnection, State
from ..core.session import Session
from ..exceptions import (
    ConfigurationError,
    ConnectionLost,
    ConnectionRefused,
    DTLSError,
    HandshakeFailure,
    HandshakeTimeout,
    TransportError,
)
from .channel import Channel, IOThread

__all__ = ["connect"]

Address = tuple[Any, ...]


class _ClientIO(IOThread):
    """The I/O thread of one client channel: a connected socket and one ``DTLSConnection``."""

    def __init__(self, sock: socket.socket, engine: DTLSConnection, peer: Address) -> None:
        super().__init__(sock, name=f"dtlskit-client-{_sockets.format_address(peer)}")
        self.engine = engine
        self.peer = peer
        self.handshake_done = threading.Event()
        """Set when the handshake completed or the session ended before that."""
        self.established = False
        self._channel: weakref.ref[Channel] | None = None

    def attach(self, channel: Channel) -> None:
        self._channel = weakref.ref(channel)

    def _channel_now(self) -> Channel | None:
        return None if self._channel is None else self._channel()

    def _start_locked(self, now: float) -> None:
        if self.engine.state is State.INITIAL:
            self.engine.connect(now)

    def _receive_locked(self, now: float) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._socket_failed_locked(exc)
                return
            self.engine.receive_datagram(data, now)

    def _get_timer_locked(self) -> float | None:
        return self.engine.get_timer()

    def _handle_timer_locked(self, now: float) -> None:
        self.engine.handle_timer(now)

    def _drain_locked(self) -> bool:
        progressed = False
        while (event := self.engine.next_event()) is not None:
            progressed = True
            self._dispatch(event)
        datagrams = self.engine.datagrams_to_send()
        if datagrams:
            progressed = True
            self.transmit_locked(datagrams, None)
        return progressed

    def _dispatch(self, event: ev.Event) -> None:
        channel = self._channel_now()
        if isinstance(event, ev.HandshakeCompleted):
            self.established = True
            self.handshake_done.set()
        elif isinstance(event, ev.MessageReceived):
            if channel is not None:
                channel._handle_event(event)
        elif isinstance(event, ev.ConnectionClosed | ev.ConnectionTerminated):
            if channel is not None:
                channel._handle_event(event)
            self.handshake_done.set()

    def _send_failed_locked(self, exc: OSError, address: Address | None) -> DTLSError:
        return self._socket_failed_locked(exc)

    def _socket_failed_locked(self, exc: OSError) -> DTLSError:
        """A socket error on the connected socket ends the session (ICMP errors included)."""
        if self.engine.state in (State.INITIAL, State.HANDSHAKING):
            error = _sockets.translate_os_error(exc, "connect to", self.peer)
        elif exc.errno == errno.ECONNREFUSED:
            error = ConnectionLost(
                f"{_sockets.format_address(self.peer)} is gone: its host answered port unreachable"
            )
        else:
            error = send_error(exc, self.peer, self.engine.mtu)
            if exc.errno == errno.EMSGSIZE:
                self.count_drop_locked("send_failed")
                return error  # the session survives a datagram that was too large
        error.__cause__ = exc
        self.engine.abort(error)
        return error

    def _abort_all_locked(self, error: DTLSError) -> None:
        self.engine.abort(error)


def connect(
    host: str,
    port: int,
    *,
    config: DTLSConfiguration | None = None,
    local_addr: Address | None = None,
    timeout: float | None = None,
    server_hostname: str | None = None,
    session: Session | None = None,
) -> Channel:
    """Open a DTLS session with ``host:port`` and return its :class:`Channel`.

    ``timeout`` (default ``config.handshake_timeout``) bounds name resolution plus the whole
    handshake and raises :class:`HandshakeTimeout`. Resolved addresses are tried in order while
    a socket cannot be set up or the host refuses (ICMP port unreachable); any other handshake
    failure is final. ``server_hostname`` (SNI and certificate check) defaults to
    ``config.server_hostname``, then to ``host``. ``session`` (from an earlier channel's
    :attr:`Channel.session`) asks the server to resume it; :attr:`Channel.session_reused` tells
    whether it did. The channel is also a context manager.
    """
    if config is None:
        config = DTLSConfiguration.client()
    if timeout is None:
        timeout = config.handshake_timeout
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    deadline = time.monotonic() + timeout
    if timeout != config.handshake_timeout:  # the engine's own deadline follows ``timeout``
        config = config.replace(handshake_timeout=timeout)
    name = server_hostname or config.server_hostname or host
    context = config.context(server=False)
    infos = _sockets.resolve(host, port)
    last_error: DTLSError | None = None
    for family, address in infos:
        try:
            sock = _sockets.make_udp_socket(family, bind=local_addr, connect=address)
        except TransportError as exc:
            last_error = exc
            continue
        try:
            return _handshake(sock, address, config, context, name, deadline, timeout, session)
        except (ConnectionRefused, TransportError) as exc:
            last_error = exc
            if time.monotonic() >= deadline:
                break
    if last_error is None:  # pragma: no cover - getaddrinfo never returns an empty list
        raise TransportError(errno.EADDRNOTAVAIL, f"{host!r} resolved to no address")
    raise last_error


def _handshake(
    sock: socket.socket,
    address: Address,
    config: DTLSConfiguration,
    context: Any,
    server_hostname: str,
    deadline: float,
    timeout: float,
    session: Session | None,
) -> Channel:
    try:
        engine = DTLSConnection(
            config,
            server=False,
            peer_address=address,
            context=context,
            server_hostname=server_hostname,
            session=session,
        )
        io = _ClientIO(sock, engine, address)
    except BaseException:
        sock.close()
        raise
    channel = Channel(engine, io, address, owns_io=True)
    io.attach(channel)
    try:
        io.start()
        io.handshake_done.wait(max(0.0, deadline - time.monotonic()))
        with io.lock:
            if not io.established and engine.state in (State.INITIAL, State.HANDSHAKING):
                engine.abort(
                    HandshakeTimeout(
                        f"handshake with {_sockets.format_address(address)} did not complete "
                        f"within {timeout:g} s"
                    )
                )
                io.pump_locked()
            error = engine.error
        if io.established:
            return channel
    except BaseException:
        channel._abandon()
        io.stop()
        raise
    channel._abandon()
    io.stop()
    if error is None:  # pragma: no cover - an ended handshake always records why
        error = HandshakeFailure(f"handshake with {_sockets.format_address(address)} failed")
    raise fresh_error(error)
