"""The blocking QUIC front end: ``dtlskit.sync.quic.connect`` / ``serve``, channels, streams.

Theory of operation
-------------------
As in the blocking DTLS front end, one I/O thread owns each socket (:class:`_IOThread`). It
waits in ``selector.select`` until a datagram arrives or the earliest session deadline passes,
then, holding the socket's lock, does the same three steps as every front end: feed the
sessions (up to 64 datagrams per wake-up), fire due timers, transmit what they queued; then it
wakes every thread waiting on the socket's condition. User threads call the sans-I/O session
(:mod:`dtlskit.quic._engine`) under the same lock and transmit right away; when that moves a
deadline earlier than the one the I/O thread sleeps towards, they wake it through a socket
pair. The policy (streams as messages, bounds, deadlines, errors) is the engine's, shared with
the asyncio flavour, as is what both front ends do alike (:mod:`dtlskit.quic._frontend`);
names and semantics mirror :mod:`dtlskit.quic`, plus ``timeout=`` on every blocking call
(:class:`DTLSTimeoutError`; the connection stays usable).

A server runs each handler in its own thread once the connection's handshake completes; the
handler's return closes the connection (CONNECTION_CLOSE, code 0).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..config import DTLSConfiguration
from ..exceptions import (
    ConcurrencyError,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    DTLSError,
    DTLSTimeoutError,
    InvalidArgument,
)
from ..quic._engine import QuicServerEngine, QuicSession, QuicStatistics, StreamError
from ..quic._frontend import (
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
from ..quic.sansio import client_session, server_engine

__all__ = ["QuicChannel", "QuicServer", "QuicStream", "StreamError", "connect", "serve"]

logger = logging.getLogger("dtlskit.quic")

_READS_PER_WAKE = 64
_MAX_DATAGRAM = 65535


class _IOThread:
    """One socket's thread: reads, fires timers, transmits; wakes waiting threads."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._heap: list[tuple[float, int, QuicSession]] = []
        self._deadline_of: dict[QuicSession, float] = {}
        self._order = itertools.count()
        self._sleeping_until: float | None = None
        self._stopping = False
        self.error: DTLSError | None = None
        self.on_datagram: Callable[[bytes, Any, float], QuicSession | None] = lambda d, a, n: None
        self.on_flushed: Callable[[QuicSession], None] = lambda s: None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def now(self) -> float:
        return time.monotonic()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- called with the lock held ---------------------------------------------------------------

    def flush_locked(self, session: QuicSession) -> None:
        """Transmit the session's datagrams, re-arm its timer, forget it once it is over."""
        now = self.now()
        for data, address in session.datagrams_to_send(now):
            try:
                self.sock.sendto(data, address)
            except BlockingIOError:
                pass  # the kernel's buffer is full: QUIC's loss recovery re-sends it
            except OSError as exc:
                self._socket_error(exc)
        deadline = session.get_timer()
        if session.finished:
            deadline = None
        if deadline != self._deadline_of.get(session):
            if deadline is None:
                self._deadline_of.pop(session, None)
            else:
                self._deadline_of[session] = deadline
                heapq.heappush(self._heap, (deadline, next(self._order), session))
                if threading.current_thread() is not self._thread and (
                    self._sleeping_until is None or deadline < self._sleeping_until
                ):
                    self.wake()
        self.on_flushed(session)
        session.touched.clear()  # every waiter is woken below: no need to know which
        self.cond.notify_all()

    def _socket_error(self, exc: OSError) -> None:
        self.error = socket_error(exc)

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        selector = self._selector
        while True:
            with self.lock:
                if self._stopping:
                    break
                timeout = self._next_timeout()
            events = selector.select(timeout)
            with self.lock:
                if self._stopping:
                    break
                self._sleeping_until = None
                try:
                    for key, _ in events:
                        if key.fileobj is self._wake_r:
                            with contextlib.suppress(OSError):
                                while self._wake_r.recv(4096):
                                    pass
                        else:
                            self._read_locked()
                    self._fire_locked()
                except Exception:  # a bug must not stop the socket: log it, serve the others
                    logger.exception("QUIC I/O thread %s: a step failed", self._thread.name)
                self.cond.notify_all()
        selector.close()

    def _next_timeout(self) -> float | None:
        heap = self._heap
        while heap and self._deadline_of.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        if not heap:
            self._sleeping_until = None
            return None
        self._sleeping_until = heap[0][0]
        return max(0.0, heap[0][0] - self.now())

    def _read_locked(self) -> None:
        touched: dict[QuicSession, None] = {}
        for _ in range(_READS_PER_WAKE):
            try:
                data, address = self.sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                self._socket_error(exc)
                break
            try:
                session = self.on_datagram(data, address, self.now())
            except Exception:
                logger.exception("QUIC I/O thread: a datagram from %r failed", address)
                continue
            if session is not None:
                touched[session] = None
        for session in touched:
            try:
                self.flush_locked(session)
            except Exception:
                logger.exception("QUIC I/O thread: flushing %r failed", session.peer_address)

    def _fire_locked(self) -> None:
        now = self.now()
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, session = heapq.heappop(heap)
            if self._deadline_of.get(session) != deadline:
                continue
            del self._deadline_of[session]
            session.handle_timer(now)
            self.flush_locked(session)

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
        self.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        self._wake_r.close()
        self._wake_w.close()
        self.sock.close()


class QuicStream(StreamBase):
    """One QUIC stream used directly: read it to FIN, write it (and FIN)."""

    _channel: QuicChannel

    def read(self, timeout: float | None = None) -> bytes:
        """Everything the peer writes on this stream, up to its FIN (at most
        ``max_stream_bytes``: a longer stream is refused with :class:`StreamError`)."""
        channel = self._channel
        session = channel._session
        deadline = _deadline(timeout)
        with channel._io.lock:
            while not self._ended:
                if not self._take(session):
                    channel._wait_locked(deadline, "stream read")
            return self._whole(session)

    def write(self, data: bytes | bytearray | memoryview, *, end: bool = False) -> None:
        """Write ``data``; with ``end=True`` send FIN after it."""
        channel = self._channel
        with channel._io.lock:
            channel._session.write_stream(self.stream_id, bytes(data), end)
            channel._io.flush_locked(channel._session)

    def end(self) -> None:
        """Send FIN (no more data from us on this stream)."""
        self.write(b"", end=True)

    def reset(self, error_code: int = 0) -> None:
        """Abandon the stream both ways (RESET_STREAM and STOP_SENDING with ``error_code``)."""
        channel = self._channel
        with channel._io.lock:
            channel._session.reset_stream(self.stream_id, error_code)
            channel._io.flush_locked(channel._session)


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or timeout < 0:
        raise InvalidArgument(f"timeout must be None or a number >= 0, not {timeout!r}")
    return time.monotonic() + timeout


class QuicChannel(ChannelBase):
    """A QUIC connection with the DTLS channel's shape (see :class:`dtlskit.quic.QuicChannel`);
    blocking calls take ``timeout=`` and raise :class:`DTLSTimeoutError` when it runs out."""

    _kind = "sync QuicChannel"

    def __init__(
        self, io: _IOThread, session: QuicSession, peer: Any, owns_io: bool
    ) -> None:
        self._io = io
        self._session = session
        self._peer = peer
        self._owns_io = owns_io
        self._receiving = False

    def _wait_locked(self, deadline: float | None, what: str) -> None:
        session = self._session
        if session.error is not None:
            raise session.error
        if self._io.error is not None and not session.handshake_complete:
            raise self._io.error
        if deadline is None:
            self._io.cond.wait()
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise DTLSTimeoutError(f"{what}: the timeout ran out (the connection is still usable)")
        self._io.cond.wait(left)

    def _handshake(self, timeout: float | None) -> None:
        deadline = _deadline(timeout)
        with self._io.lock:
            while not self._session.handshake_complete:
                self._wait_locked(deadline, "connect")

    # -- messages ------------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Open a stream, write ``data`` on it and FIN."""
        with self._io.lock:
            self._session.send_message(data)  # type: ignore[arg-type]
            self._io.flush_locked(self._session)

    def recv(self, timeout: float | None = None) -> bytes:
        """The next stream the peer ended with FIN (one it opened, or its answer on one
        :meth:`send` opened)."""
        deadline = _deadline(timeout)
        with self._io.lock:
            if self._receiving:
                raise ConcurrencyError("another thread is already waiting in recv()")
            self._receiving = True
            try:
                while True:
                    message = self._session.next_message()
                    if message is not None:
                        self._io.flush_locked(self._session)
                        return message
                    self._wait_locked(deadline, "recv")
            finally:
                self._receiving = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self.recv()
            except (ConnectionClosedByPeer, ConnectionClosedLocally):
                return

    def request(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> bytes:
        """Seed 002's client: open a stream, write ``data`` and FIN, and return the peer's answer
        on the same stream, read to its FIN."""
        stream = self.open_stream()
        stream.write(data, end=True)
        return stream.read(timeout)

    # -- streams -------------------------------------------------------------------------------

    def open_stream(self) -> QuicStream:
        """A new bidirectional stream for direct use."""
        with self._io.lock:
            return QuicStream(self, self._session.open_stream())

    def accept_stream(self, timeout: float | None = None) -> QuicStream:
        """The next stream the peer opened (in opening order), claimed for direct use."""
        deadline = _deadline(timeout)
        with self._io.lock:
            while True:
                stream_id = self._session.accept_stream()
                if stream_id is not None:
                    return QuicStream(self, stream_id)
                self._wait_locked(deadline, "accept_stream")

    # -- datagrams -----------------------------------------------------------------------------

    def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """Send an RFC 9221 datagram (unreliable); needs ``datagrams=True`` on both sides."""
        with self._io.lock:
            self._session.send_datagram(data)  # type: ignore[arg-type]
            self._io.flush_locked(self._session)

    def recv_datagram(self, timeout: float | None = None) -> bytes:
        """The next RFC 9221 datagram received."""
        deadline = _deadline(timeout)
        with self._io.lock:
            while True:
                data = self._session.next_datagram()
                if data is not None:
                    return data
                self._wait_locked(deadline, "recv_datagram")

    # -- lifetime ------------------------------------------------------------------------------

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close the connection (CONNECTION_CLOSE with ``error_code`` and ``reason``).
        Idempotent; never waits for the peer."""
        with self._io.lock:
            if self._session.error is None:
                self._session.close(error_code, reason)
                self._io.flush_locked(self._session)
            self._io.cond.notify_all()
        if self._owns_io:
            self._owns_io = False
            self._io.stop()

    def __enter__(self) -> QuicChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- information (the rest is ChannelBase's) ------------------------------------------------

    def getsockname(self) -> Any:
        return self._io.sock.getsockname()

    def statistics(self) -> QuicStatistics:
        with self._io.lock:
            return self._session.statistics()


def _resolve(host: str, port: int) -> tuple[int, Any]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise resolution_error(host, exc) from exc
    return pick_address(infos)


def connect(
    host: str,
    port: int,
    *,
    config: DTLSConfiguration,
    timeout: float | None = None,
    datagrams: bool = False,
    max_stream_bytes: int | None = None,
    session: Any = None,
) -> QuicChannel:
    """Connect over QUIC and complete the handshake (blocking); see :func:`dtlskit.quic.connect`.
    ``timeout`` bounds the whole call (:class:`DTLSTimeoutError`); the handshake deadline is
    ``config.handshake_timeout`` (:class:`HandshakeTimeout`)."""
    check_config(config)
    quic_session = client_session(
        config,
        server_name=host,
        now=time.monotonic(),
        datagrams=datagrams,
        max_stream_bytes=max_stream_bytes,
        session=session,
    )
    family, address = _resolve(host, port)
    bind = client_bind_address(family)
    sock = udp_socket(family, bind, quic_session.settings.recv_buffer_size)
    io = _IOThread(sock, f"dtlskit-quic-client-{host}:{port}")

    def on_datagram(data: bytes, addr: Any, now: float) -> QuicSession:
        quic_session.receive_datagram(data, addr, now)
        return quic_session

    io.on_datagram = on_datagram
    channel = QuicChannel(io, quic_session, address, owns_io=True)
    io.start()
    try:
        with io.lock:
            quic_session.connect(address, io.now())
            io.flush_locked(quic_session)
        channel._handshake(timeout)
    except BaseException:
        channel.close(0, "handshake abandoned")
        raise
    return channel


Handler = Callable[[QuicChannel], None]


class QuicServer:
    """A running blocking QUIC server: ``addresses``, ``serve_forever()``, ``shutdown()``,
    ``close()``, ``statistics()``; a context manager."""

    def __init__(self, io: _IOThread, engine: QuicServerEngine, handler: Handler) -> None:
        self._io = io
        self._engine = engine
        self._handler = handler
        self._book = HandshakeBook(engine)
        self._threads: set[threading.Thread] = set()
        self._stopped = threading.Event()
        self._closed = False
        self.addresses = [io.sock.getsockname()]
        io.on_datagram = self._on_datagram
        io.on_flushed = self._on_flushed

    def _on_datagram(self, data: bytes, address: Any, now: float) -> QuicSession | None:
        io = self._io
        return route_datagram(self._engine, data, address, now, self._send_reply, io.flush_locked)

    def _send_reply(self, data: bytes, address: Any) -> None:
        with contextlib.suppress(OSError):
            self._io.sock.sendto(data, address)

    def _on_flushed(self, session: QuicSession) -> None:
        if not self._closed and self._book.needs_handler(session):
            channel = QuicChannel(self._io, session, session.peer_address, owns_io=False)
            thread = threading.Thread(
                target=self._run, args=(channel,), name="dtlskit-quic-handler", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: this connection only fails
                logger.warning(
                    "%r: no thread for the handler (%s): connection closed",
                    session.peer_address,
                    exc,
                )
                self._engine.drops["handler_thread_unavailable"] += 1
                session.close(0x1, "server overloaded")
                self._io.flush_locked(session)
            else:
                self._threads.add(thread)
        if session.finished:
            self._book.forget(session)

    def _run(self, channel: QuicChannel) -> None:
        try:
            with handler_outcome(channel):
                self._handler(channel)
        finally:
            channel.close()
            with self._io.lock:
                self._threads.discard(threading.current_thread())

    def serve_forever(self) -> None:
        """Block until :meth:`shutdown` (or :meth:`close`)."""
        self._stopped.wait()

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return; connections stay until :meth:`close`."""
        self._stopped.set()

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE code 0) and the socket. Idempotent."""
        if self._closed:
            return
        with self._io.lock:
            self._closed = True
            for session in list(self._engine.sessions):
                if session.error is None:
                    session.close(0, "server shutting down")
                    self._io.flush_locked(session)
            threads = list(self._threads)
        self._stopped.set()
        for thread in threads:
            thread.join(timeout=10)
        self._io.stop()

    def statistics(self) -> QuicStatistics:
        with self._io.lock:
            return server_statistics(self._engine)

    def __enter__(self) -> QuicServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    config: DTLSConfiguration,
    datagrams: bool = False,
    max_stream_bytes: int | None = None,
) -> QuicServer:
    """Serve QUIC (blocking flavour): ``handler(channel)`` runs in its own thread per connection
    once its handshake completes; its return closes the connection. Returns the running
    :class:`QuicServer` (use ``serve_forever()`` or a ``with`` block)."""
    check_config(config)
    engine = server_engine(config, datagrams=datagrams, max_stream_bytes=max_stream_bytes)
    if host is None:
        family, address = int(socket.AF_INET6), ("::", port)
    else:
        family, address = _resolve(host, port)
    sock = udp_socket(family, address, engine.settings.recv_buffer_size)
    io = _IOThread(sock, f"dtlskit-quic-server-{port}")
    server = QuicServer(io, engine, handler)
    io.start()
    return server
