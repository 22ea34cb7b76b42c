"""asyncio TLS channel: one TCP connection driven by the sans-I/O :class:`TLSConnection`.

Each connection has an :class:`asyncio.Protocol` (:class:`TLSProtocol`). Every wake-up is the
three steps of every dtlskit front end: feed the engine (``data_received`` /
``eof_received``), write what it produced, drain its events into the channel and re-arm the one
loop timer (handshake and idle deadlines). Received data waits in the channel's
:class:`~dtlskit.tls._common.Received`; past ``limits.max_queued_bytes`` the protocol pauses
reading the socket until the application takes data (TCP's flow control then pushes back on the
peer; nothing is dropped). ``send`` waits while the transport's write buffer is above its high
water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from .._frontend.negotiated import NegotiatedProperties
from .._frontend.sockets import Address, format_address
from ..core import events as ev
from ..core.state import State
from ..core.tls import Framing, SessionTicketReceived, TLSConnection, TLSStatistics
from ..exceptions import ConnectionLost, DTLSError, HandshakeFailure
from ._common import (
    Received,
    SharedBudget,
    check_count,
    check_limit,
    check_separator,
    ends_iteration,
    fresh,
    recv_into_slice,
)

__all__ = ["Channel", "TLSProtocol"]

logger = logging.getLogger("dtlskit.tls")

_UNTIL_LIMIT = 65536
_EOF_LIMIT = 16 * 1_048_576


_READ_BUFFER = 65536

CLOSE_GRACE = 10.0
"""Seconds a closing connection may take to hand its last buffered bytes to a peer that does
not read, before it is reset."""


class _Buffers(threading.local):
    """One receive buffer per thread (an event loop runs on one thread; the loop reads into it
    and hands the bytes over before reading again), instead of one per connection."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(_READ_BUFFER))


_buffers = _Buffers()


class TLSProtocol(asyncio.BufferedProtocol):
    """Moves one TCP connection's bytes through its engine; see the module docstring.

    A buffered protocol: the loop reads into a buffer of this thread (``recv_into``), where a
    plain protocol would get a fresh ``bytes`` of the transport's maximum read size (256 KiB,
    allocated and shrunk on every read)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: TLSConnection,
        *,
        on_established: Callable[[TLSProtocol], None] | None = None,
        on_end: Callable[[TLSProtocol, DTLSError], None] | None = None,
    ) -> None:
        self.loop = loop
        self.engine = engine
        self.transport: asyncio.Transport | None = None
        self.received = Received(engine.framing == "length-prefixed")
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.peer: Address = ("?", 0)
        self._on_established = on_established
        self._on_end = on_end
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._reader: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._limit = engine.config.limits.max_queued_bytes
        self.ended = False
        self.budget: SharedBudget | None = None
        """A server's byte budget, shared by its connections (None for clients)."""
        self._charged = 0
        self._write_blocked = False
        self._wanted = 0
        """Bytes the waiting reader needs before it can return (read_exactly's count,
        read_until_eof's limit): reading goes on up to them even past the limits."""
        engine.on_data = self._on_data

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream transport, by construction
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer) if peer else ("?", 0)
        self.engine.peer_address = self.peer
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP: nothing to tune
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        now = self.loop.time()
        if self.engine.is_server:
            self.engine.start_server(now)
        else:
            self.engine.connect(now)
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _buffers.view

    def buffer_updated(self, nbytes: int) -> None:
        engine = self.engine
        engine.receive_data(bytes(_buffers.view[:nbytes]), self.loop.time())
        if engine.has_work():  # anything but data (which went to _on_data): the full step
            self.flush()

    def _on_data(self, data: bytes) -> None:
        """The engine's delivery (its fast path: no event object)."""
        self.received.put(data)
        self._wake_reader()
        self._account()

    def _account(self) -> None:
        """Charge what the application has not taken to the budget; stop reading the socket
        past the connection's limit or the server's budget (see ``SharedBudget``)."""
        size = self.received.size
        budget = self.budget
        if budget is not None and size != self._charged:
            budget.held += size - self._charged
            freed = size < self._charged
            self._charged = size
            if freed and budget.paused and budget.held <= budget.limit:
                _resume_paused(budget)
        if self._reading_paused or self.ended or self.transport is None:
            return
        if self._wanted and self.received.nbytes < self._wanted:
            return  # a reader asked for this much (read_exactly, read_until_eof): keep reading
        over_budget = budget is not None and budget.held > budget.limit and size > 0
        if size > self._limit or over_budget:
            self._reading_paused = True
            self.transport.pause_reading()
            if over_budget and budget is not None:
                budget.paused[self] = None

    def _release_budget(self) -> None:
        budget = self.budget
        if budget is None:
            return
        budget.paused.pop(self, None)
        if self._charged:
            budget.held -= self._charged
            self._charged = 0
            if budget.paused and budget.held <= budget.limit:
                _resume_paused(budget)

    def eof_received(self) -> bool:
        self.engine.receive_eof(self.loop.time())
        self.flush()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        engine = self.engine
        if engine.state in (State.INITIAL, State.HANDSHAKING):
            why = f": {exc}" if exc is not None else ""
            engine.abort(
                HandshakeFailure(
                    f"the TCP connection to {format_address(self.peer)} was lost during the "
                    f"handshake{why}"
                )
            )
        elif engine.state not in (State.CLOSED, State.TERMINATED):
            why = f": {exc}" if exc is not None else ""
            engine.abort(
                ConnectionLost(
                    f"the TCP connection to {format_address(self.peer)} was lost{why} (the "
                    "stream was truncated)"
                )
            )
        self.flush()
        self.transport = None
        self._release_budget()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_writer()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        """The transport's write buffer passed its high-water mark: senders wait, and the
        socket is not read meanwhile, since reading can make OpenSSL write too (answers to
        TLS 1.3 KeyUpdate requests): a peer that reads nothing cannot grow the buffer."""
        if self._writable is None:
            self._writable = self.loop.create_future()
        self._write_blocked = True
        if not self._reading_paused and self.transport is not None and not self.ended:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._wake_writer()
        self._resume_reading()

    # -- the wake-up step -----------------------------------------------------------------------

    def flush(self) -> None:
        """Drain the engine's events, write its output, re-arm the timer. Events first: the
        channel's state and a server's bookkeeping of an end are final before the peer can
        see anything (a close_notify, an alert); the transport closes after the write."""
        engine = self.engine
        data, events = engine.drain()
        woke = False
        ended = False
        for event in events:
            if isinstance(event, ev.MessageReceived):  # only without on_data (not used here)
                self.received.put(event.data)
                woke = True
            elif isinstance(event, ev.HandshakeCompleted):
                if not self.handshake.done():
                    self.handshake.set_result(None)
                if self._on_established is not None:
                    self._on_established(self)
            elif isinstance(event, ev.SessionClosed | ev.ConnectionTerminated):
                ended = self._ended(engine.error or ConnectionLost("the connection ended"))
                woke = True
            elif isinstance(event, SessionTicketReceived):
                logger.debug("session ticket from %s", format_address(self.peer))
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
        if ended and transport is not None:
            self.close_transport()  # after the close_notify or alert just written
        if woke:
            self._wake_reader()
            self._account()
        deadline = engine.get_timer()
        if deadline is not None and (self._deadline is None or deadline < self._deadline):
            self._rearm(deadline)  # only an earlier deadline needs the timer moved

    def close_transport(self) -> None:
        """Close the transport once what it buffered is written; a peer that does not read
        gets :data:`CLOSE_GRACE` seconds for that, then the connection is reset (a close
        would otherwise wait for it forever)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size() > 0:
            self.loop.call_later(CLOSE_GRACE, transport.abort)

    def _ended(self, error: DTLSError) -> bool:
        """Record the end; True the first time (the caller then closes the transport)."""
        if self.ended:
            return False
        self.ended = True
        self.received.error = error
        if not self.handshake.done():
            self.handshake.set_exception(fresh(error))
            self.handshake.exception()  # retrieved here; the awaiter gets it too
        if self._on_end is not None:
            self._on_end(self, error)
        return True

    def _rearm(self, deadline: float | None) -> None:
        """Keep one loop timer at or before the engine's deadline. A deadline that only moved
        later (the idle deadline, pushed back by every record) keeps the armed timer: when it
        fires, the engine acts on what has passed and the timer is armed again for the rest."""
        armed = self._deadline
        if deadline is None or (armed is not None and armed <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._deadline = deadline
        self._timer = self.loop.call_at(deadline, self._fire) if self.transport else None

    def _fire(self) -> None:
        self._timer = None
        self._deadline = None
        self.engine.handle_timer(self.loop.time())
        self.flush()

    # -- waiting ----------------------------------------------------------------------------------

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _wake_writer(self) -> None:
        writer, self._writable = self._writable, None
        if writer is not None and not writer.done():
            writer.set_result(None)

    async def wait_readable(self, wanted: int = 0) -> None:
        """Wait until more data or the end arrives (one waiter at a time). ``wanted``: the
        bytes the reader needs in all (reading goes on up to them, past the limits: the
        caller's own bound, e.g. ``read_until_eof``'s ``limit``)."""
        if self._reader is not None and not self._reader.done():
            from ..exceptions import ConcurrencyError

            raise ConcurrencyError("two tasks read from one TLS channel at once")
        self._wanted = wanted
        self._resume_reading()
        self._reader = self.loop.create_future()
        try:
            await self._reader
        finally:
            self._reader = None
            self._wanted = 0

    def _resume_reading(self) -> None:
        if not self._reading_paused or self._write_blocked:
            return
        size = self.received.size
        budget = self.budget
        wanted = self._wanted and self.received.nbytes < self._wanted
        if not wanted and (
            size > self._limit or (budget is not None and size > 0 and budget.held > budget.limit)
        ):
            return
        self._reading_paused = False
        if budget is not None:
            budget.paused.pop(self, None)
        if self.transport is not None:
            self.transport.resume_reading()

    def taken(self) -> None:
        """The application took data: give its bytes back, read the socket again if paused."""
        self._account()
        if self._reading_paused:
            self._resume_reading()

    async def writable(self) -> None:
        """Wait while the transport's write buffer is full."""
        while self._writable is not None and self.transport is not None:
            await asyncio.shield(self._writable)


def _resume_paused(budget: SharedBudget) -> None:
    """The budget fell back under its limit: let connections it stopped read again, oldest
    first, while it stays under."""
    while budget.paused and budget.held <= budget.limit:
        protocol = next(iter(budget.paused))
        del budget.paused[protocol]
        protocol._resume_reading()


class Channel(NegotiatedProperties):
    """One TLS connection, the asyncio flavour; the shape of the DTLS
    :class:`dtlskit.asyncio.Channel`.

    Stream semantics by default: ``recv()`` returns what arrived (bytes, at least one);
    ``read_exactly``, ``read_until`` and ``read_until_eof`` read the stream in the ways
    protocols need. With ``framing="length-prefixed"`` each ``recv()`` is one whole message
    ``send()`` sent on the other side. ``async for`` yields until the peer closes cleanly.
    Use it as ``async with``; ``close()`` sends close_notify.
    """

    _engine: TLSConnection

    def __init__(self, protocol: TLSProtocol) -> None:
        self._protocol = protocol
        self._engine = protocol.engine
        self._received = protocol.received
        sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
        self._sockname: Address = tuple(sock.getsockname()) if sock is not None else ("?", 0)
        self._closing = False

    # -- data -------------------------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (stream: any length; framed: one message); waits while the socket's
        write buffer is full. Raises the connection's end once it ended."""
        self._send(data)
        if self._protocol._writable is not None:  # the transport's buffer is full: wait
            await self._protocol.writable()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Send without waiting for buffer space (the transport buffers it)."""
        self._send(data)

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        engine = self._engine
        engine.send(data)
        if engine.has_events():
            self._protocol.flush()
            return
        out = engine.data_to_send()  # the common case: records to write, nothing else
        transport = self._protocol.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)

    async def recv(self) -> bytes:
        """Stream: the bytes that arrived (waits for at least one). Framed: the next message.
        After the end, what arrived before it first, then the end's exception
        (:class:`~dtlskit.ConnectionClosedByPeer` after close_notify,
        :class:`~dtlskit.ConnectionLost` when truncated)."""
        received = self._received
        while not received.ready():
            await self._protocol.wait_readable()
        data = received.take()
        self._protocol.taken()
        return data

    async def recv_into(self, buffer: Any, *, offset: int = 0, length: int | None = None) -> int:
        """Stream: copy what arrived (up to ``length`` bytes, at least one) into
        ``buffer[offset:]``; framed: the next message, which must fit
        (:class:`~dtlskit.BufferTooSmall` otherwise; it stays queued). Returns the size."""
        view, offset, length = recv_into_slice(buffer, offset, length)
        while (size := self._received.take_into(view, offset, length)) is None:
            await self._protocol.wait_readable()
        self._protocol.taken()
        return size

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`~dtlskit.ConnectionLost` when the stream ends first.

        The socket is read on up to ``n`` bytes, past ``limits.max_queued_bytes`` and the
        server's budget: bound ``n`` yourself (check a length read off the stream before
        passing it here)."""
        check_count(n)
        while (data := self._received.take_exactly(n)) is None:
            await self._protocol.wait_readable(n)
        self._protocol.taken()
        return data

    async def read_until(self, separator: bytes = b"\n", *, limit: int = _UNTIL_LIMIT) -> bytes:
        """Bytes up to and including ``separator``, at most ``limit`` bytes (else
        :class:`~dtlskit.InvalidMessage`; the bytes stay buffered)."""
        check_separator(separator)
        check_limit(limit)
        while (data := self._received.take_until(separator, limit)) is None:
            await self._protocol.wait_readable(limit)
        self._protocol.taken()
        return data

    async def read_until_eof(self, *, limit: int = _EOF_LIMIT) -> bytes:
        """Everything until the peer closes with close_notify (at most ``limit`` bytes, which
        may be held at once: past ``limits.max_queued_bytes``, so choose it); a truncated
        stream raises :class:`~dtlskit.ConnectionLost`."""
        check_limit(limit)
        while (data := self._received.take_until_eof(limit)) is None:
            await self._protocol.wait_readable(limit + 1)  # one more: "past the limit" shows
        self._protocol.taken()
        return data

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        received = self._received  # recv(), inlined: one coroutine frame less per message
        while not received.ready():
            await self._protocol.wait_readable()
        try:
            data = received.take()
        except DTLSError as exc:
            if ends_iteration(exc):
                raise StopAsyncIteration from None
            raise
        self._protocol.taken()
        return data

    # -- life -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Send close_notify and close the connection. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._engine.close()
        self._protocol.flush()
        self._protocol.close_transport()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        await asyncio.shield(self._protocol.closed)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # -- properties -------------------------------------------------------------------------------

    def getpeername(self) -> Address:
        """The peer's address."""
        return self._protocol.peer

    def getsockname(self) -> Address:
        """Our address."""
        return self._sockname

    def pending(self) -> int:
        """Bytes (stream) or messages (framed) received and not yet taken."""
        return self._received.pending()

    def statistics(self) -> TLSStatistics:
        """A snapshot of the connection's counters."""
        return self._engine.statistics()

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (either way)."""
        return self._closing or self._protocol.ended

    @property
    def error(self) -> DTLSError | None:
        """Why the connection ended, once it did."""
        return self._engine.error

    @property
    def framing(self) -> Framing:
        """``"stream"`` or ``"length-prefixed"``."""
        return self._engine.framing

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<dtlskit.tls.Channel {format_address(self.getpeername())} {state}>"
