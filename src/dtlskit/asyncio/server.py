"""asyncio DTLS server: :func:`serve`, :func:`listen`, :func:`run_server`.

Theory of operation
-------------------
One UDP socket per resolved listening address, one :class:`~dtlskit.core.ServerEngine` (the
sans-I/O demultiplexer: cookies, limits, peer map) and one
:class:`~dtlskit.asyncio.driver.ServerDriver` per socket (batched reads with
``loop.add_reader``). Nothing blocks: a datagram is fed to the engine, whose events are drained
at once; a
completed handshake becomes a :class:`~dtlskit.asyncio.Channel` handed to a new task running the
user's handler (``serve``) or to the accept queue (``listen``), so a stalled or hostile peer
costs the others nothing but the few microseconds its datagrams take to drop.

Shutdown (``close()``): every engine sends close_notify to each established peer and forgets
every association; channels end with ConnectionClosedLocally (an ``async for`` in a handler
stops cleanly); the datagrams are flushed and the sockets closed. ``wait_closed()`` then gives
handler tasks ``close_timeout`` seconds to return before cancelling them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import socket
import warnings
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, Generic, TypeVar

from OpenSSL import SSL

from .._frontend.channel_base import (
    SessionProtocol,
    aggregate_server_statistics,
    check_server_config,
    is_protocol_factory,
    start_protocol,
)
from .._frontend.sockets import (
    Address,
    SocketOptions,
    bind_udp_sockets,
    check_port,
    format_address,
    probe_bind,
    sort_addresses,
    translate_os_error,
)
from .._frontend.workers import run_workers, stop_signals_held
from ..config import DTLSConfiguration
from ..core.connection import DTLSConnection
from ..core.cookies import CookieJar
from ..core.server import ServerEngine, ServerStatistics, cookie_jar_for
from ..exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedLocally,
    DTLSTimeoutError,
    TransportError,
)
from .channel import Channel
from .driver import ServerDriver

__all__ = ["Listener", "Server", "install_signal_handlers", "listen", "run_server", "serve"]

logger = logging.getLogger("dtlskit.server")

Handler = Callable[[Channel], Awaitable[None]]
"""A handler function: ``async def handler(channel)``, run in a task per peer."""
AnyHandler = Handler | type[SessionProtocol]
"""What ``serve`` takes: a handler function, or a :class:`~dtlskit.SessionProtocol` class."""
S = TypeVar("S", bound="Server")

#: Seconds ``wait_closed()`` lets handler tasks finish after ``close()`` before cancelling them.
DEFAULT_CLOSE_TIMEOUT = 5.0


class Server:
    """A running DTLS server: one socket per address, one handler task per peer.

    Use ``async with serve(...) as server`` (closes on exit) or ``server = await serve(...)``
    then ``close()`` and ``await wait_closed()``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: AnyHandler | None,
        config: DTLSConfiguration,
    ) -> None:
        self._loop = loop
        self._handler = handler
        self._config = config
        self._endpoints: list[ServerDriver] = []
        self._tasks: dict[asyncio.Task[None], Channel] = {}
        """Handler tasks and their channels (to name the peer of a stuck one)."""
        # Bound methods made once: each access makes a new 64-byte object, kept per session.
        self._task_done_callback = self._task_done
        self._defer = loop.call_soon
        self._accept_queue: collections.deque[Channel] = collections.deque()
        self._accept_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._drops: collections.Counter[str] = collections.Counter()
        self._addresses: list[Address] = []
        self._started = False
        self._closing = False
        self._closed: asyncio.Future[None] = loop.create_future()
        self._finisher: asyncio.Task[None] | None = None
        self.close_timeout = DEFAULT_CLOSE_TIMEOUT
        """Seconds ``wait_closed()`` gives handler tasks to return before cancelling them."""

    # -- start-up -------------------------------------------------------------------------------

    async def _start(
        self,
        host: str | None,
        port: int,
        *,
        ipv6_only: bool | None,
        reuse_port: bool,
        context: SSL.Context | None,
        cookie_jar: CookieJar | None,
    ) -> None:
        loop = self._loop
        check_port(port)
        try:
            infos = await loop.getaddrinfo(
                host or None,
                port,
                type=socket.SOCK_DGRAM,
                proto=socket.IPPROTO_UDP,
                flags=socket.AI_PASSIVE,
            )
        except socket.gaierror as exc:
            raise TransportError(exc.errno, f"cannot resolve {host!r}: {exc.strerror}") from exc
        context = context if context is not None else self._config.build_context(server=True)
        jar = cookie_jar if cookie_jar is not None else cookie_jar_for(self._config)
        sockets = bind_udp_sockets(
            host,
            port,
            ipv6_only=ipv6_only,
            reuse_port=reuse_port,
            resolved=sort_addresses(infos),
        )
        pending = collections.deque(sockets)  # not yet owned by a transport
        try:
            while pending:
                sock = pending[0]
                endpoint = ServerDriver(
                    loop, self, ServerEngine(self._config, context=context, cookie_jar=jar), sock
                )
                try:
                    endpoint.start()
                except OSError as exc:
                    raise translate_os_error(exc, "listen on", endpoint.address) from exc
                pending.popleft()
                self._endpoints.append(endpoint)
        except BaseException:
            for started in self._endpoints:
                started.shutdown()
            self._endpoints.clear()
            for left in pending:
                left.close()
            self._closing = True
            self._closed.set_result(None)
            raise
        self._addresses = [endpoint.address for endpoint in self._endpoints]
        self._started = True
        logger.info("listening on %s", ", ".join(format_address(a) for a in self._addresses))

    # -- peers ----------------------------------------------------------------------------------

    def _make_channel(
        self, conn: DTLSConnection, driver: ServerDriver, address: Address
    ) -> Channel:
        return Channel(conn, driver, driver.sock, address, owns_socket=False)

    def _on_channel(self, channel: Channel) -> None:
        if is_protocol_factory(self._handler):
            start_protocol(self._handler, channel, self._defer)  # type: ignore[arg-type]
            return
        handler = self._handler
        if handler is not None:
            # The task runs the handler's own coroutine (calling an ``async def`` runs none of
            # it), and _task_done closes the channel and logs how it ended: no wrapping
            # coroutine per session. Any other callable goes through _run_handler. One shared
            # task name: a name per peer cost ~250 bytes per session.
            coro = (
                handler(channel)
                if asyncio.iscoroutinefunction(handler)
                else self._run_handler(handler, channel)  # type: ignore[arg-type]
            )
            task = self._loop.create_task(coro, name="dtlskit handler")
            self._tasks[task] = channel
            task.add_done_callback(self._task_done_callback)
            return
        if len(self._accept_queue) >= self._config.limits.accept_backlog:
            self._count_drop("accept_backlog_full")
            logger.warning(
                "accept backlog full (%d): refusing %s",
                self._config.limits.accept_backlog,
                format_address(channel.getpeername()),
            )
            channel.close()
            channel._release()
            return
        self._accept_queue.append(channel)
        self._wake_acceptor()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A handler task ended: say how (a ConnectionClosed at DEBUG, any other exception
        with its traceback), then close its channel and give back what it held."""
        channel = self._tasks.pop(task, None)
        if channel is None:  # pragma: no cover - every handler task is registered
            return
        try:
            error = None if task.cancelled() else task.exception()
            if isinstance(error, ConnectionClosed):  # the peer's name is made only to log
                logger.debug("session with %s ended in its handler: %s", channel._peer_text, error)
            elif isinstance(error, Exception):
                logger.error(
                    "handler failed for %s; closing that session",
                    channel._peer_text,
                    exc_info=error,
                )
        finally:
            channel.close()
            channel._release()

    async def _run_handler(self, handler: Handler, channel: Channel) -> None:
        """A handler that is not an ``async def`` function (an object with an async
        ``__call__``, a function returning an awaitable): called and awaited in its task."""
        await handler(channel)

    def _wake_acceptor(self) -> None:
        while self._accept_waiters:
            waiter = self._accept_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _count_drop(self, reason: str) -> None:
        self._drops[reason] += 1

    # -- information ----------------------------------------------------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets, one per address."""
        return [endpoint.sock for endpoint in self._endpoints]

    @property
    def addresses(self) -> list[Address]:
        """The bound addresses, ``(host, port)`` or ``(host, port, flowinfo, scope_id)``; still
        known after :meth:`close`."""
        return list(self._addresses)

    def statistics(self) -> ServerStatistics:
        """Counters of every socket added up; ``drops`` also has the front end's own reasons."""
        return aggregate_server_statistics(
            (endpoint.statistics() for endpoint in self._endpoints), dict(self._drops)
        )

    def is_serving(self) -> bool:
        """Whether the server is accepting peers (started and not closed)."""
        return self._started and not self._closing

    # -- life cycle -----------------------------------------------------------------------------

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` (a signal handler, another task); then wait until closed.

        Cancelling it closes the server.
        """
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise
        await self.wait_closed()

    def close(self) -> None:
        """Send close_notify to every peer, stop reading, close the sockets. Idempotent.

        Handlers see their session end; :meth:`wait_closed` waits for them.
        """
        if self._closing:
            return
        self._closing = True
        for endpoint in self._endpoints:
            endpoint.shutdown()
        for channel in self._accept_queue:
            channel._release()
        self._accept_queue.clear()
        while self._accept_waiters:
            waiter = self._accept_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)
        if not self._loop.is_closed():
            self._finisher = self._loop.create_task(self._finish(), name="dtlskit server close")
        logger.info("server closed")

    shutdown = close
    """The same as :meth:`close` (the blocking flavour's name too)."""

    async def _finish(self) -> None:
        channels = dict(self._tasks)
        tasks = set(channels)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=self.close_timeout)
                for task in stuck:
                    logger.warning(
                        "handler task of %s ignored cancellation", channels[task]._peer_text
                    )
        for endpoint in self._endpoints:
            await endpoint.wait_lost()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` was called and has finished: handlers done, sockets closed."""
        await asyncio.shield(self._closed)
        if self._finisher is not None:
            await asyncio.shield(self._finisher)

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def __del__(self) -> None:
        if getattr(self, "_started", False) and not self._closing:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)

    def __repr__(self) -> str:
        state = "serving" if self.is_serving() else "closed" if self._closing else "starting"
        where = ", ".join(format_address(a) for a in self._addresses) or "-"
        return f"<{type(self).__name__} {where} {state}>"


class Listener(Server, SocketOptions):
    """A server without a handler: ``await listener.accept()`` returns each new Channel.

    Completed handshakes wait in a queue of ``config.limits.accept_backlog``; beyond it new peers
    are refused (their session closed) and counted as the drop ``"accept_backlog_full"``. Socket
    options apply to the first listening socket. Accepted channels are held weakly, as in the
    blocking flavour: one dropped unclosed warns (``ResourceWarning``) and is closed.
    """

    _socket_owner = "listener"

    def _bound_socket(self) -> socket.socket | None:
        return self._endpoints[0].sock if self._endpoints else None

    async def accept(self, timeout: float | None = None) -> Channel:
        """The next peer whose handshake completed.

        Raises :class:`~dtlskit.exceptions.DTLSTimeoutError` after ``timeout`` seconds, and
        :class:`~dtlskit.exceptions.ConnectionClosedLocally` once the server is closed.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._accept_queue:
                return self._accept_queue.popleft()
            if self._closing:
                raise ConnectionClosedLocally("the listener is closed")
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise DTLSTimeoutError(f"no peer completed a handshake within {timeout:g} s")
            waiter: asyncio.Future[None] = loop.create_future()
            self._accept_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                raise DTLSTimeoutError(
                    f"no peer completed a handshake within {timeout:g} s"
                ) from None
            finally:
                if waiter in self._accept_waiters:
                    self._accept_waiters.remove(waiter)

    def pending(self) -> int:
        """Completed handshakes waiting for :meth:`accept`."""
        return len(self._accept_queue)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing


class _Starter(Generic[S]):
    """What :func:`serve`/:func:`listen` return: await it, or use it as an async context manager."""

    def __init__(self, start: Callable[[], Awaitable[S]]) -> None:
        self._start = start
        self._server: S | None = None

    def __await__(self) -> Generator[Any, None, S]:
        return self._start().__await__()

    async def __aenter__(self) -> S:
        self._server = await self._start()
        return self._server

    async def __aexit__(self, *exc_info: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()


async def _start_server(
    cls: type[S],
    handler: AnyHandler | None,
    host: str | None,
    port: int,
    config: DTLSConfiguration,
    *,
    ipv6_only: bool | None = None,
    reuse_port: bool = False,
    context: SSL.Context | None = None,
    cookie_jar: CookieJar | None = None,
) -> S:
    check_server_config(config)
    server = cls(asyncio.get_running_loop(), handler, config)
    await server._start(
        host,
        port,
        ipv6_only=ipv6_only,
        reuse_port=reuse_port,
        context=context,
        cookie_jar=cookie_jar,
    )
    return server


def serve(
    handler: AnyHandler,
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    ipv6_only: bool | None = None,
    reuse_port: bool = False,
) -> _Starter[Server]:
    """Start a DTLS server running ``await handler(channel)`` in a task per peer, or, when
    ``handler`` is a :class:`~dtlskit.SessionProtocol` subclass, one instance of it per peer
    called on the loop for each message (no task per peer or per message: the fast style).

    ``host`` None or ``""`` listens on every interface (one socket per address family); ``"::"``
    is dual-stack unless ``ipv6_only``. A handler that raises is logged (logger
    ``"dtlskit.server"``) and ends its own session only. Await the result, or use it with
    ``async with`` (the server is closed on exit).
    """
    return _Starter(
        lambda: _start_server(
            Server, handler, host, port, config, ipv6_only=ipv6_only, reuse_port=reuse_port
        )
    )


def listen(
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    ipv6_only: bool | None = None,
    reuse_port: bool = False,
) -> _Starter[Listener]:
    """Start a DTLS server whose peers are taken with ``await listener.accept(timeout=None)``."""
    return _Starter(
        lambda: _start_server(
            Listener, None, host, port, config, ipv6_only=ipv6_only, reuse_port=reuse_port
        )
    )


def install_signal_handlers(
    server: Server, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)
) -> Callable[[], None]:
    """Make SIGINT and SIGTERM (or ``signals``) close ``server`` (close_notify to every peer),
    so that ``serve_forever()`` returns. Call it from the running event loop. Returns a
    function that removes the handlers again (as the blocking flavour's does)."""
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    previous: dict[int, Any] = {}
    for signum in signals:
        try:
            loop.add_signal_handler(signum, _on_signal, server, signum)
            installed.append(signum)
        except NotImplementedError:  # pragma: no cover - event loops without signal support
            previous[signum] = signal.signal(
                signum, lambda s, f: loop.call_soon_threadsafe(_on_signal, server, s)
            )

    def restore() -> None:
        for signum in installed:
            loop.remove_signal_handler(signum)
        for signum, old in previous.items():  # pragma: no cover - see above
            signal.signal(signum, old if old is not None else signal.SIG_DFL)

    return restore


def _on_signal(server: Server, signum: int) -> None:
    logger.info("received %s: closing the server", signal.Signals(signum).name)
    server.close()


def run_server(
    handler: AnyHandler,
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    workers: int = 1,
    ipv6_only: bool | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM, blocking; returns 0 after a clean shutdown.

    With ``workers`` > 1, that many processes each bind their own socket on ``port``
    (``SO_REUSEPORT``; the kernel keeps each peer on one worker). The OpenSSL context and the
    cookie secret are made here, before the workers fork, so every worker accepts the others'
    cookies and session tickets. A fixed port is required then. The port is bound once here
    first, so that a port already taken is one error rather than one per worker. A worker ended
    by SIGINT/SIGTERM stopped cleanly; returns 1 if a worker failed.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"workers must be a positive integer, not {workers!r}")
    if workers == 1:
        asyncio.run(_serve_until_signal(handler, host, port, config, ipv6_only, False, None, None))
        return 0
    check_port(port)
    check_server_config(config)
    if port == 0:
        raise ConfigurationError(
            "workers need a fixed port: with port 0 every worker would listen on a port of its own"
        )
    with stop_signals_held():  # a signal from now on reaches the workers (see run_workers)
        probe_bind(host, port, ipv6_only=ipv6_only)
        context = config.build_context(server=True)
        jar = cookie_jar_for(config)

        def run_one(index: int) -> None:
            asyncio.run(
                _serve_until_signal(handler, host, port, config, ipv6_only, True, context, jar)
            )

        return run_workers(workers, run_one)


async def _serve_until_signal(
    handler: AnyHandler,
    host: str | None,
    port: int,
    config: DTLSConfiguration,
    ipv6_only: bool | None,
    reuse_port: bool,
    context: SSL.Context | None,
    cookie_jar: CookieJar | None,
) -> None:
    server = await _start_server(
        Server,
        handler,
        host,
        port,
        config,
        ipv6_only=ipv6_only,
        reuse_port=reuse_port,
        context=context,
        cookie_jar=cookie_jar,
    )
    loop = asyncio.get_running_loop()
    try:
        install_signal_handlers(server)
        await server.serve_forever()
    finally:
        server.close()
        await server.wait_closed()
        # Uninstall now rather than in loop.close(), which closes the signal wake-up socket
        # first: a second signal (a worker gets the process group's and the forwarded one)
        # arriving then makes CPython print "Exception ignored ... signal wakeup fd". Now a
        # late one meets the default action.
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
