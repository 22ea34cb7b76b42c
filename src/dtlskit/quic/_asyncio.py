"""The asyncio QUIC front end: ``dtlskit.quic.connect`` / ``serve``, channels and streams.

Theory of operation
-------------------
Each UDP socket has one :class:`_Endpoint` (an :class:`asyncio.DatagramProtocol`). Every
wake-up — a datagram arrived, a session's timer expired, the user sent or closed — ends in
:meth:`_Endpoint.flush` for the session concerned: transmit what it queued
(``datagrams_to_send``), wake the tasks waiting on its channel (they look at the session's
state again), re-arm the session's ``loop.call_at`` timer when its deadline moved, and forget
the session once it is over. The policy — streams as messages, bounds, deadlines, errors — is
in :mod:`dtlskit.quic._engine`, shared with the blocking flavour, and so is what both front
ends do alike (sockets, routing, handshake book-keeping, channel state:
:mod:`dtlskit.quic._frontend`); this module moves bytes and time. The clock is ``loop.time()``.

A server socket's endpoint routes datagrams through :class:`QuicServerEngine` (by connection
ID) and starts one handler task per connection once its handshake completes; the handler's
return closes the connection (CONNECTION_CLOSE, code 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from ..config import DTLSConfiguration
from ..exceptions import (
    ConcurrencyError,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    DTLSError,
)
from ._engine import QuicServerEngine, QuicSession, QuicStatistics
from ._frontend import (
    ChannelBase,
    HandshakeBook,
    StreamBase,
    check_config,
    client_bind_address,
    handler_outcome,
    pick_address,
    resolution_error,
    route_datagram,
    server_statistics,
    socket_error,
    udp_socket,
)
from .sansio import client_session, server_engine

__all__ = ["QuicChannel", "QuicServer", "QuicStream", "connect", "serve"]

Handler = Callable[["QuicChannel"], Awaitable[None]]


class _Endpoint(asyncio.DatagramProtocol):
    """One socket: feeds sessions, transmits their datagrams, keeps their timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.channels: dict[QuicSession, QuicChannel] = {}
        self._timers: dict[QuicSession, tuple[float, asyncio.TimerHandle]] = {}
        self.error: DTLSError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in self._timers.values():
            handle[1].cancel()
        self._timers.clear()

    def error_received(self, exc: Exception) -> None:
        self.error = socket_error(exc) or self.error
        for channel in list(self.channels.values()):
            channel._wake()

    def flush(self, session: QuicSession) -> None:
        """Transmit, wake waiters, re-arm the timer, forget the session once it is over."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            for data, address in session.datagrams_to_send(self.loop.time()):
                transport.sendto(data, address)
        self._session_changed(session)
        deadline = session.get_timer()
        current = self._timers.get(session)
        if deadline is None:
            if current is not None:
                current[1].cancel()
                del self._timers[session]
        elif current is None or current[0] != deadline:
            if current is not None:
                current[1].cancel()
            self._timers[session] = (deadline, self.loop.call_at(deadline, self._fire, session))
        if session.finished:
            self._forget(session)

    def _fire(self, session: QuicSession) -> None:
        self._timers.pop(session, None)
        session.handle_timer(self.loop.time())
        self.flush(session)

    def _session_changed(self, session: QuicSession) -> None:
        channel = self.channels.get(session)
        if channel is not None:
            channel._wake()

    def _forget(self, session: QuicSession) -> None:
        current = self._timers.pop(session, None)
        if current is not None:
            current[1].cancel()


class _ClientEndpoint(_Endpoint):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.session: QuicSession | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        session = self.session
        if session is not None:
            session.receive_datagram(data, addr, self.loop.time())
            self.flush(session)


class QuicStream(StreamBase):
    """One QUIC stream used directly: read it to FIN, write it (and FIN)."""

    _channel: QuicChannel

    async def read(self) -> bytes:
        """Everything the peer writes on this stream, up to its FIN (at most
        ``max_stream_bytes``: a longer stream is refused with :class:`StreamError`)."""
        channel = self._channel
        session = channel._session
        while not self._ended:
            if not self._take(session):
                await channel._wait(self.stream_id)
        return self._whole(session)

    async def write(self, data: bytes | bytearray | memoryview, *, end: bool = False) -> None:
        """Write ``data``; with ``end=True`` send FIN after it."""
        channel = self._channel
        channel._session.write_stream(self.stream_id, bytes(data), end)
        channel._flush()
        await channel._writable()

    async def end(self) -> None:
        """Send FIN (no more data from us on this stream)."""
        await self.write(b"", end=True)

    def reset(self, error_code: int = 0) -> None:
        """Abandon the stream both ways (RESET_STREAM and STOP_SENDING with ``error_code``)."""
        self._channel._session.reset_stream(self.stream_id, error_code)
        self._channel._flush()


class QuicChannel(ChannelBase):
    """A QUIC connection with the DTLS channel's shape: ``send()`` opens a stream, writes the
    message and FIN; ``recv()`` returns the next stream the peer ended with FIN (one the peer
    opened, or its answer on one ``send()`` opened). Streams are also reachable directly
    (:meth:`open_stream`, :meth:`accept_stream`, :meth:`request`), and RFC 9221 datagrams
    when the connection was made with ``datagrams=True``."""

    def __init__(
        self, endpoint: _Endpoint, session: QuicSession, peer: Any, sock: socket.socket
    ) -> None:
        self._endpoint = endpoint
        self._session = session
        self._peer = peer
        self._sock = sock
        self._waiters: list[asyncio.Future[None]] = []
        self._readers: dict[int, asyncio.Future[None]] = {}
        self._receiving = False
        self._transport_owner = False
        endpoint.channels[session] = self

    # -- plumbing -------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Wake the tasks whose condition may have changed: every general waiter (recv,
        accept, datagrams, handshake), and the readers of the streams that got something (all
        of them once the connection has ended)."""
        session = self._session
        touched = session.touched
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        readers = self._readers
        if readers:
            if session.error is not None or self._endpoint.error is not None:
                chosen = list(readers)
            else:
                chosen = [stream_id for stream_id in touched if stream_id in readers]
            for stream_id in chosen:
                waiter = readers.pop(stream_id)
                if not waiter.done():
                    waiter.set_result(None)
        touched.clear()

    async def _wait(self, stream_id: int | None = None) -> None:
        session = self._session
        if session.error is not None:
            raise session.error
        if self._endpoint.error is not None and not session.handshake_complete:
            raise self._endpoint.error
        waiter = self._endpoint.loop.create_future()
        if stream_id is None:
            self._waiters.append(waiter)
        else:
            self._readers[stream_id] = waiter
        try:
            await waiter
        finally:
            if not waiter.done() or waiter.cancelled():  # cancelled: do not keep it
                if stream_id is None:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                elif self._readers.get(stream_id) is waiter:
                    del self._readers[stream_id]

    def _flush(self) -> None:
        self._endpoint.flush(self._session)

    async def _writable(self) -> None:
        return None

    async def _handshake(self) -> None:
        while not self._session.handshake_complete:
            await self._wait()

    # -- messages ------------------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Open a stream, write ``data`` on it and FIN."""
        self._session.send_message(data)  # type: ignore[arg-type]
        self._flush()

    async def recv(self) -> bytes:
        """The next stream the peer ended with FIN (see the class docstring)."""
        if self._receiving:
            raise ConcurrencyError("another task is already waiting in recv() on this channel")
        self._receiving = True
        try:
            session = self._session
            while True:
                message = session.next_message()
                if message is not None:
                    self._flush()
                    return message
                await self._wait()
        finally:
            self._receiving = False

    def __aiter__(self) -> QuicChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except (ConnectionClosedByPeer, ConnectionClosedLocally):
            raise StopAsyncIteration from None

    async def request(self, data: bytes | bytearray | memoryview) -> bytes:
        """Seed 002's client: open a stream, write ``data`` and FIN, and return the peer's
        answer on the same stream, read to its FIN."""
        stream = self.open_stream()
        await stream.write(data, end=True)
        return await stream.read()

    # -- streams -------------------------------------------------------------------------------

    def open_stream(self) -> QuicStream:
        """A new bidirectional stream for direct use."""
        return QuicStream(self, self._session.open_stream())

    async def accept_stream(self) -> QuicStream:
        """The next stream the peer opened (in opening order), claimed for direct use."""
        session = self._session
        while True:
            stream_id = session.accept_stream()
            if stream_id is not None:
                return QuicStream(self, stream_id)
            await self._wait()

    # -- datagrams -----------------------------------------------------------------------------

    async def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """Send an RFC 9221 datagram (unreliable); needs ``datagrams=True`` on both sides."""
        self._session.send_datagram(data)  # type: ignore[arg-type]
        self._flush()

    async def recv_datagram(self) -> bytes:
        """The next RFC 9221 datagram received."""
        session = self._session
        while True:
            data = session.next_datagram()
            if data is not None:
                return data
            await self._wait()

    # -- lifetime ------------------------------------------------------------------------------

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close the connection (CONNECTION_CLOSE with ``error_code`` and ``reason``). Idempotent;
        never waits for the peer."""
        session = self._session
        if session.error is None:
            session.close(error_code, reason)
            self._flush()
        self._wake()
        transport = self._endpoint.transport
        if self._transport_owner and transport is not None and not transport.is_closing():
            transport.close()

    async def wait_closed(self) -> None:
        """Return once the connection has ended (after :meth:`close`, or the peer's close)."""
        while self._session.error is None:
            with contextlib.suppress(DTLSError):
                await self._wait()

    async def __aenter__(self) -> QuicChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- information (the rest is ChannelBase's) ------------------------------------------------

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def statistics(self) -> QuicStatistics:
        return self._session.statistics()


async def _resolve(host: str, port: int) -> tuple[int, Any]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise resolution_error(host, exc) from exc
    return pick_address(infos)


class _Connect:
    """``await connect(...)`` or ``async with connect(...) as channel``."""

    def __init__(self, coro: Awaitable[QuicChannel]) -> None:
        self._coro = coro
        self._channel: QuicChannel | None = None

    def __await__(self) -> Generator[Any, None, QuicChannel]:
        return self._coro.__await__()

    async def __aenter__(self) -> QuicChannel:
        self._channel = await self._coro
        return self._channel

    async def __aexit__(self, *exc_info: object) -> None:
        if self._channel is not None:
            self._channel.close()
            await asyncio.sleep(0)


def connect(
    host: str,
    port: int,
    *,
    config: DTLSConfiguration,
    datagrams: bool = False,
    max_stream_bytes: int | None = None,
    session: Any = None,
    local_address: tuple[str, int] | None = None,
) -> _Connect:
    """Connect over QUIC and complete the handshake; returns a :class:`QuicChannel`.

    ``config`` is a :class:`~dtlskit.DTLSConfiguration` (client) with ``alpn_protocols``;
    ``datagrams=True`` asks for RFC 9221 datagrams; ``max_stream_bytes`` bounds one received
    stream (default ``config.limits.max_queued_bytes``); ``session`` is a ticket from an
    earlier channel's :attr:`QuicChannel.session` to resume. Errors: :class:`HandshakeTimeout`
    after ``config.handshake_timeout``, :class:`HandshakeFailure` (ALPN mismatch naming both
    sides' protocols, an aborted handshake), :class:`CertificateVerificationError`;
    :class:`ConfigurationError` for what QUIC cannot honour (``dtlskit.quic.REFUSED``).
    """
    return _Connect(
        _connect(host, port, config, datagrams, max_stream_bytes, session, local_address)
    )


async def _connect(
    host: str,
    port: int,
    config: DTLSConfiguration,
    datagrams: bool,
    max_stream_bytes: int | None,
    ticket: Any,
    local_address: tuple[str, int] | None,
) -> QuicChannel:
    check_config(config)
    loop = asyncio.get_running_loop()
    session = client_session(
        config,
        server_name=host,
        now=loop.time(),
        datagrams=datagrams,
        max_stream_bytes=max_stream_bytes,
        session=ticket,
    )
    family, address = await _resolve(host, port)
    bind = local_address or client_bind_address(family)
    sock = udp_socket(family, bind, session.settings.recv_buffer_size)
    try:
        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: _ClientEndpoint(loop), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    endpoint.session = session
    channel = QuicChannel(endpoint, session, address, sock)
    channel._transport_owner = True
    try:
        session.connect(address, loop.time())
        endpoint.flush(session)
        await channel._handshake()
    except BaseException:
        if session.error is None:
            session.close(0, "handshake abandoned")
            endpoint.flush(session)
        transport.close()
        raise
    return channel


class QuicServer:
    """A running QUIC server (``async with serve(...)``): ``addresses``, ``serve_forever()``,
    ``close()``, ``statistics()``."""

    def __init__(self, endpoint: _ServerEndpoint, sock: socket.socket) -> None:
        self._endpoint = endpoint
        self._sock = sock
        self._closed = asyncio.Event()

    @property
    def addresses(self) -> list[Any]:
        return [self._sock.getsockname()]

    async def serve_forever(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE code 0) and the socket. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._endpoint.shutdown()

    async def wait_closed(self) -> None:
        await self._endpoint.wait_tasks()

    def statistics(self) -> QuicStatistics:
        return self._endpoint.statistics()

    async def __aenter__(self) -> QuicServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


class _ServerEndpoint(_Endpoint):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: QuicServerEngine,
        handler: Handler,
        sock: socket.socket,
    ) -> None:
        super().__init__(loop)
        self.engine = engine
        self.handler = handler
        self.sock = sock
        self.tasks: set[asyncio.Task[None]] = set()
        self.book = HandshakeBook(engine)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        session = route_datagram(
            self.engine, data, addr, self.loop.time(), self._send_reply, self.flush
        )
        if session is not None:
            self.flush(session)

    def _send_reply(self, data: bytes, address: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(data, address)

    def _session_changed(self, session: QuicSession) -> None:
        if self.book.needs_handler(session):
            channel = QuicChannel(self, session, session.peer_address, self.sock)
            task = self.loop.create_task(self._run(channel))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        super()._session_changed(session)

    async def _run(self, channel: QuicChannel) -> None:
        try:
            with handler_outcome(channel):
                await self.handler(channel)
        finally:
            channel.close()

    def _forget(self, session: QuicSession) -> None:
        super()._forget(session)
        self.book.forget(session)
        self.channels.pop(session, None)

    def shutdown(self) -> None:
        for session in list(self.engine.sessions):
            if session.error is None:
                session.close(0, "server shutting down")
                self.flush(session)
        for channel in list(self.channels.values()):
            channel._wake()
        if self.transport is not None:
            self.transport.close()

    async def wait_tasks(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def statistics(self) -> QuicStatistics:
        return server_statistics(self.engine)


class _Serve:
    def __init__(self, coro: Awaitable[QuicServer]) -> None:
        self._coro = coro
        self._server: QuicServer | None = None

    def __await__(self) -> Generator[Any, None, QuicServer]:
        return self._coro.__await__()

    async def __aenter__(self) -> QuicServer:
        self._server = await self._coro
        return self._server

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def serve(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    datagrams: bool = False,
    max_stream_bytes: int | None = None,
) -> _Serve:
    """Serve QUIC on ``host``:``port``; ``handler(channel)`` runs as one task per connection
    once its handshake completes, and its return closes the connection.

    ``config`` is a server :class:`~dtlskit.DTLSConfiguration` with a certificate and
    ``alpn_protocols`` (the server selects the first of its own list the client offered).
    ``host=None`` listens on every interface (one dual-stack socket).
    """
    return _Serve(_serve(handler, host, port, config, datagrams, max_stream_bytes))


async def _serve(
    handler: Handler,
    host: str | None,
    port: int,
    config: DTLSConfiguration,
    datagrams: bool,
    max_stream_bytes: int | None,
) -> QuicServer:
    check_config(config)
    engine = server_engine(config, datagrams=datagrams, max_stream_bytes=max_stream_bytes)
    family: int
    address: Any
    if host is None:
        family, address = int(socket.AF_INET6), ("::", port)
    else:
        family, address = await _resolve(host, port)
    sock = udp_socket(family, address, engine.settings.recv_buffer_size)
    loop = asyncio.get_running_loop()
    endpoint = _ServerEndpoint(loop, engine, handler, sock)
    await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
    return QuicServer(endpoint, sock)
