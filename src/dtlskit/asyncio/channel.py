"""The asyncio :class:`Channel`, and :class:`Endpoint`, the datagram protocol under every socket.

Theory of operation
-------------------
Each UDP socket has exactly one :class:`Endpoint` (an :class:`asyncio.DatagramProtocol`). Every
wake-up — a datagram arrived, the engine's timer expired, the user sent or closed — ends in
:meth:`Endpoint.flush`, the same three steps the core asks for: transmit what the engine queued,
drain its events (messages go to the channel's inbox, waiters are woken), and re-arm the one
``loop.call_at`` timer at the engine's next deadline (replaced only when it moved earlier).
``flush`` never runs user code and guards against re-entry: a socket error reported while we
transmit (asyncio calls ``error_received`` from inside ``sendto``) feeds the engine and makes the
running ``flush`` go round once more; the error a ``send`` caused is handed back to it.

Endpoints hold their channels weakly, as the blocking flavour does: a channel its user dropped
unclosed is garbage-collected, warns (``ResourceWarning``) and has its session closed
(close_notify) on the next turn of the loop. A handler's task holds its own channel.

The clock is ``loop.time()`` (monotonic), the clock ``call_at`` uses, so deadlines need no
conversion.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from typing import Any, cast

from .._frontend.channel_base import ChannelBase, ends_iteration, fresh_error
from .._frontend.sockets import Address
from ..core.connection import DTLSConnection
from ..core.inbox import Inbox
from ..exceptions import (
    BufferTooSmall,
    ConcurrencyError,
    ConnectionClosedLocally,
    DTLSError,
    UsageError,
)

__all__ = ["Channel"]


class Endpoint(asyncio.DatagramProtocol):
    """One socket's protocol. Subclasses say what to transmit, what to drain, when to wake."""

    _collected: list[tuple[bytes, Address | None]] | None = None
    """While a server driver reads a batch: the replies sent meanwhile (see its driver)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None
        self._busy = False
        self._again = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._sending = False
        self._send_failure: DTLSError | None = None
        """What went wrong with a datagram sent by the running ``flush`` (set by
        ``error_received``), for the ``send`` that caused it."""
        self._sending_to: Address | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost: asyncio.Future[None] = loop.create_future()

    # -- to override ----------------------------------------------------------------------------

    def _transmit(self) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        raise NotImplementedError

    def _deadline(self) -> float | None:
        raise NotImplementedError

    def _on_deadline(self, now: float) -> None:
        raise NotImplementedError

    def channel_closed(self, channel: Channel) -> None:
        """A channel on this socket was closed by its user."""

    async def wait_channel_closed(self, channel: Channel) -> None:
        """Wait until what ``channel_closed`` started is finished."""

    def channel_abandoned(self, engine: DTLSConnection) -> None:
        """The channel of ``engine`` was garbage-collected unclosed (called from ``__del__``,
        which may run anywhere: only schedule the clean-up)."""

    # -- the three steps ------------------------------------------------------------------------

    def now(self) -> float:
        """The engine clock: ``loop.time()``."""
        return self._loop.time()

    def flush(self) -> DTLSError | None:
        """Transmit, drain events, re-arm the timer. Returns a send failure seen meanwhile."""
        if self._busy:
            self._again = True
            return None
        self._busy = True
        self._send_failure = None
        try:
            while True:
                self._again = False
                self._transmit()
                self._drain()
                if not self._again:
                    break
            self._rearm(self._deadline() if not self.is_closed() else None)
        finally:
            self._busy = False
        failure, self._send_failure = self._send_failure, None
        return failure

    def _rearm(self, deadline: float | None) -> None:
        if deadline == self._timer_at:
            return
        if deadline is not None and self._timer_at is not None and self._timer_at < deadline:
            # A timer that fires before the deadline costs one idle wake-up (the engine finds
            # nothing due, and flush() re-arms); cancelling and re-scheduling on every message,
            # whose idle deadline keeps moving later, cost more (measured: 2.3 per echo).
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._fire_timer)

    def _fire_timer(self) -> None:
        scheduled = self._timer_at
        self._timer = None
        self._timer_at = None
        # call_at may run a hair (its clock resolution) early: never hand the engine a `now`
        # before the deadline it asked for, or it would ask for the same deadline again.
        now = self._loop.time()
        if scheduled is not None and now < scheduled:
            now = scheduled
        self._on_deadline(now)
        self.flush()

    def send_reply(self, record: bytes, address: Address | None) -> DTLSError | None:
        """Transmit a record a handler's :meth:`Channel.send` sealed (a server driver batches
        these; see :meth:`dtlskit.asyncio.driver.ServerDriver.send_reply`)."""
        return self.send_record(record, address)

    def send_record(self, record: bytes, address: Address | None) -> DTLSError | None:
        """Transmit one datagram the engine sealed; the failure it caused, if any."""
        self._send_failure = None
        self._sending_to = address
        self._sendto(record, address)
        failure, self._send_failure = self._send_failure, None
        return failure

    def _sendto(self, data: bytes, address: Address | None) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        self._sending = True
        try:
            transport.sendto(data, address)
        finally:
            self._sending = False
        return True

    def is_closed(self) -> bool:
        """Whether the socket is closed or closing."""
        return self._transport is None or self._transport.is_closing()

    # -- asyncio.DatagramProtocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._rearm(None)
        self._writable.set()
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def writable(self) -> None:
        """Wait while the transport's send buffer is over its high-water mark."""
        if not self._writable.is_set():
            await self._writable.wait()

    async def wait_lost(self) -> None:
        """Wait until the transport has closed its socket."""
        if self._transport is None:
            return
        await asyncio.shield(self._lost)


def _wake_reader(inbox: Inbox) -> None:
    """The inbox's waker: finish the future a ``recv`` waits on (no reference to the channel)."""
    waiter = inbox.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Channel(ChannelBase):
    """One DTLS session with one peer: message-oriented, like a connected datagram socket.

    Get one from :func:`dtlskit.asyncio.connect`, as a server handler's argument, or from
    ``accept()``. ``send``/``recv`` are coroutines; ``close()`` is not (it never waits for the
    peer). ``async for message in channel`` ends when the session ends with close_notify.
    """

    def __init__(
        self,
        engine: DTLSConnection,
        endpoint: Endpoint,
        sock: Any,
        peer_address: Address,
        *,
        owns_socket: bool,
    ) -> None:
        super().__init__(engine, sock, peer_address)
        self._endpoint = endpoint
        self._owns_socket = owns_socket
        self._waiter: asyncio.Future[None] | None = None
        self._inbox.waker = _wake_reader
        self._send_address = None if owns_socket else self._peer_address

    # -- messages -------------------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one message (one datagram). Raises MessageTooLarge past ``cleartext_mtu``, or the
        error that ended the session (ConnectionClosed family). On a server, the replies
        handler tasks send in one turn of the loop leave together in one system call at its
        next turn, in order; a socket error on one is counted (``"send_failed"``) rather than
        raised."""
        if self._inbox.error is not None:  # (_check_open, inline: once per message)
            raise fresh_error(self._inbox.error)
        endpoint = self._endpoint
        if not endpoint._writable.is_set():
            await endpoint.writable()
            self._check_open()  # the session may have ended while we waited
        # _transmit_message, inline
        record = self._engine.seal(data)
        if record is None:
            failure = endpoint.flush()
        else:
            failure = endpoint.send_reply(record, self._send_address)
        if failure is not None:
            raise fresh_error(failure)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Send one message now, without waiting (callable from a callback-style handler,
        which runs on the loop). Raises as :meth:`send` does; if the socket's send buffer is
        full the datagram waits in the driver's bounded queue, or is dropped and counted
        (``"send_buffer_full"``) when that is full too: UDP has no flow control. Called from
        ``message_received`` on a server, the datagram leaves with the other replies of the
        same read batch, in order, in one system call; a socket error on it is then counted
        (``"send_failed"``) rather than raised."""
        if self._inbox.error is not None:
            raise fresh_error(self._inbox.error)
        endpoint = self._endpoint
        record = self._engine.seal(data)
        if record is not None:
            # A reply from message_received on a server: collected, to leave with the batch
            # (what send_record does, without its calls; what a closed socket collected is
            # dropped with the batch).
            collected = endpoint._collected
            if collected is not None:
                collected.append((record, self._send_address))
                return
            failure = endpoint.send_reply(record, self._send_address)
        else:
            failure = endpoint.flush()
        if failure is not None:
            raise fresh_error(failure)

    def _transmit_message(self, data: bytes | bytearray | memoryview) -> None:
        endpoint = self._endpoint
        record = self._engine.seal(data)
        if record is None:
            failure = endpoint.flush()
        else:
            failure = endpoint.send_reply(record, self._send_address)
        if failure is not None:
            raise fresh_error(failure)

    async def recv(self) -> bytes:
        """The next message. After the session ended: queued messages, then the error that ended
        it (ConnectionClosedByPeer, ConnectionClosedLocally, ConnectionLost, ...)."""
        if self._waiter is not None:
            raise ConcurrencyError(
                f"another task is already waiting in recv() on the channel to {self._peer_text}; "
                "read from one task and hand messages to the others"
            )
        while True:
            message = self._inbox.take()
            if message is not None:
                return message
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = self._inbox.waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = self._inbox.waiter = None

    async def recv_into(self, buffer: Any, *, offset: int = 0, length: int | None = None) -> int:
        """Copy the next message into ``buffer[offset:offset + length]``; return its size.

        Every parameter after ``buffer`` is keyword-only: ``sock.recv_into(buffer, nbytes)``
        ported as is fails with ``TypeError`` instead of reading ``nbytes`` as an offset. If
        the message does not fit, :class:`BufferTooSmall` is raised and the message stays
        queued. Waiting and errors are as for :meth:`recv` (no timeout: use
        ``asyncio.wait_for``).
        """
        view, offset, length = self._recv_into_slice(buffer, offset, length)
        if self._waiter is not None:
            raise ConcurrencyError(
                f"another task is already waiting in recv() on the channel to {self._peer_text}; "
                "read from one task and hand messages to the others"
            )
        while not self._inbox.messages:
            self._check_open()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = self._inbox.waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = self._inbox.waiter = None
        message = self._inbox.messages[0]
        if len(message) > length:
            raise BufferTooSmall(len(message), length)
        self._inbox.take()
        view[offset : offset + len(message)] = message
        return len(message)

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        # recv(), inlined: one coroutine frame less per session waiting in ``async for``
        # (about 230 bytes each).
        if self._waiter is not None:
            raise ConcurrencyError(
                f"another task is already waiting in recv() on the channel to {self._peer_text}; "
                "read from one task and hand messages to the others"
            )
        inbox = self._inbox
        while True:
            try:
                message = inbox.take()
            except DTLSError as exc:
                if ends_iteration(exc):
                    raise StopAsyncIteration from None
                raise
            if message is not None:
                return message
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = inbox.waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = inbox.waiter = None

    # -- life cycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Send close_notify (once, best effort) and end the session. Idempotent; never waits."""
        if self._close_called:
            return
        self._close_called = True
        self._engine.close()
        self._endpoint.flush()
        self._end(ConnectionClosedLocally("the connection was closed locally"))
        self._endpoint.channel_closed(self)

    async def wait_closed(self) -> None:
        """After :meth:`close`: wait until the socket (a client's own) is released. Before
        :meth:`close` it raises :class:`~dtlskit.exceptions.UsageError`."""
        if not self._close_called:
            raise UsageError("wait_closed() waits for close(): call close() first")
        await self._endpoint.wait_channel_closed(self)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def __del__(self) -> None:
        inbox = getattr(self, "_inbox", None)
        if getattr(self, "_close_called", True) or (
            not getattr(self, "_owns_socket", False) and (inbox is None or inbox.ended)
        ):
            # Closed, or the session is over: only unread messages remain (recv returns them
            # until the channel is gone); their bytes go back to the server's budget (the
            # endpoint's clean-up releases the inbox; close is idempotent).
            endpoint = getattr(self, "_endpoint", None)
            held = inbox is not None and inbox.budget is not None and inbox.held
            if held and endpoint is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to clean
                    endpoint.channel_abandoned(self._engine)
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)
        endpoint = getattr(self, "_endpoint", None)
        if endpoint is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to clean
                endpoint.channel_abandoned(self._engine)
