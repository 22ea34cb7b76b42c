"""asyncio DTLS client: :func:`connect`.

The client's UDP socket is ``connect()``-ed to the server and driven by a
:class:`ClientDriver` (``loop.add_reader`` and batched reads, like the server's driver). The
kernel reports an ICMP error (port unreachable as ``ECONNREFUSED``, host unreachable, ...) on
the next read or send of that socket, and
:func:`dtlskit._frontend.channel_base.client_socket_error` decides, as in the blocking flavour:
during the handshake it fails at once (port unreachable is
:class:`~dtlskit.exceptions.ConnectionRefused`) instead of waiting for the handshake deadline;
after it the session ends with :class:`~dtlskit.exceptions.ConnectionLost` naming the cause.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import weakref
from collections.abc import Generator
from typing import Any

from .._frontend import accel as _accel
from .._frontend.channel_base import (
    FailOver,
    client_socket_error,
    fresh_error,
    should_fail_over,
    terminal_error,
)
from .._frontend.sockets import (
    Address,
    AddrInfo,
    check_port,
    format_address,
    make_udp_socket,
    size_receive_buffer,
    sort_addresses,
    translate_os_error,
)
from ..config import DTLSConfiguration
from ..core import events as ev
from ..core.connection import DTLSConnection
from ..core.session import Session
from ..exceptions import (
    ConfigurationError,
    ConnectionLost,
    ConnectionRefused,
    DTLSError,
    HandshakeTimeout,
    TransportError,
)
from .channel import Channel
from .driver import BATCH, SocketDriver

__all__ = ["connect"]

logger = logging.getLogger("dtlskit.client")


class ClientDriver(SocketDriver):
    """The driver of a client's connected socket: one engine, one channel.

    The mirror image of the blocking client's I/O thread: each wake-up reads a batch
    (:func:`dtlskit._frontend.accel.recv_batch`, up to :data:`BATCH` datagrams) into the engine; an
    established session's records take the engine's fast path straight to the channel's inbox,
    and a batch that only took it skips the transmit/drain/re-arm step
    (:meth:`~dtlskit.core.connection.DTLSConnection.has_work`). Sends and the bounded backlog
    are the server driver's (:class:`~dtlskit.asyncio.driver.SocketDriver`). A socket error
    (an ICMP error on the connected socket included) goes to
    :func:`~dtlskit._frontend.channel_base.client_socket_error`, as in the blocking flavour.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: DTLSConnection,
        sock: socket.socket,
        peer: Address,
        deadline: float,
        limit: float,
        new_port_after: int | None = None,
    ) -> None:
        super().__init__(loop, sock)
        self._engine = engine
        self._peer = peer
        self._channel: weakref.ref[Channel] | None = None
        self._handshake_deadline = deadline
        self._limit = limit
        self._established = False
        self._new_port_after = new_port_after
        self._failed_over = False
        self.handshake: asyncio.Future[None] = loop.create_future()

    def attach(self, channel: Channel) -> None:
        """Deliver this socket's events to ``channel`` (held weakly: an abandoned channel warns)."""
        self._channel = weakref.ref(channel)

    # -- reading --------------------------------------------------------------------------------

    def on_readable(self) -> None:
        """The socket is readable: feed a batch to the engine, then do what it asks."""
        if self._closed:
            return
        batch, error = _accel.recv_batch(self.sock, BATCH)
        engine = self._engine
        if batch:
            now = self._loop.time()
            receive = engine.receive_datagram
            for data, _ in batch:
                receive(data, now)
        if error is not None:
            self._socket_failed(error)
        # Established: a batch that only took the engine's fast path needs no drain or re-arm.
        if not self._established or engine.has_work():
            self.flush()

    # -- SocketDriver ---------------------------------------------------------------------------

    def _count_drop(self, reason: str) -> None:
        self._engine._drop(reason)

    def _send_failed(self, exc: OSError, address: Address | None) -> DTLSError | None:
        error = self._socket_failed(exc)
        self.flush()  # the session may have ended: tell its channel (re-entry safe)
        return error

    def _socket_failed(self, exc: OSError) -> DTLSError:
        logger.debug("socket error from %s: %s", format_address(self._peer), exc)
        if exc.errno == errno.EMSGSIZE:
            self._count_drop("send_failed")  # the session survives it
        return client_socket_error(self._engine, exc, self._peer)

    # -- Endpoint -------------------------------------------------------------------------------

    def _transmit(self) -> None:
        datagrams = self._engine.datagrams_to_send(self.now())
        if datagrams:
            self._send_items([(datagram, None) for datagram in datagrams])

    def _drain(self) -> None:
        engine = self._engine
        channel = self._channel() if self._channel is not None else None
        while (event := engine.next_event()) is not None:
            if isinstance(event, ev.HandshakeCompleted):
                self._established = True
            if self.handshake.done():
                pass
            elif isinstance(event, ev.HandshakeCompleted):
                self.handshake.set_result(None)
            elif isinstance(event, ev.SessionClosed | ev.ConnectionTerminated):
                self.handshake.set_exception(fresh_error(terminal_error(engine, event)))
            if channel is not None:
                channel._handle_event(event)

    def _deadline(self) -> float | None:
        if self._failed_over:
            return None
        deadline = self._engine.get_timer()
        if not self.handshake.done() and (deadline is None or self._handshake_deadline < deadline):
            deadline = self._handshake_deadline
        return deadline

    def _on_deadline(self, now: float) -> None:
        if not self.handshake.done() and now >= self._handshake_deadline:
            self._engine.abort(
                HandshakeTimeout(
                    f"handshake with {format_address(self._peer)} did not complete within "
                    f"{self._limit:g} s"
                )
            )
            return
        fail_over = not self.handshake.done() and should_fail_over(
            self._engine, self._new_port_after, now
        )
        self._engine.handle_timer(now)  # the flight goes out once more on this port
        if fail_over:
            self._failed_over = True  # no answer at all: _open starts again from a new port
            self.handshake.set_exception(FailOver())

    def channel_closed(self, channel: Channel) -> None:
        self._close_socket()

    async def wait_channel_closed(self, channel: Channel) -> None:
        await self.wait_lost()

    def channel_abandoned(self, engine: DTLSConnection) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close_abandoned)

    def _close_abandoned(self) -> None:
        if self._closed:
            return
        self._engine.close()
        self.flush()
        self._close_socket()

    def _close_socket(self) -> None:
        """Close the socket; a session still running ends with ConnectionLost."""
        if self._closed:
            return
        self._release_socket()
        self._engine.abort(ConnectionLost(f"the socket to {format_address(self._peer)} closed"))
        self.flush()


class _Connector:
    """What :func:`connect` returns: await it, or use it as an async context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        config: DTLSConfiguration | None,
        local_addr: Address | None,
        timeout: float | None,
        server_hostname: str | None,
        session: Session | None,
    ) -> None:
        self._args = (host, port, config, local_addr, timeout, server_hostname, session)
        self._channel: Channel | None = None

    def __await__(self) -> Generator[Any, None, Channel]:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> Channel:
        self._channel = await _open(*self._args)
        return self._channel

    async def __aexit__(self, *exc_info: object) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
            await channel.wait_closed()


def connect(
    host: str,
    port: int,
    *,
    config: DTLSConfiguration | None = None,
    local_addr: Address | None = None,
    timeout: float | None = None,
    server_hostname: str | None = None,
    session: Session | None = None,
) -> _Connector:
    """Open a DTLS session to ``host``:``port``; ``await`` it or use ``async with``.

    ``config`` defaults to ``DTLSConfiguration.client()`` (system CAs, hostname checked). The
    name checked against the certificate and sent in SNI is ``server_hostname``, else
    ``config.server_hostname``, else ``host``. ``timeout`` (default
    ``config.handshake_timeout``) covers name resolution and the whole handshake and raises
    :class:`~dtlskit.exceptions.HandshakeTimeout`. Resolved addresses are tried in order while a
    socket cannot be opened or the host answers with an ICMP error (port unreachable:
    ConnectionRefused; host unreachable: TransportError); any other handshake failure is
    final. ``session`` (from an earlier channel's :attr:`Channel.session`) asks the server to
    resume it; :attr:`Channel.session_reused` tells whether it did.
    """
    return _Connector(host, port, config, local_addr, timeout, server_hostname, session)


async def _open(
    host: str,
    port: int,
    config: DTLSConfiguration | None,
    local_addr: Address | None,
    timeout: float | None,
    server_hostname: str | None,
    session: Session | None,
) -> Channel:
    loop = asyncio.get_running_loop()
    config = config if config is not None else DTLSConfiguration.client()
    limit = config.handshake_timeout if timeout is None else float(timeout)
    if not limit > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    deadline = loop.time() + limit
    name = server_hostname or config.server_hostname or host
    addresses = await _resolve(loop, host, port, limit)
    engine_config = config
    if limit != config.handshake_timeout:
        engine_config = config.replace(handshake_timeout=limit)
    failure: DTLSError = TransportError(
        errno.EADDRNOTAVAIL, f"{host!r} resolved to no usable address"
    )
    new_port_after = config.new_port_after_lost_flights
    if local_addr is not None and local_addr[1] != 0:
        new_port_after = None  # a fixed source port cannot change
    for family, peer in addresses:
        try:
            sock = make_udp_socket(family, bind=local_addr, connect=peer)
            size_receive_buffer(sock, config.recv_buffer_size)
        except TransportError as exc:
            logger.debug("cannot use %s for %r: %s", format_address(peer), host, exc)
            failure = exc
            continue
        try:
            while True:
                try:
                    return await _attempt(
                        loop, sock, peer, engine_config, name, deadline, limit, session,
                        new_port_after,
                    )
                except FailOver:
                    # No answer at all: again from a new source port (a balancer may pick a
                    # live node for it), within the same deadline.
                    logger.debug("no answer from %s: new source port", format_address(peer))
                    sock = make_udp_socket(family, bind=local_addr, connect=peer)
                    size_receive_buffer(sock, config.recv_buffer_size)
        except (ConnectionRefused, TransportError) as exc:
            logger.debug("%s refused or failed: %s", format_address(peer), exc)
            failure = exc
            if loop.time() >= deadline:
                break
    raise failure


async def _attempt(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    peer: Address,
    engine_config: DTLSConfiguration,
    name: str,
    deadline: float,
    limit: float,
    session: Session | None,
    new_port_after: int | None = None,
) -> Channel:
    """One handshake over ``sock`` (connected to ``peer``); the socket is closed on failure.
    Raises :class:`FailOver` when the handshake should start again from a new port."""
    try:
        engine = DTLSConnection(
            engine_config, server=False, peer_address=peer, server_hostname=name, session=session
        )
        driver = ClientDriver(loop, engine, sock, peer, deadline, limit, new_port_after)
        driver.start()
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError) and not isinstance(exc, TransportError):
            raise translate_os_error(exc, "open a socket to", peer) from exc
        raise
    channel = Channel(engine, driver, sock, peer, owns_socket=True)
    driver.attach(channel)
    engine.connect(loop.time())
    driver.flush()
    try:
        await driver.handshake
    except asyncio.CancelledError:
        _settle(driver.handshake)
        channel.close()
        raise
    except BaseException:
        channel.close()
        await channel.wait_closed()
        raise
    logger.debug("connected to %s (%s, %s)", format_address(peer), channel.version, channel.cipher)
    return channel


async def _resolve(
    loop: asyncio.AbstractEventLoop, host: str, port: int, limit: float
) -> list[AddrInfo]:
    check_port(port)
    # Not asyncio.wait_for: on Python 3.10/3.11 it returns the result of a lookup that finishes
    # as the caller is cancelled, swallowing the cancel. asyncio.wait never does.
    lookup = asyncio.ensure_future(
        loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    )
    try:
        done, _ = await asyncio.wait({lookup}, timeout=limit)
    except BaseException:
        _settle(lookup)
        raise
    if not done:
        _settle(lookup)
        raise HandshakeTimeout(f"resolving {host!r} took longer than {limit:g} s")
    try:
        infos = lookup.result()
    except socket.gaierror as exc:
        raise TransportError(exc.errno, f"cannot resolve {host!r}: {exc.strerror}") from exc
    addresses = sort_addresses(infos)
    if not addresses:  # pragma: no cover - getaddrinfo raises instead
        raise TransportError(errno.EADDRNOTAVAIL, f"{host!r} resolved to no address")
    return addresses


def _settle(future: asyncio.Future[Any]) -> None:
    """Give up on ``future``: cancel it if pending, and mark a failure it has (or will get)
    as retrieved, so that asyncio never logs "exception was never retrieved" for it."""
    future.cancel()
    future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
