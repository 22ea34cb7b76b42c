"""Blocking TLS over TCP with the DTLS API: :func:`connect`, :func:`serve` (a thread per
client), :func:`listen` / ``accept``. The mirror image of :mod:`dtlskit.tls` (same names; calls
that wait take a ``timeout``).

Theory of operation
-------------------
A :class:`Channel` owns one connected TCP socket and one
:class:`~dtlskit.core.tls.TLSConnection`. No I/O thread: the thread that reads waits for the
socket with ``select`` (holding nothing), then, under the channel's lock, feeds the engine,
writes what it produced and moves its events into the channel's
:class:`~dtlskit.tls._common.Received`. ``send`` takes the same lock to encrypt and write, so
the engine sees one caller at a time and the records leave in the order they were made; one
thread may read while another sends. Data is read from the socket only when the application
asks for more than what waits, so what a peer can make us hold is bounded by one read
(TCP's flow control holds the rest back in the kernel).

A server has one accept thread per listening socket set. It admits each TCP connection by the
limits (:class:`~dtlskit.tls._common.ConnectionGate`) and hands it to a thread of its own,
which runs the handshake against the engine's deadline and then the handler (``serve``) or
queues the channel for ``accept`` (``listen``); a slow or silent client holds only its own
thread. The accept thread also wakes at the earliest idle deadline of the established
channels and closes those past it (close_notify), so an idle client is dropped even while its
handler is busy elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from OpenSSL import SSL

from .._frontend.negotiated import NegotiatedProperties
from .._frontend.sockets import Address, check_port, format_address
from ..config import DTLSConfiguration
from ..core import events as ev
from ..core.session import Session
from ..core.state import State
from ..core.tls import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Framing,
    TLSConnection,
    TLSStatistics,
    check_framing,
)
from ..exceptions import (
    ConcurrencyError,
    ConfigurationError,
    ConnectionLost,
    DTLSError,
    DTLSTimeoutError,
    HandshakeTimeout,
    InvalidArgument,
    UsageError,
)
from ..tls._common import (
    ConnectionGate,
    Received,
    TLSServerStatistics,
    bind_tcp_sockets,
    check_count,
    check_limit,
    check_separator,
    check_server_tls_config,
    connect_error,
    ends_iteration,
    fresh,
    recv_into_slice,
    server_idle_timeout,
)

__all__ = ["Channel", "Listener", "Server", "connect", "listen", "serve"]

logger = logging.getLogger("dtlskit.tls.server")

Handler = Callable[["Channel"], None]

_READ_SIZE = 65536
_UNTIL_LIMIT = 65536
_EOF_LIMIT = 16 * 1_048_576
HANDLER_JOIN_TIMEOUT = 5.0
CLOSE_WAIT = 2.0
"""Seconds a closing server waits for a handler thread that holds a connection without
writing (e.g. one just finishing an echo's write) before it shuts that socket down."""


class _LockedBudget:
    """A blocking server's ``limits.max_buffered_bytes`` for partial framed messages, charged
    by its client threads (under a lock: ``+=`` is not atomic across threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def charge(self, delta: int) -> bool:
        """Add ``delta`` bytes; False (and nothing added) when a growth would pass the limit."""
        with self._lock:
            if delta > 0 and self.held + delta > self.limit:
                return False
            self.held += delta
            return True


def _readable(socks: list[socket.socket], timeout: float | None) -> list[socket.socket]:
    """The sockets of ``socks`` that are readable (or closed) within ``timeout`` seconds
    (``poll``: descriptors above 1023 are fine, unlike ``select``)."""
    poller = select.poll()
    by_fd = {}
    for sock in socks:
        fd = sock.fileno()
        if fd < 0:
            raise ValueError("socket closed")
        by_fd[fd] = sock
        poller.register(fd, select.POLLIN | select.POLLPRI)
    events = poller.poll(None if timeout is None else math.ceil(max(timeout, 0.0) * 1000.0))
    return [by_fd[fd] for fd, _ in events if fd in by_fd]


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise InvalidArgument(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return time.monotonic() + timeout


class Channel(NegotiatedProperties):
    """One TLS connection, blocking flavour; the shape of :class:`dtlskit.sync.Channel`.

    ``recv(timeout=None)`` returns what arrived (stream) or the next message (framed);
    ``read_exactly``, ``read_until``, ``read_until_eof`` read streams; ``for data in channel``
    runs until the peer closes cleanly. ``close()`` sends close_notify.
    """

    _engine: TLSConnection

    def __init__(self, sock: socket.socket, engine: TLSConnection, peer: Address) -> None:
        self._sock = sock
        self._engine = engine
        self._peer = peer
        self._received = Received(engine.framing == "length-prefixed")
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        self._sockname: Address = tuple(sock.getsockname())
        self.on_end: Callable[[Channel], None] | None = None
        """Called once when the connection ends (a server's bookkeeping)."""
        self.budget: _LockedBudget | None = None
        """A server's ``limits.max_buffered_bytes`` for partial framed messages."""
        self._charged = 0
        self._in_sendall = False
        """True while a thread is in the socket's ``sendall`` (which may block)."""

    # -- the wake-up step -------------------------------------------------------------------------

    def _flush_locked(self, deadline: float | None = None) -> None:
        """Drain the engine's events into the channel, then write its output: the channel's
        state (and a server's bookkeeping of its end) is final before the peer can see
        anything (a close_notify, an alert)."""
        engine = self._engine
        data = engine.data_to_send()
        ended = False
        while (event := engine.next_event()) is not None:
            if isinstance(event, ev.MessageReceived):
                self._received.put(event.data)
            elif isinstance(event, ev.SessionClosed | ev.ConnectionTerminated):
                self._received.error = engine.error
                ended = True
        if ended and self.budget is not None and self._charged:
            self.budget.charge(-self._charged)
            self._charged = 0
        if ended and self.on_end is not None:
            self.on_end(self)
        if data and not self._closed_socket():
            try:
                self._send_within(data, deadline)
            except OSError as exc:
                where = format_address(self._peer)
                if isinstance(exc, TimeoutError):
                    error = ConnectionLost(
                        f"{where} reads nothing of what this side must send (answers OpenSSL "
                        "wrote while reading: key updates, alerts); a write blocked past the "
                        "deadline, and a partly written record cannot be taken back"
                    )
                else:
                    error = ConnectionLost(f"the TCP connection to {where} failed: {exc}")
                engine.abort(error)
                while engine.next_event() is not None:
                    pass
                self._received.error = self._received.error or engine.error
                ended = True
        if ended:
            self._close_socket()
            if self.on_end is not None:
                self.on_end(self)  # again after a failed write: idempotent for the server

    def _charge_locked(self) -> None:
        """Charge this connection's partial framed message to the server's budget; the
        connection whose message would pass it ends (named)."""
        budget = self.budget
        assert budget is not None
        size = self._engine.partial_message_bytes
        if not budget.charge(size - self._charged):
            budget.charge(-self._charged)  # give back what it held; the message is dropped
            self._charged = 0
            self._engine.abort(
                ConnectionLost(
                    f"{format_address(self._peer)}: the server's buffer for partly received "
                    f"messages is full (limits.max_buffered_bytes, {budget.limit} bytes)"
                )
            )
            return
        self._charged = size

    def _sendall(self, data: bytes) -> None:
        """``sendall`` on the socket, marked as a write that may block (see
        :meth:`_close_for_server`)."""
        self._in_sendall = True
        try:
            self._sock.sendall(data)
        finally:
            self._in_sendall = False

    def _close_for_server(self) -> None:
        """The server shuts down: close with close_notify, waiting for a thread that holds
        the channel for a moment (one that just finished an echo's write), but not for one
        blocked writing to a peer that does not read: its socket is shut down under it, which
        ends that write (no close_notify can follow a partly written record anyway)."""
        end = time.monotonic() + CLOSE_WAIT
        while not self._lock.acquire(timeout=0.01):  # bounded: by CLOSE_WAIT
            if self._in_sendall or time.monotonic() >= end:
                self._abort_io()
                break
        else:
            self._lock.release()
        self.close()

    def _send_within(self, data: bytes, deadline: float | None) -> None:
        """``sendall`` bounded by ``deadline`` (else by the engine's next deadline, the idle
        one, when there is one): a reader's wait must not become an unbounded write to a peer
        that reads nothing. Raises TimeoutError past it."""
        if deadline is None:
            deadline = self._engine.get_timer()
        if deadline is None:
            self._sendall(data)
            return
        self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            self._sendall(data)
        finally:
            if not self._closed_socket():
                self._sock.settimeout(None)

    def _closed_socket(self) -> bool:
        return self._sock.fileno() < 0

    def _close_socket(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _pump(self, deadline: float | None) -> None:
        """Wait for the socket (or a deadline) once and feed the engine; raises
        DTLSTimeoutError when ``deadline`` passed first."""
        engine = self._engine
        timer = engine.get_timer()
        now = time.monotonic()
        until = min(d for d in (deadline, timer) if d is not None) if (deadline or timer) else None
        wait = None if until is None else max(until - now, 0.0)
        try:
            readable = _readable([self._sock], wait)
        except (OSError, ValueError):  # closed by another thread
            readable = []
            if self._received.error is None:
                with self._lock:
                    engine.abort(ConnectionLost("the connection was closed"))
                    self._flush_locked()
            return
        now = time.monotonic()
        if readable:
            try:
                data = self._sock.recv(_READ_SIZE)
            except OSError as exc:
                data = b""
                if exc.errno not in (errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                    logger.debug("recv from %s: %s", format_address(self._peer), exc)
            with self._lock:
                if data:
                    engine.receive_data(data, now)
                    if self.budget is not None:
                        self._charge_locked()
                else:
                    engine.receive_eof(now)
                self._flush_locked(deadline)
            return
        if timer is not None and now >= timer:
            with self._lock:
                engine.handle_timer(now)
                self._flush_locked()
            return
        if deadline is not None and now >= deadline:
            raise DTLSTimeoutError("timed out waiting for data (the connection is still usable)")

    def _handshake(self, deadline: float | None) -> None:
        while self._engine.state is State.HANDSHAKING:
            self._pump(deadline)
        if self._engine.state is not State.ESTABLISHED and self._received.error is not None:
            raise fresh(self._received.error)

    def _expire(self, now: float) -> None:
        """Act on a passed engine deadline (the server's idle sweep). Never waits: when a
        thread holds the channel (a ``send`` blocked on a peer that does not read), the
        socket is shut down under it instead, which ends that send."""
        if not self._lock.acquire(blocking=False):
            timer = self._engine.get_timer()
            if timer is not None and now >= timer:
                self._abort_io()
            return
        try:
            timer = self._engine.get_timer()
            if timer is not None and now >= timer:
                self._engine.handle_timer(now)
                self._flush_locked()
        finally:
            self._lock.release()

    def _abort_io(self) -> None:
        """Shut the socket down without the channel's lock: a thread blocked in it (a send to
        a peer that does not read, a wait for data) returns and finds the connection over."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # -- data -------------------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Send ``data`` (stream: any length; framed: one message). Blocks while the socket's
        buffer is full; ``timeout`` bounds that (then the connection ends: a partly written
        record cannot be taken back)."""
        with self._lock:
            self._engine.send(data)
            out = self._engine.data_to_send()
            if out:
                self._sock.settimeout(timeout)
                try:
                    self._sendall(out)
                except TimeoutError as exc:
                    self._engine.abort(ConnectionLost("send timed out; the stream is broken"))
                    self._flush_locked()
                    raise DTLSTimeoutError(
                        f"send to {format_address(self._peer)} timed out after {timeout} s"
                    ) from exc
                except OSError as exc:
                    self._engine.abort(
                        ConnectionLost(
                            f"the TCP connection to {format_address(self._peer)} failed: {exc}"
                        )
                    )
                    self._flush_locked()
                    raise fresh(self._engine.error) from exc
                finally:
                    if not self._closed_socket():
                        self._sock.settimeout(None)
            self._flush_locked()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """:meth:`send` (the name of the asyncio flavour's non-waiting send): a partly
        written TLS record cannot be taken back, so the blocking flavour writes it whole."""
        self.send(data)

    def _wait(self, take: Callable[[], bytes | None], timeout: float | None) -> bytes:
        deadline = _check_timeout(timeout)
        if not self._read_lock.acquire(blocking=False):
            raise ConcurrencyError("two threads read from one TLS channel at once")
        try:
            while (data := take()) is None:
                self._pump(deadline)
            return data
        finally:
            self._read_lock.release()

    def recv(self, timeout: float | None = None) -> bytes:
        """Stream: what arrived (at least one byte). Framed: the next message. After the
        end: what arrived before it, then the end's exception. :class:`DTLSTimeoutError` after
        ``timeout`` seconds (the connection stays usable)."""
        received = self._received
        return self._wait(lambda: received.take() if received.ready() else None, timeout)

    def recv_into(
        self,
        buffer: Any,
        *,
        offset: int = 0,
        length: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Stream: copy what arrived (up to ``length`` bytes, at least one) into
        ``buffer[offset:]``; framed: the next message, which must fit
        (:class:`~dtlskit.BufferTooSmall` otherwise; it stays queued). Returns the size."""
        view, offset, length = recv_into_slice(buffer, offset, length)
        deadline = _check_timeout(timeout)
        if not self._read_lock.acquire(blocking=False):
            raise ConcurrencyError("two threads read from one TLS channel at once")
        try:
            while (size := self._received.take_into(view, offset, length)) is None:
                self._pump(deadline)
            return size
        finally:
            self._read_lock.release()

    def read_exactly(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` bytes; :class:`~dtlskit.ConnectionLost` when the stream ends first."""
        check_count(n)
        return self._wait(lambda: self._received.take_exactly(n), timeout)

    def read_until(
        self, separator: bytes = b"\n", *, limit: int = _UNTIL_LIMIT, timeout: float | None = None
    ) -> bytes:
        """Bytes up to and including ``separator`` (at most ``limit``)."""
        check_separator(separator)
        check_limit(limit)
        return self._wait(lambda: self._received.take_until(separator, limit), timeout)

    def read_until_eof(self, *, limit: int = _EOF_LIMIT, timeout: float | None = None) -> bytes:
        """Everything until the peer's close_notify; a truncated stream raises
        :class:`~dtlskit.ConnectionLost`."""
        check_limit(limit)
        return self._wait(lambda: self._received.take_until_eof(limit), timeout)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self.recv()
            except DTLSError as exc:
                if ends_iteration(exc):
                    return
                raise

    # -- life -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Send close_notify and close the socket. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._engine.state is State.ESTABLISHED:
                self._engine.close()
                self._flush_locked()
            else:
                self._engine.close()
                self._engine.data_to_send()
                while self._engine.next_event() is not None:
                    pass
                self._received.error = self._received.error or self._engine.error
                self._close_socket()
                if self.on_end is not None:
                    self.on_end(self)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- properties -------------------------------------------------------------------------------

    def getpeername(self) -> Address:
        """The peer's address."""
        return self._peer

    def getsockname(self) -> Address:
        """Our address."""
        return self._sockname

    def fileno(self) -> int:
        """The socket's descriptor (to ``select`` on; do not read it yourself)."""
        return self._sock.fileno()

    def pending(self) -> int:
        """Bytes (stream) or messages (framed) received and not yet taken."""
        return self._received.pending()

    def statistics(self) -> TLSStatistics:
        """A snapshot of the connection's counters."""
        return self._engine.statistics()

    @property
    def closed(self) -> bool:
        """Whether the connection ended (either way)."""
        return self._closed or self._received.error is not None

    @property
    def error(self) -> DTLSError | None:
        """Why the connection ended, once it did."""
        return self._engine.error

    @property
    def framing(self) -> Framing:
        """``"stream"`` or ``"length-prefixed"``."""
        return self._engine.framing

    @property
    def session(self) -> Session | None:
        """The newest resumable session. TLS 1.3 tickets come after the handshake: they are
        read with the data (what already arrived is read here, without waiting)."""
        if not self._closed and self._received.error is None and self._read_lock.acquire(False):
            try:
                with contextlib.suppress(DTLSTimeoutError):
                    self._pump(time.monotonic())
            finally:
                self._read_lock.release()
        return self._engine.session

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<dtlskit.sync.tls.Channel {format_address(self._peer)} {state}>"


# -- client -------------------------------------------------------------------------------------


def connect(
    host: str,
    port: int,
    *,
    config: DTLSConfiguration | None = None,
    local_addr: Address | None = None,
    timeout: float | None = None,
    server_hostname: str | None = None,
    session: Session | None = None,
    framing: Framing = "stream",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> Channel:
    """Open a TLS connection over TCP (blocking); arguments as :func:`dtlskit.tls.connect`."""
    check_port(port)
    check_framing(framing, max_message_size)
    config = config if config is not None else DTLSConfiguration.client()
    limit = config.handshake_timeout if timeout is None else float(timeout)
    if not limit > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    engine_config = (
        config if limit == config.handshake_timeout else config.replace(handshake_timeout=limit)
    )
    deadline = time.monotonic() + limit
    engine = TLSConnection(
        engine_config,
        server=False,
        server_hostname=server_hostname or config.server_hostname or host,
        session=session,
        framing=framing,
        max_message_size=max_message_size,
        context=config.context(False, tls=True),
    )
    try:
        sock = socket.create_connection((host, port), timeout=limit, source_address=local_addr)
    except TimeoutError as exc:
        raise HandshakeTimeout(
            f"TCP connect to {host}:{port} took longer than {limit:g} s"
        ) from exc
    except OSError as exc:
        raise connect_error(exc, host, port) from exc
    sock.settimeout(None)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer = tuple(sock.getpeername())
    engine.peer_address = peer
    channel = Channel(sock, engine, peer)
    try:
        with channel._lock:
            engine.connect(time.monotonic())
            channel._flush_locked()
        channel._handshake(deadline + 1)
    except DTLSTimeoutError as exc:
        channel.close()
        raise HandshakeTimeout(
            f"handshake with {host}:{port} took longer than {limit:g} s"
        ) from exc
    except BaseException:
        channel.close()
        raise
    return channel


# -- servers ------------------------------------------------------------------------------------


class Server:
    """A blocking TLS server: one thread per client running ``handler(channel)``."""

    def __init__(
        self,
        handler: Handler | None,
        host: str | None,
        port: int,
        *,
        config: DTLSConfiguration,
        framing: Framing = "stream",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        reuse_port: bool = False,
        context: SSL.Context | None = None,
    ) -> None:
        check_server_tls_config(config)
        check_framing(framing, max_message_size)
        check_port(port)
        self._handler = handler
        self._config = config
        self._framing: Framing = framing
        self._max_message = max_message_size
        self._context = context if context is not None else config.context(True, tls=True)
        self._idle = server_idle_timeout(config)
        self._stats = TLSServerStatistics()
        self._gate = ConnectionGate(config, self._stats)
        self._budget = _LockedBudget(config.limits.max_buffered_bytes)
        self._lock = threading.Lock()
        self._channels: set[Channel] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = False
        self._done = threading.Event()
        self._sockets = bind_tcp_sockets(
            host, port, reuse_port, min(config.limits.accept_backlog * 4, 4096)
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._acceptor = threading.Thread(target=self._accept_loop, name="dtlskit-tls-accept")
        self._acceptor.daemon = True
        self._acceptor.start()

    # -- accept thread ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing:
            timeout = None
            with self._lock:
                timers = [t for c in self._channels if (t := c._engine.get_timer()) is not None]
            if timers:
                timeout = max(min(timers) - time.monotonic(), 0.0) + 0.001
            try:
                readable = _readable([*self._sockets, self._wake_r], timeout)
            except (OSError, ValueError):
                return
            for sock in readable:
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                    continue
                self._accept_from(sock)
            now = time.monotonic()
            with self._lock:
                established = [c for c in self._channels if c._engine.handshake_completed]
            for channel in established:
                channel._expire(now)

    def _accept_from(self, listening: socket.socket) -> None:
        for _ in range(64):  # bounded: other listening sockets and timers get their turn
            try:
                sock, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("accept failed: %s", exc)
                return
            peer = tuple(address)
            with self._lock:
                refused = self._closing or self._gate.admit(peer) is not None
            if refused:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                sock.close()
                continue
            sock.setblocking(True)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            engine = TLSConnection(
                self._config,
                server=True,
                peer_address=peer,
                context=self._context,
                framing=self._framing,
                max_message_size=self._max_message,
            )
            engine.set_idle_timeout(self._idle, 0.0)
            channel = Channel(sock, engine, peer)
            channel.on_end = self._ended
            if self._framing == "length-prefixed":
                channel.budget = self._budget
            with self._lock:
                self._channels.add(channel)
            thread = threading.Thread(
                target=self._client, args=(channel,), name=f"dtlskit-tls {format_address(peer)}"
            )
            thread.daemon = True
            with self._lock:
                self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # the OS refused a thread (pids.max, RLIMIT_NPROC, ...)
                logger.warning("refusing %s: cannot start a thread for it (%s)", peer, exc)
                with self._lock:
                    self._threads.discard(thread)
                    self._stats.count("threads")
                channel.on_end = None
                with self._lock:
                    if channel in self._channels:
                        self._channels.discard(channel)
                        self._gate.release(peer)
                channel._close_socket()

    def _ended(self, channel: Channel) -> None:
        with self._lock:
            if channel not in self._channels:
                return
            self._channels.discard(channel)
            self._gate.release(channel._peer)
            error = channel._engine.error
            if not channel._engine.handshake_completed:
                self._stats.handshakes_failed += 1
                if isinstance(error, HandshakeTimeout):
                    self._stats.count("handshake_timeout")
            elif error is not None and "(idle)" in str(error):
                self._stats.count("idle_timeout")

    # -- client threads ---------------------------------------------------------------------------

    def _client(self, channel: Channel) -> None:
        try:
            with channel._lock:
                channel._engine.start_server(time.monotonic())
            try:
                channel._handshake(None)
            except DTLSError as exc:
                if not channel._engine.handshake_completed:
                    where = format_address(channel._peer)
                    logger.debug("handshake with %s failed: %s", where, exc)
                    channel.close()
                    return
                # It completed, and what came with its last flight ended the connection: the
                # handler still gets the channel (its first recv raises why), as in asyncio.
            with self._lock:
                self._stats.handshakes_completed += 1
            self._wake()  # the accept thread now watches its idle deadline
            self._deliver(channel)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _deliver(self, channel: Channel) -> None:
        handler = self._handler
        assert handler is not None  # Listener overrides this
        try:
            handler(channel)
        except DTLSError as exc:
            logger.debug("handler for %s ended: %s", format_address(channel._peer), exc)
        except Exception:
            logger.exception("handler for %s raised", format_address(channel._peer))
        finally:
            channel.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- public -----------------------------------------------------------------------------------

    @property
    def addresses(self) -> list[Address]:
        """The addresses listened on."""
        return [tuple(s.getsockname()) for s in self._sockets if s.fileno() >= 0]

    @property
    def port(self) -> int:
        """The port listened on."""
        return int(self.addresses[0][1])

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets."""
        return list(self._sockets)

    def statistics(self) -> TLSServerStatistics:
        """A snapshot of the server's counters."""
        with self._lock:
            return self._stats.copy()

    def is_serving(self) -> bool:
        """Whether the server accepts new clients."""
        return not self._closing

    def serve_forever(self) -> None:
        """Block until the server is closed (from another thread, a handler or a signal)."""
        self._done.wait()

    def close(self) -> None:
        """Stop accepting, close every connection (close_notify), join the threads (at most
        :data:`HANDLER_JOIN_TIMEOUT` s for handlers). Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            channels = list(self._channels)
        self._wake()
        if self._acceptor is not threading.current_thread():
            self._acceptor.join(5)
        for sock in self._sockets:
            sock.close()
        for channel in channels:
            channel._close_for_server()
        with self._lock:
            threads = list(self._threads)
        end = time.monotonic() + HANDLER_JOIN_TIMEOUT
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(end - time.monotonic(), 0))
        self._wake_r.close()
        self._wake_w.close()
        self._done.set()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ", ".join(format_address(a) for a in self.addresses)
        return f"<dtlskit.sync.tls.{type(self).__name__} {where}>"


class Listener(Server):
    """A blocking TLS server whose clients are taken with :meth:`accept`."""

    def __init__(self, host: str | None, port: int, **kwargs: Any) -> None:
        self._queue: queue.Queue[Channel] = queue.Queue()
        super().__init__(None, host, port, **kwargs)

    def _deliver(self, channel: Channel) -> None:
        if self._queue.qsize() >= self._config.limits.accept_backlog or self._closing:
            with self._lock:
                self._stats.count("accept_backlog")
            channel.close()
            return
        self._queue.put(channel)

    def accept(self, timeout: float | None = None) -> Channel:
        """The next client whose handshake completed; :class:`~dtlskit.DTLSTimeoutError`
        after ``timeout`` seconds (None: wait forever)."""
        deadline = _check_timeout(timeout)
        while True:
            if self._closing and self._queue.empty():
                raise UsageError("the listener is closed")
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                channel = self._queue.get(timeout=wait if wait is not None else 1.0)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DTLSTimeoutError(f"no client within {timeout:g} s") from None
                continue
            return channel

    def close(self) -> None:
        super().close()
        while not self._queue.empty():
            self._queue.get_nowait().close()


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
) -> Server:
    """Serve TLS on ``host:port``, one thread per client running ``handler(channel)``; the
    channel is closed when the handler returns. Use ``with``; ``serve_forever()`` blocks."""
    return Server(
        handler,
        host,
        port,
        config=config,
        framing=framing,
        max_message_size=max_message_size,
        reuse_port=reuse_port,
        context=context,
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
) -> Listener:
    """Listen for TLS clients taken with :meth:`Listener.accept`; limits as :func:`serve`."""
    return Listener(
        host,
        port,
        config=config,
        framing=framing,
        max_message_size=max_message_size,
        reuse_port=reuse_port,
        context=context,
    )
