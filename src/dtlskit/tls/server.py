"""asyncio TLS servers: :func:`serve` (a task per client) and :func:`listen` (``accept()``).

One listening TCP socket per address (``loop.create_server``); each connection gets its own
:class:`~dtlskit.tls.channel.TLSProtocol`, so a client that is slow or silent holds only its
own protocol, never ``accept`` or another client. Connections are admitted by the limits of
:class:`~dtlskit.tls._common.ConnectionGate`; the handshake deadline and idle time are the
engine's timers; each refusal is counted in :meth:`Server.statistics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

from OpenSSL import SSL

from .._frontend.sockets import Address, check_port, format_address
from ..config import DTLSConfiguration
from ..core.tls import DEFAULT_MAX_MESSAGE_SIZE, Framing, TLSConnection, check_framing
from ..exceptions import (
    DTLSError,
    DTLSTimeoutError,
    HandshakeTimeout,
    InvalidArgument,
    TransportError,
    UsageError,
)
from ._common import (
    ConnectionGate,
    SharedBudget,
    TLSServerStatistics,
    bind_tcp_sockets,
    check_server_tls_config,
    server_idle_timeout,
)
from .channel import Channel, TLSProtocol

__all__ = ["Listener", "Server", "listen", "serve"]

logger = logging.getLogger("dtlskit.tls.server")

Handler = Callable[[Channel], Awaitable[None]]
S = TypeVar("S", bound="Server")


class Server:
    """A TLS server running ``await handler(channel)`` in a task per client."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Handler | None,
        config: DTLSConfiguration,
        framing: Framing,
        max_message_size: int,
        context: SSL.Context | None,
    ) -> None:
        self._loop = loop
        self._handler = handler
        self._config = config
        self._framing: Framing = framing
        self._max_message = max_message_size
        self._context = context if context is not None else config.context(True, tls=True)
        self._idle = server_idle_timeout(config)
        self._stats = TLSServerStatistics()
        self._gate = ConnectionGate(config, self._stats)
        self._budget = SharedBudget(config.limits.max_buffered_bytes)
        self._servers: list[asyncio.Server] = []
        self._protocols: set[TLSProtocol] = set()
        self._counted: set[TLSProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._done: asyncio.Future[None] = loop.create_future()

    async def _start(self, host: str | None, port: int, reuse_port: bool) -> None:
        check_port(port)
        backlog = min(self._config.limits.accept_backlog * 4, 4096)
        for sock in bind_tcp_sockets(host, port, reuse_port, backlog):
            try:
                server = await self._loop.create_server(self._make_protocol, sock=sock)
            except BaseException:
                sock.close()
                raise
            self._servers.append(server)

    # -- connections ------------------------------------------------------------------------------

    def _make_protocol(self) -> asyncio.BaseProtocol:
        engine = TLSConnection(
            self._config,
            server=True,
            context=self._context,
            framing=self._framing,
            max_message_size=self._max_message,
        )
        engine.set_idle_timeout(self._idle, 0.0)
        engine.budget = self._budget
        protocol = _ServerProtocol(self, engine)
        protocol.budget = self._budget
        return protocol

    def _admitted(self, protocol: TLSProtocol) -> bool:
        if self._closed:
            return False
        if self._gate.admit(protocol.peer) is not None:
            return False
        self._protocols.add(protocol)
        return True

    def _established(self, protocol: TLSProtocol) -> None:
        self._stats.handshakes_completed += 1
        channel = Channel(protocol)
        self._deliver(channel)

    def _deliver(self, channel: Channel) -> None:
        assert self._handler is not None  # Listener overrides this
        task = self._loop.create_task(self._run_handler(self._handler, channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, handler: Handler, channel: Channel) -> None:
        try:
            await handler(channel)
        except DTLSError as exc:
            if logger.isEnabledFor(logging.DEBUG):  # every client that leaves passes here
                logger.debug("handler for %s ended: %s", format_address(channel.getpeername()), exc)
        except Exception:
            logger.exception("handler for %s raised", format_address(channel.getpeername()))
        finally:
            channel.close()

    def _ended(self, protocol: TLSProtocol, error: DTLSError) -> None:
        """The session ended (counted once); its connection keeps its slot in the limits
        until the socket is gone (:meth:`_gone`), which may take up to ``CLOSE_GRACE``."""
        if protocol in self._counted:
            return
        self._counted.add(protocol)
        if not protocol.engine.handshake_completed:
            self._stats.handshakes_failed += 1
            if isinstance(error, HandshakeTimeout):
                self._stats.count("handshake_timeout")
            logger.debug("handshake with %s failed: %s", format_address(protocol.peer), error)
        elif "(idle)" in str(error):
            self._stats.count("idle_timeout")

    def _gone(self, protocol: TLSProtocol) -> None:
        """The TCP connection is closed: its slot in the limits is free."""
        self._counted.discard(protocol)
        if protocol in self._protocols:
            self._protocols.discard(protocol)
            self._gate.release(protocol.peer)

    # -- public -----------------------------------------------------------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets."""
        return [s for server in self._servers for s in server.sockets]

    @property
    def addresses(self) -> list[Address]:
        """The addresses listened on (the port chosen when 0 was asked for)."""
        return [tuple(s.getsockname()) for s in self.sockets]

    @property
    def port(self) -> int:
        """The port listened on."""
        return int(self.addresses[0][1])

    def statistics(self) -> TLSServerStatistics:
        """A snapshot of the server's counters."""
        return self._stats.copy()

    def is_serving(self) -> bool:
        """Whether the server still accepts connections."""
        return not self._closed

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called."""
        await asyncio.shield(self._done)

    def close(self) -> None:
        """Stop listening and close every connection (close_notify). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        for protocol in list(self._protocols):
            protocol.engine.close()
            protocol.flush()
            protocol.close_transport()
        if not self._done.done():
            self._done.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the handlers and connections are gone."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for protocol in list(self._protocols):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(protocol.closed), 1)

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        where = ", ".join(format_address(a) for a in self.addresses) if self._servers else "-"
        return f"<dtlskit.tls.{type(self).__name__} {where}>"


class Listener(Server):
    """A TLS server whose clients are taken with ``await accept()``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._queue: asyncio.Queue[Channel] = asyncio.Queue()

    def _deliver(self, channel: Channel) -> None:
        if self._queue.qsize() >= self._config.limits.accept_backlog:
            self._stats.count("accept_backlog")
            channel.close()
            return
        self._queue.put_nowait(channel)

    async def accept(self, timeout: float | None = None) -> Channel:
        """The next client whose handshake completed; :class:`~dtlskit.DTLSTimeoutError`
        after ``timeout`` seconds (None: wait forever)."""
        if timeout is not None and not (isinstance(timeout, int | float) and timeout >= 0):
            raise InvalidArgument(f"timeout must be None or >= 0 seconds, not {timeout!r}")
        while True:
            if self._closed and self._queue.empty():
                raise UsageError("the listener is closed")
            getter = asyncio.ensure_future(self._queue.get())
            waiters: set[asyncio.Future[Any]] = {getter, asyncio.ensure_future(self._shielded())}
            done, pending = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for future in pending:
                future.cancel()
            if getter in done:
                channel = getter.result()
                if channel.closed and channel.pending() == 0 and channel.error is not None:
                    continue  # ended while it waited
                return channel
            if not done:
                raise DTLSTimeoutError(f"no client within {timeout:g} s")

    async def _shielded(self) -> None:
        await asyncio.shield(self._done)

    def close(self) -> None:
        super().close()
        while not self._queue.empty():
            self._queue.get_nowait().close()


class _ServerProtocol(TLSProtocol):
    def __init__(self, server: Server, engine: TLSConnection) -> None:
        super().__init__(
            server._loop, engine, on_established=server._established, on_end=server._ended
        )
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer) if peer else ("?", 0)
        if not self._server._admitted(self):
            assert isinstance(transport, asyncio.Transport)  # a TCP server's
            transport.abort()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused before it started
            return
        super().connection_lost(exc)
        self._server._ended(self, self.engine.error or TransportError(0, "connection lost"))
        self._server._gone(self)


class _Starter(Generic[S]):
    """What :func:`serve` / :func:`listen` return: await it, or ``async with`` it."""

    def __init__(self, start: Callable[[], Awaitable[S]]) -> None:
        self._start = start
        self._server: S | None = None

    def __await__(self) -> Generator[Any, None, S]:
        return self._start().__await__()

    async def __aenter__(self) -> S:
        self._server = await self._start()
        return self._server

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _start(
    cls: type[S],
    handler: Handler | None,
    host: str | None,
    port: int,
    config: DTLSConfiguration,
    framing: Framing,
    max_message_size: int,
    reuse_port: bool,
    context: SSL.Context | None,
) -> S:
    check_server_tls_config(config)
    check_framing(framing, max_message_size)
    server = cls(asyncio.get_running_loop(), handler, config, framing, max_message_size, context)
    await server._start(host, port, reuse_port)
    return server


def serve(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    framing: Framing = "stream",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    reuse_port: bool = False,
    context: SSL.Context | None = None,
) -> _Starter[Server]:
    """Start a TLS server running ``await handler(channel)`` in a task per client.

    ``host`` None or ``""`` listens on every interface. Limits come from ``config.limits``
    (see :mod:`dtlskit.tls._common`); a handler that raises is logged and ends its own
    connection only. ``context``: an OpenSSL context built beforehand with
    ``config.build_context(True, tls=True)`` (shared session tickets).
    """
    return _Starter(
        lambda: _start(
            Server, handler, host, port, config, framing, max_message_size, reuse_port, context
        )
    )


def listen(
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    framing: Framing = "stream",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    reuse_port: bool = False,
    context: SSL.Context | None = None,
) -> _Starter[Listener]:
    """Start a TLS server whose clients are taken with ``await listener.accept(timeout=None)``."""
    return _Starter(
        lambda: _start(
            Listener, None, host, port, config, framing, max_message_size, reuse_port, context
        )
    )
