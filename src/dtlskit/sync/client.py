"""Blocking DTLS client: :func:`connect` returns a :class:`~dtlskit.sync.Channel` after the
handshake.

The handshake runs on the channel's I/O thread; the calling thread waits for it on an event,
bounded by ``timeout`` (which also bounds name resolution: a host name is resolved on a
short-lived thread). The UDP socket is ``connect()``-ed, so an ICMP error comes back on the next
read or send; :func:`dtlskit._frontend.channel_base.client_socket_error` maps it as in the asyncio
flavour: port unreachable fails the handshake at once with
:class:`~dtlskit.exceptions.ConnectionRefused` instead of after the timeout, and ends an
established session with :class:`~dtlskit.exceptions.ConnectionLost`.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
import weakref
from typing import Any

from .._frontend import sockets as _sockets
from .._frontend.channel_base import FailOver, client_socket_error, fresh_error, should_fail_over
from ..config import DTLSConfiguration
from ..core import events as ev
from ..core.connection import DTLSConnection, State
from ..core.session import Session
from ..exceptions import (
    ConfigurationError,
    ConnectionRefused,
    DTLSError,
    HandshakeFailure,
    HandshakeTimeout,
    TransportError,
)
from .channel import Channel, IOThread

__all__ = ["connect"]

Address = tuple[Any, ...]

BATCH = 64
"""Datagrams read per wake-up (one ``recvmmsg`` with the accelerator)."""


class _ClientIO(IOThread):
    """The I/O thread of one client channel: a connected socket and one ``DTLSConnection``."""

    batch_size = BATCH

    def __init__(
        self,
        sock: socket.socket,
        engine: DTLSConnection,
        peer: Address,
        new_port_after: int | None = None,
    ) -> None:
        super().__init__(sock, name=f"dtlskit-client-{_sockets.format_address(peer)}")
        self.engine: DTLSConnection = engine
        self.peer = peer
        self.handshake_done = threading.Event()
        """Set when the handshake completed or the session ended before that."""
        self.established = False
        self._new_port_after = new_port_after
        self.failed_over = False
        """Set (with :attr:`handshake_done`) when the handshake should start again from a new
        source port (see :func:`dtlskit._channel_base.should_fail_over`)."""
        self._channel: weakref.ref[Channel] | None = None

    def attach(self, channel: Channel) -> None:
        self._channel = weakref.ref(channel)

    def _channel_now(self) -> Channel | None:
        return None if self._channel is None else self._channel()

    def _start_locked(self, now: float) -> None:
        if self.engine.state is State.INITIAL:
            self.engine.connect(now)

    def _get_timer_locked(self) -> float | None:
        return None if self.failed_over else self.engine.get_timer()

    def _handle_timer_locked(self, now: float) -> None:
        fail_over = not self.established and should_fail_over(
            self.engine, self._new_port_after, now
        )
        self.engine.handle_timer(now)  # the flight goes out once more on this port
        if fail_over:
            self.failed_over = True
            self.handshake_done.set()

    def _feed_locked(
        self, batch: list[tuple[bytes, Address]], error: OSError | None, now: float
    ) -> None:
        receive = self.engine.receive_datagram
        for data, _ in batch:
            receive(data, now)
        if error is not None:
            self._socket_failed_locked(error)

    def _has_work_locked(self) -> bool:
        # Established: a batch that only took the engine's fast path needs no drain or re-arm.
        return not self.established or self.engine.has_work()

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
        elif isinstance(event, ev.SessionClosed | ev.ConnectionTerminated):
            if channel is not None:
                channel._handle_event(event)
            self.handshake_done.set()

    def _send_failed_locked(self, exc: OSError, address: Address | None) -> DTLSError:
        return self._socket_failed_locked(exc)

    def _socket_failed_locked(self, exc: OSError) -> DTLSError:
        """A socket error on the connected socket (ICMP errors included): see
        :func:`~dtlskit._frontend.channel_base.client_socket_error`."""
        if exc.errno == errno.EMSGSIZE:
            self.count_drop_locked("send_failed")  # the session survives it
        return client_socket_error(self.engine, exc, self.peer)

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
    a socket cannot be set up or the host answers with an ICMP error (port unreachable:
    ConnectionRefused; host unreachable: TransportError); any other handshake failure is
    final. ``server_hostname`` (SNI and certificate check) defaults to
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
    infos = _resolve(host, port, deadline, timeout)
    last_error: DTLSError | None = None
    new_port_after = config.new_port_after_lost_flights
    if local_addr is not None and local_addr[1] != 0:
        new_port_after = None  # a fixed source port cannot change
    for family, address in infos:
        try:
            sock = _sockets.make_udp_socket(family, bind=local_addr, connect=address)
            _sockets.size_receive_buffer(sock, config.recv_buffer_size)
        except TransportError as exc:
            last_error = exc
            continue
        try:
            while True:
                try:
                    return _handshake(
                        sock, address, config, context, name, deadline, timeout, session,
                        new_port_after,
                    )
                except FailOver:
                    # No answer at all: again from a new source port (a balancer may pick a
                    # live node for it), within the same deadline.
                    sock = _sockets.make_udp_socket(family, bind=local_addr, connect=address)
                    _sockets.size_receive_buffer(sock, config.recv_buffer_size)
        except (ConnectionRefused, TransportError) as exc:
            last_error = exc
            if time.monotonic() >= deadline:
                break
    if last_error is None:  # pragma: no cover - getaddrinfo never returns an empty list
        raise TransportError(errno.EADDRNOTAVAIL, f"{host!r} resolved to no address")
    raise last_error


def _resolve(host: str, port: int, deadline: float, timeout: float) -> list[_sockets.AddrInfo]:
    """Resolve ``host`` by ``deadline`` (:class:`HandshakeTimeout` naming ``timeout`` after it).

    An IP address is resolved here at once; a name on a short-lived daemon thread, since
    getaddrinfo cannot be interrupted: one that outlives the timeout finishes on its own and
    its answer is dropped.
    """
    _sockets.check_port(port)
    with contextlib.suppress(TransportError):
        return _sockets.resolve(host, port, numeric=True)
    outcome: list[list[_sockets.AddrInfo] | BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            outcome.append(_sockets.resolve(host, port))
        except BaseException as exc:  # handed to the caller
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=work, name=f"dtlskit-resolve-{host}", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise HandshakeTimeout(f"resolving {host!r} took longer than {timeout:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _handshake(
    sock: socket.socket,
    address: Address,
    config: DTLSConfiguration,
    context: Any,
    server_hostname: str,
    deadline: float,
    timeout: float,
    session: Session | None,
    new_port_after: int | None = None,
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
        io = _ClientIO(sock, engine, address, new_port_after)
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
    if io.failed_over and time.monotonic() < deadline:
        raise FailOver
    if error is None:  # pragma: no cover - an ended handshake always records why
        error = HandshakeFailure(f"handshake with {_sockets.format_address(address)} failed")
    raise fresh_error(error)
