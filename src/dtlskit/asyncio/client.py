"""asyncio DTLS client: :func:`connect`.

The client's UDP socket is ``connect()``-ed to the server, so the kernel reports an ICMP error
(port unreachable as ``ECONNREFUSED``, host unreachable, ...); asyncio hands it to
``error_received`` and :func:`dtlskit._channel_base.client_socket_error` decides, as in the
blocking flavour: during the handshake it fails at once (port unreachable is
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

from .._channel_base import client_socket_error, fresh_error, terminal_error
from .._sockets import (
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
from .channel import Channel, Endpoint

__all__ = ["connect"]

logger = logging.getLogger("dtlskit.client")


class _ClientEndpoint(Endpoint):
    """The protocol of a client's connected socket: one engine, one channel."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: DTLSConnection,
        peer: Address,
        deadline: float,
        limit: float,
    ) -> None:
        super().__init__(loop)
        self._engine = engine
        self._peer = peer
        self._channel: weakref.ref[Channel] | None = None
        self._handshake_deadline = deadline
        self._limit = limit
        self.handshake: asyncio.Future[None] = loop.create_future()

    def attach(self, channel: Channel) -> None:
        """Deliver this socket's events to ``channel`` (held weakly: an abandoned channel warns)."""
        self._channel = weakref.ref(channel)

    # -- Endpoint -------------------------------------------------------------------------------

    def _transmit(self) -> None:
        for datagram in self._engine.datagrams_to_send(self.now()):
            self._sendto(datagram, None)

    def _drain(self) -> None:
        engine = self._engine
        channel = self._channel() if self._channel is not None else None
        while (event := engine.next_event()) is not None:
            if self.handshake.done():
                pass
            elif isinstance(event, ev.HandshakeCompleted):
                self.handshake.set_result(None)
            elif isinstance(event, ev.SessionClosed | ev.ConnectionTerminated):
                self.handshake.set_exception(fresh_error(terminal_error(engine, event)))
            if channel is not None:
                channel._handle_event(event)

    def _deadline(self) -> float | None:
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
        self._engine.handle_timer(now)

    def channel_closed(self, channel: Channel) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_channel_closed(self, channel: Channel) -> None:
        await self.wait_lost()

    def channel_abandoned(self, engine: DTLSConnection) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close_abandoned)

    def _close_abandoned(self) -> None:
        self._engine.close()
        self.flush()
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.DatagramProtocol ---------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._engine.receive_datagram(data, self.now())
        self.flush()

    def error_received(self, exc: Exception) -> None:
        if not isinstance(exc, OSError):  # pragma: no cover - asyncio reports OSError only
            logger.debug("socket error from %s ignored: %r", format_address(self._peer), exc)
            return
        logger.debug("socket error from %s: %s", format_address(self._peer), exc)
        error = client_socket_error(self._engine, exc, self._peer)
        if self._sending:
            self._send_failure = error  # the Channel.send that caused it raises it
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
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
    for family, peer in addresses:
        try:
            sock = make_udp_socket(family, bind=local_addr, connect=peer)
            size_receive_buffer(sock, config.recv_buffer_size)
        except TransportError as exc:
            logger.debug("cannot use %s for %r: %s", format_address(peer), host, exc)
            failure = exc
            continue
        try:
            return await _attempt(loop, sock, peer, engine_config, name, deadline, limit, session)
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
) -> Channel:
    """One handshake over ``sock`` (connected to ``peer``); the socket is closed on failure."""
    endpoint: _ClientEndpoint | None = None
    try:
        engine = DTLSConnection(
            engine_config, server=False, peer_address=peer, server_hostname=name, session=session
        )
        endpoint = _ClientEndpoint(loop, engine, peer, deadline, limit)
        await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
    except BaseException as exc:
        if endpoint is not None:
            # Cancelled while asyncio set the socket up: it closes the transport, whose
            # connection_lost would fail a handshake future nobody awaits any more.
            _settle(endpoint.handshake)
        sock.close()
        if isinstance(exc, OSError) and not isinstance(exc, TransportError):
            raise translate_os_error(exc, "open a socket to", peer) from exc
        raise
    channel = Channel(engine, endpoint, sock, peer, owns_socket=True)
    endpoint.attach(channel)
    engine.connect(loop.time())
    endpoint.flush()
    try:
        await endpoint.handshake
    except asyncio.CancelledError:
        _settle(endpoint.handshake)
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
