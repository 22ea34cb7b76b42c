"""Blocking DTLS servers: the classic threaded server (:func:`serve`) and the
``createServer``/``accept`` model (:func:`listen`).

Both bind UDP sockets and run one I/O thread per socket driving a
:class:`~dtlskit.core.ServerEngine` (cookies, demultiplexing, limits). When a handshake
completes, :func:`serve` runs ``handler(channel)`` on a thread of its own: a handler thread
whose handler returned waits up to :data:`IDLE_HANDLER_SECONDS` for the next peer (at most
:data:`IDLE_HANDLER_THREADS` wait), else a new thread is started;
:func:`listen` queues the channel for :meth:`Listener.accept` in a queue bounded by
``config.limits.accept_backlog`` (beyond it the association is closed and the drop counted as
``"accept_backlog_full"``).

With ``workers=N`` (N > 1), :func:`serve` returns a supervising :class:`Server` that binds
nothing; its :meth:`Server.serve_forever` forks N processes (before any thread exists) that
each bind the same fixed port with ``SO_REUSEPORT`` and serve with the OpenSSL context and
cookie secret built once in the parent, so a cookie or session from one worker is valid in
every other. SIGINT/SIGTERM sent to the parent are forwarded to every worker, which closes
its sessions (close_notify) and exits 0; a signal that arrives while the workers start is
held until they can take it (:func:`dtlskit._frontend.workers.run_workers`).

Every server binds by the one rule of :func:`dtlskit._frontend.sockets.bind_udp_sockets`: host
None or ``""`` is one socket per address family (IPv6 with ``IPV6_V6ONLY=1``), ``"::"`` alone is
dual-stack unless ``ipv6_only=True``.
"""

from __future__ import annotations

import collections
import logging
import queue
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from .._frontend import sockets as _sockets
from .._frontend import workers as _workers
from .._frontend.channel_base import (
    SessionProtocol,
    aggregate_server_statistics,
    check_server_config,
    is_protocol_factory,
    start_protocol,
)
from ..config import DTLSConfiguration
from ..core.cookies import CookieJar
from ..core.server import ServerEngine, ServerStatistics, cookie_jar_for
from ..exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedLocally,
    DTLSError,
    DTLSTimeoutError,
    InvalidArgument,
)
from .channel import Channel
from .driver import ServerDriver

__all__ = ["Listener", "Server", "install_signal_handlers", "listen", "run_server", "serve"]

logger = logging.getLogger("dtlskit.server")

Address = tuple[Any, ...]
Handler = Callable[[Channel], object] | type[SessionProtocol]
"""What ``serve`` takes: ``handler(channel)`` run on a thread per peer, or a
:class:`~dtlskit.SessionProtocol` class whose instances run on the I/O thread."""

HANDLER_JOIN_TIMEOUT = 5.0
"""Seconds :meth:`Server.close` waits, in total, for handler threads to return."""


# -- threaded server -----------------------------------------------------------------------------


IDLE_HANDLER_THREADS = 16
"""Handler threads kept waiting for the next peer once their handler returned (a new thread
per handshake costs the I/O thread a thread start-up and a switch to it)."""
IDLE_HANDLER_SECONDS = 5.0
"""How long a handler thread waits for the next peer before it ends."""


class _PeerThreads:
    """A thread per running handler; threads whose handler returned wait a while for the next
    peer (at most :data:`IDLE_HANDLER_THREADS` of them). Holds no reference to the Server."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._handoff: queue.SimpleQueue[Channel | None] = queue.SimpleQueue()
        self._idle = 0  # threads waiting on _handoff, minus the channels already in it
        self._closed = False

    def start(self, channel: Channel) -> str | None:
        """Run ``handler(channel)`` on an idle handler thread, or on a new one (I/O thread,
        engine lock held); a :class:`SessionProtocol` class instead runs on the I/O thread,
        with no thread."""
        if is_protocol_factory(self.handler):
            start_protocol(self.handler, channel, channel._io.request)  # type: ignore[arg-type]
            return None
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._handoff.put(channel)
                return None
        thread = threading.Thread(target=self._work, args=(channel,), daemon=True)
        with self._lock:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._threads.discard(thread)
            return "thread_start_failed"
        return None

    def _work(self, channel: Channel | None) -> None:
        current = threading.current_thread()
        try:
            while channel is not None:
                current.name = f"dtlskit-peer-{_sockets.format_address(channel.getpeername())}"
                self._run(channel)
                channel = None  # hold no finished session while waiting for the next peer
                channel = self._next()
        finally:
            with self._lock:
                self._threads.discard(current)

    def _next(self) -> Channel | None:
        """The next peer's channel handed to this thread, or None: end the thread."""
        with self._lock:
            if self._closed or self._idle >= IDLE_HANDLER_THREADS:
                return None
            self._idle += 1
        try:
            return self._handoff.get(timeout=IDLE_HANDLER_SECONDS)
        except queue.Empty:
            with self._lock:
                try:  # start() may have handed one over just as the wait ran out
                    return self._handoff.get_nowait()
                except queue.Empty:
                    self._idle -= 1
                    return None

    def _run(self, channel: Channel) -> None:
        peer = _sockets.format_address(channel.getpeername())
        try:
            self.handler(channel)  # type: ignore[call-arg]
        except ConnectionClosed as exc:
            logger.debug("session with %s ended in the handler: %s", peer, exc)
        except Exception:
            logger.exception("handler for %s raised; that peer's session is closed", peer)
        finally:
            try:
                channel.close()
                with channel._io.lock:
                    channel._release()
            except Exception:  # pragma: no cover - close is best effort
                logger.exception("closing the channel of %s failed", peer)

    def join(self, timeout: float) -> list[threading.Thread]:
        """Wait up to ``timeout`` seconds in total; return the threads still running."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            for _ in range(self._idle):  # wake every idle thread: it ends
                self._handoff.put(None)
            self._idle = 0
            threads = list(self._threads)
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        return [t for t in threads if t.is_alive() and t is not current]


class Server:
    """A running threaded DTLS server. Create it with :func:`serve`.

    Serving starts at once; :meth:`serve_forever` only blocks until :meth:`close`. As a context
    manager it closes on exit.
    """

    def __init__(
        self,
        handler: Handler,
        host: str | None,
        port: int,
        *,
        config: DTLSConfiguration,
        workers: int = 1,
        ipv6_only: bool | None = None,
        reuse_port: bool = False,
        context: Any = None,
        cookie_jar: CookieJar | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._closing = True  # until construction succeeds (no ResourceWarning for a failure)
        self._stop_requested = False
        """Set by a signal handler at once (the close itself runs on a thread)."""
        self._done = threading.Event()
        self._closers: list[threading.Thread] = []
        self.close_timeout = HANDLER_JOIN_TIMEOUT
        """Seconds :meth:`close` gives handler threads to return (then it logs the stragglers
        and goes on); the same attribute as the asyncio flavour's."""
        self._ios: list[ServerDriver] = []
        self._peers = _PeerThreads(handler)
        self._workers = workers
        self._spec = (host, port, config, ipv6_only)
        if context is None:
            context = config.build_context(server=True)
        if cookie_jar is None:
            cookie_jar = cookie_jar_for(config)
        self._context, self._cookie_jar = context, cookie_jar
        if workers > 1:
            # Supervisor: start no thread, and keep no socket: the workers bind after the
            # fork. Binding once here (and closing at once) reports a port already taken as
            # one error, and gives the addresses the workers will have.
            self._addresses = _sockets.probe_bind(host, port, ipv6_only=ipv6_only)
            self._closing = False
            return
        sockets = _sockets.bind_udp_sockets(host, port, ipv6_only=ipv6_only, reuse_port=reuse_port)
        try:
            for sock in sockets:
                engine = ServerEngine(config, context=context, cookie_jar=cookie_jar)
                self._ios.append(
                    ServerDriver(
                        sock,
                        engine,
                        self._peers.start,
                        config.mtu,
                    )
                )
        except BaseException:
            for io in self._ios:
                io.stop()
            for sock in sockets:
                sock.close()
            raise
        self._addresses = [tuple(sock.getsockname()) for sock in sockets]
        for io in self._ios:
            io.start()
        self._closing = False

    # -- running --------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Block until the server is closed (from another thread, a handler or a signal).

        With workers, fork them and wait until every worker has exited; raise
        :class:`DTLSError` if one failed.
        """
        if self._workers > 1:
            self._run_workers()
            return
        self.wait_closed()

    def wait_closed(self, timeout: float | None = None) -> None:
        """Block until :meth:`close` (called by another thread, a handler or a signal) has
        finished: handlers done, sockets closed. :class:`DTLSTimeoutError` after ``timeout``
        seconds (None: no limit)."""
        if not self._done.wait(timeout):
            raise DTLSTimeoutError(f"the server was not closed within {timeout:g} s")
        for thread in list(self._closers):
            if thread is not threading.current_thread():
                thread.join(self.close_timeout + 10.0)

    def close(self) -> None:
        """Send close_notify to every peer, stop reading, close the sockets, and join the I/O
        and handler threads (waiting at most :attr:`close_timeout` s for handlers).
        Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        try:
            for io in self._ios:
                io.shutdown()
            stragglers = self._peers.join(self.close_timeout)
            for thread in stragglers:
                logger.warning(
                    "handler thread %s still running %g s after close()",
                    thread.name,
                    self.close_timeout,
                )
        finally:
            self._done.set()

    shutdown = close
    """The same as :meth:`close` (the name ``socketserver`` uses)."""

    def _close_soon(self, reason: str) -> None:
        """From a signal handler: close on a helper thread (a signal handler must not take
        engine or logging locks the interrupted main thread may hold)."""
        self._stop_requested = True
        if self._closing:
            return

        def close() -> None:
            logger.info("%s received: closing the server", reason)
            self.close()

        thread = threading.Thread(target=close, name="dtlskit-signal-close")
        self._closers.append(thread)
        thread.start()

    def _run_workers(self) -> None:
        if self._closing or self._stop_requested:
            return
        host, port, config, ipv6_only = self._spec
        handler = self._peers.handler
        context, cookie_jar = self._context, self._cookie_jar

        def run_one(index: int) -> None:
            server = Server(
                handler,
                host,
                port,
                config=config,
                ipv6_only=ipv6_only,
                reuse_port=True,
                context=context,
                cookie_jar=cookie_jar,
            )
            restore = install_signal_handlers(server)
            try:
                server.serve_forever()
            finally:
                server.close()
                restore()

        try:
            status = _workers.run_workers(
                self._workers, run_one, stop_requested=lambda: self._stop_requested
            )
        finally:
            self._closing = True
            self._done.set()
        if status != 0:
            raise DTLSError(
                "a worker process exited with an error (its traceback is on standard error)"
            )

    # -- information ----------------------------------------------------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (none in a supervising server with workers)."""
        return [io.sock for io in self._ios]

    @property
    def addresses(self) -> list[Address]:
        """Bound addresses, ``(host, port, ...)`` (with workers: the addresses they bind)."""
        return list(self._addresses)

    def statistics(self) -> ServerStatistics:
        """Counters of every socket added up (empty in a supervising server with workers)."""
        return aggregate_server_statistics(io.statistics() for io in self._ios)

    def is_serving(self) -> bool:
        """Whether the server accepts new peers."""
        return not self._closing

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closing", True):
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        for io in self._ios:
            io.abandon()

    def __repr__(self) -> str:
        where = ", ".join(_sockets.format_address(a) for a in self._addresses)
        state = "closed" if self._closing else "serving"
        return f"<dtlskit.sync.Server {state} {where}>"


def serve(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    workers: int = 1,
    ipv6_only: bool | None = None,
    reuse_port: bool = False,
) -> Server:
    """Serve DTLS on ``host:port``, one thread per peer running ``handler(channel)``; or,
    when ``handler`` is a :class:`~dtlskit.SessionProtocol` subclass, one instance of it per
    peer called on the socket's I/O thread (no thread per peer: the fast style).

    ``host`` None or ``""`` binds every interface (one socket per family, the IPv6 one with
    ``IPV6_V6ONLY=1``); ``"::"`` alone is dual-stack unless ``ipv6_only``. A handler that
    raises is logged (logger ``"dtlskit.server"``) and ends that peer only; its channel is
    always closed when it returns. ``workers=N`` forks N ``SO_REUSEPORT`` processes from
    :meth:`Server.serve_forever` and needs a fixed port.
    """
    check_server_config(config)
    _sockets.check_port(port)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"workers must be a positive integer, not {workers!r}")
    if workers > 1 and port == 0:
        raise ConfigurationError(
            "workers need a fixed port: with port 0 every worker would bind a different one"
        )
    return Server(
        handler,
        host,
        port,
        config=config,
        workers=workers,
        ipv6_only=ipv6_only,
        reuse_port=reuse_port or workers > 1,
    )


# -- listen/accept -----------------------------------------------------------------------------


class _AcceptQueue:
    """Completed handshakes waiting for ``accept()``, bounded."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Channel] = collections.deque()
        self._closed = False

    def offer(self, channel: Channel) -> str | None:
        with self._cond:
            if self._closed:
                return "listener_closed"
            if len(self._items) >= self._limit:
                return "accept_backlog_full"
            self._items.append(channel)
            self._cond.notify()
            return None

    def take(self, timeout: float | None) -> Channel:
        if timeout is not None and timeout < 0:
            raise InvalidArgument(f"timeout must be None or >= 0 seconds, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise ConnectionClosedLocally("the listener is closed")
                if self._items:
                    return self._items.popleft()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise DTLSTimeoutError(f"no peer completed a handshake within {timeout:g} s")
                self._cond.wait(remaining)

    def close(self) -> list[Channel]:
        with self._cond:
            self._closed = True
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        return items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Listener(_sockets.SocketOptions):
    """Bound DTLS sockets whose peers are taken one by one with :meth:`accept`.

    Create it with :func:`listen`. Accepted channels share the listener's sockets: closing the
    listener ends every session (close_notify to each peer). Socket options apply to the first
    socket (there are two for host None: one per address family).
    """

    _socket_owner = "listener"

    def __init__(
        self,
        sockets: list[socket.socket],
        *,
        config: DTLSConfiguration,
        context: Any = None,
        cookie_jar: CookieJar | None = None,
    ) -> None:
        self._closed = True  # until construction succeeds (no ResourceWarning for a failure)
        self._done = threading.Event()
        self.close_timeout = HANDLER_JOIN_TIMEOUT
        """Kept for symmetry with :class:`Server` (a listener runs no handlers to wait for)."""
        self._queue = _AcceptQueue(config.limits.accept_backlog)
        if cookie_jar is None:
            cookie_jar = cookie_jar_for(config)  # one secret: a cookie is valid on every socket
        self._ios = [
            ServerDriver(
                sock,
                ServerEngine(config, context=context, cookie_jar=cookie_jar),
                self._queue.offer,
                config.mtu,
            )
            for sock in sockets
        ]
        self._addresses = [tuple(sock.getsockname()) for sock in sockets]
        for io in self._ios:
            io.start()
        self._closed = False

    def accept(self, timeout: float | None = None) -> Channel:
        """The next peer whose handshake completed; blocks until one does.

        Raises :class:`DTLSTimeoutError` after ``timeout`` seconds, and
        :class:`ConnectionClosedLocally` once the listener is closed.
        """
        return self._queue.take(timeout)

    def pending(self) -> int:
        """Completed handshakes waiting for :meth:`accept`."""
        return len(self._queue)

    def statistics(self) -> ServerStatistics:
        """The sockets' counters added up: sessions, handshakes, drops by reason."""
        return aggregate_server_statistics(io.statistics() for io in self._ios)

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets, one per address."""
        return [io.sock for io in self._ios]

    @property
    def addresses(self) -> list[Address]:
        """The bound addresses, ``(host, port, ...)``; still known after :meth:`close`."""
        return list(self._addresses)

    def _bound_socket(self) -> socket.socket:
        return self._ios[0].sock

    def close(self) -> None:
        """Send close_notify to every peer (accepted or not), close the sockets, wake
        :meth:`accept` callers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        waiting = self._queue.close()
        try:
            for io in self._ios:
                io.shutdown()
        finally:
            for channel in waiting:
                channel._abandon()
            self._done.set()

    shutdown = close
    """The same as :meth:`close`."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def is_serving(self) -> bool:
        """Whether the listener is accepting peers (not closed)."""
        return not self._closed

    def serve_forever(self) -> None:
        """Block until the listener is closed (by another thread or a signal); peers are
        taken meanwhile with :meth:`accept` on other threads."""
        self.wait_closed()

    def wait_closed(self, timeout: float | None = None) -> None:
        """Block until :meth:`close` has finished; :class:`DTLSTimeoutError` after
        ``timeout`` seconds (None: no limit)."""
        if not self._done.wait(timeout):
            raise DTLSTimeoutError(f"the listener was not closed within {timeout:g} s")

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        for channel in self._queue.close():
            channel._abandon()
        for io in self._ios:
            io.abandon()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening"
        where = ", ".join(_sockets.format_address(a) for a in self._addresses)
        return f"<dtlskit.sync.Listener {state} {where}>"


def listen(
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    ipv6_only: bool | None = None,
    reuse_port: bool = False,
) -> Listener:
    """Bind DTLS server sockets and return a :class:`Listener` (EdgerOS ``createServer``).

    ``host`` None or ``""`` binds every interface (one socket per family, the IPv6 one with
    ``IPV6_V6ONLY=1``); ``"::"`` alone is dual-stack unless ``ipv6_only``. Completed
    handshakes wait for :meth:`Listener.accept` in a queue of ``config.limits.accept_backlog``.
    """
    check_server_config(config)
    context = config.build_context(server=True)
    sockets = _sockets.bind_udp_sockets(host, port, ipv6_only=ipv6_only, reuse_port=reuse_port)
    try:
        return Listener(sockets, config=config, context=context)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise


# -- signals -----------------------------------------------------------------------------------


def run_server(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    workers: int = 1,
    ipv6_only: bool | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM, blocking; returns 0 after a clean shutdown (1 if a worker
    failed). The mirror image of :func:`dtlskit.asyncio.run_server`: ``workers`` > 1 forks that
    many processes sharing ``port`` through ``SO_REUSEPORT`` (see :func:`serve`). Call it from
    the main thread."""
    # With workers, a signal from now on is held until the workers can take it (run_workers).
    with (
        _workers.stop_signals_held(isinstance(workers, int) and workers > 1),
        serve(handler, host, port, config=config, workers=workers, ipv6_only=ipv6_only) as server,
    ):
        restore = install_signal_handlers(server)
        try:
            server.serve_forever()
        except DTLSError as exc:  # a worker failed; it printed its own traceback
            logger.error("%s", exc)
            return 1
        finally:
            restore()
    return 0


def install_signal_handlers(
    server: Server, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)
) -> Callable[[], None]:
    """Make SIGINT and SIGTERM close ``server`` (close_notify to every peer), so that
    :meth:`Server.serve_forever` returns. Call from the main thread. Returns a function that
    restores the previous handlers.

    The handler only starts a thread that runs :meth:`Server.close`: a signal handler runs
    between two bytecodes of the main thread, which may be holding an engine lock.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        server._close_soon(signal.Signals(signum).name)

    previous: dict[int, Any] = {}
    for sig in signals:
        previous[sig] = signal.signal(sig, handle)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    return restore
