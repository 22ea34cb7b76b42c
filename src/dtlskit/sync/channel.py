"""Blocking channels, and the one I/O thread per socket that drives their engine.

Theory of operation
-------------------
The core is sans-I/O and not thread-safe. Each UDP socket therefore gets exactly one
:class:`IOThread`, which owns the socket's engine (a client ``DTLSConnection`` or a server
``ServerEngine``) together with one lock, ``IOThread.lock``. Every engine call, from any thread,
holds that lock. The thread waits in :func:`dtlskit._frontend.accel.recv_batch` itself: a
batched read that, when the socket has nothing, waits (one ``poll``, the GIL released) for a
datagram, the engine's ``get_timer()`` deadline, or one end of a socketpair other threads write
to wake it; a loaded server reads batch after batch without waiting at all. Every
wake-up is the same three steps (docs/dev/frontends-spec.md): feed the engine (datagrams read from
the socket, or ``handle_timer(now)``), drain its events, transmit ``datagrams_to_send()`` and
re-arm the timer. ``now`` is ``time.monotonic()``.

User threads never wait for the I/O thread to do their work: ``Channel.send`` takes the lock,
calls ``engine.send``, transmits the resulting datagrams itself (so a socket error reaches the
caller who caused it) and runs the same drain/transmit/re-arm step, waking the I/O thread only
when the engine's deadline moved earlier. ``Channel.recv`` never touches the engine: the I/O
thread appends each ``MessageReceived`` to the channel's own deque and notifies its condition
variable. Lock order is always engine lock, then a channel's condition; no user code ever runs
on an I/O thread.

Nothing here references a :class:`Channel` strongly from its I/O thread, so a channel that is
dropped unclosed is garbage-collected: ``__del__`` emits ``ResourceWarning`` and hands the
clean-up to the I/O thread as a request (``__del__`` may run on any thread, even one that holds
the engine lock, so it takes no lock itself).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .._frontend import accel as _accel
from .._frontend.channel_base import ChannelBase, ends_iteration, fresh_error
from .._frontend.sockets import format_address
from ..core.connection import ConnectionStatistics, DTLSConnection
from ..core.inbox import Inbox
from ..core.session import Session
from ..exceptions import (
    BufferTooSmall,
    ConcurrencyError,
    ConnectionClosedLocally,
    ConnectionLost,
    DTLSError,
    DTLSTimeoutError,
    InvalidArgument,
    UsageError,
)

__all__ = ["BufferTooSmall", "Channel", "IOThread"]

logger = logging.getLogger("dtlskit.sync")

Address = tuple[Any, ...]

_RECV_SIZE = 65536
_BATCH = 64
"""Datagrams read per wake-up before the other steps run (keeps timers and writers fair)."""
_JOIN_TIMEOUT = 10.0
"""Bound on joining an I/O thread; it never runs user code, so this is only a safety net."""


class _TimedEngine(Protocol):
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise InvalidArgument(f"timeout must be None or >= 0 seconds, not {timeout!r}")
    return time.monotonic() + timeout


_MAX_FAILED_TURNS = 100
"""Consecutive failed turns after which an I/O thread gives up (a bug that repeats every turn)."""


class IOThread:
    """One socket, its engine, its lock, and the thread running its read-and-wait loop.

    Subclasses implement the engine-specific steps; every ``*_locked`` method runs with
    :attr:`lock` held.
    """

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.lock = threading.RLock()
        """Held around every call into the engine, from any thread (re-entrant: a callback
        handler runs on the I/O thread with it held, and may send)."""
        self.closed = False
        """The socket is closed (read and written under :attr:`lock`)."""
        self.drops: dict[str, int] = {}
        """Datagrams the I/O layer could not send or receive, by reason (under :attr:`lock`)."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_lock = threading.Lock()
        self._requests: collections.deque[Callable[[], None]] = collections.deque()
        self._stopping = False
        self._deadline: float | None = None
        self._draining = False
        self._collected: list[tuple[bytes, Address | None]] | None = None
        """While a subclass reads a batch: what the I/O thread sends meanwhile, to go out
        together after it (see :meth:`send_collected_locked`)."""
        """A drain is running (under :attr:`lock`): a session it ends may close its channel,
        whose own pump must not start another, nested one (one stack frame deep per session)."""
        self._final_error: DTLSError = ConnectionLost("the socket was closed")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    batch_size: int = _BATCH
    """Datagrams read per wake-up before the other steps run."""

    engine: _TimedEngine
    """The engine this thread drives (set by the subclass): a client's association or a
    listening socket's demultiplexer; both answer ``get_timer`` and ``handle_timer``."""

    # -- subclass hooks (lock held) ---------------------------------------------------------

    def _start_locked(self, now: float) -> None:
        """First step on the I/O thread (a client starts its handshake here)."""

    def _feed_locked(
        self, batch: list[tuple[bytes, Address]], error: OSError | None, now: float
    ) -> None:
        """Feed a batch read from the socket to the engine (``error``: what ended the read)."""
        raise NotImplementedError

    def _has_work_locked(self) -> bool:
        """Whether the engine has events, output or timers to look at (True: always step)."""
        return True

    def _get_timer_locked(self) -> float | None:
        return self.engine.get_timer()

    def _handle_timer_locked(self, now: float) -> None:
        self.engine.handle_timer(now)

    def _drain_locked(self) -> bool:
        """Dispatch pending engine events and transmit pending datagrams; True if any."""
        raise NotImplementedError

    def _send_failed_locked(self, exc: OSError, address: Address | None) -> DTLSError:
        """A datagram could not be sent: record it, return the error to report."""
        raise NotImplementedError

    def _abort_all_locked(self, error: DTLSError) -> None:
        """The socket is going away: end every session still open with ``error``."""

    # -- control ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def wake(self) -> None:
        """Make the loop run a step now (safe from any thread; never blocks)."""
        with self._wake_lock:
            if self._wake_w.fileno() < 0:
                return
            with contextlib.suppress(OSError):  # full pipe: a wake-up is already pending
                self._wake_w.send(b"\0")

    def request(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the I/O thread with the lock held, at its next step."""
        self._requests.append(action)
        self.wake()

    def request_stop(self) -> None:
        """Ask the loop to end and close the sockets, without waiting (for ``__del__``)."""
        self._stopping = True
        self.wake()

    def stop(self) -> None:
        """End the loop, join the thread and close the sockets. Idempotent."""
        self._stopping = True
        self.wake()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT)
            if self._thread.is_alive():  # pragma: no cover - would be a bug in the loop
                logger.error(
                    "I/O thread %s did not stop within %g s", self._thread.name, _JOIN_TIMEOUT
                )
        with self.lock:
            self._close_sockets_locked()

    @property
    def alive(self) -> bool:
        """Whether the I/O thread is running."""
        return self._thread.is_alive()

    def pump_locked(self) -> None:
        """After an engine call made by a user thread: drain, transmit, re-arm (and wake the
        I/O thread if the engine's deadline moved earlier)."""
        if self.closed:
            return
        if self._draining:
            return  # called from inside a drain: the running one goes on until nothing is left
        self._drain_all_locked()
        previous = self._deadline
        self._deadline = self._get_timer_locked()
        if self._deadline is not None and (previous is None or self._deadline < previous):
            self.wake()

    def transmit_locked(
        self,
        datagrams: list[bytes],
        address: Address | None,
        *,
        deadline: float | None = None,
        raise_errors: bool = False,
    ) -> None:
        """Send datagrams (to ``address``, or on the connected socket when None).

        I/O thread (``raise_errors`` False): a full send buffer or an error is counted and the
        datagram dropped; DTLS recovers from loss. A user's ``send`` (``raise_errors`` True)
        waits for room until ``deadline`` and raises what went wrong.

        While a batch is read (:attr:`_collected` is a list; only the I/O thread, holding the
        lock, sees that) the I/O thread's datagrams are collected instead, to leave together.
        """
        collected = self._collected
        if collected is not None:
            if not raise_errors:
                for data in datagrams:
                    collected.append((data, address))
                return
            if collected:  # a blocking send on the I/O thread: what was collected goes first
                self._collected = []
                self.send_collected_locked(collected)
        for data in datagrams:
            if self.closed:
                return
            while True:
                try:
                    if address is None:
                        self.sock.send(data)
                    else:
                        self.sock.sendto(data, address)
                except BlockingIOError:
                    if not raise_errors:
                        self.count_drop_locked("send_buffer_full")
                        break
                    self._wait_writable(deadline, address)
                    continue
                except OSError as exc:
                    error = self._send_failed_locked(exc, address)
                    if raise_errors:
                        raise fresh_error(error) from exc
                    return
                break

    def send_collected_locked(self, items: list[tuple[bytes, Address | None]]) -> None:
        """Send the datagrams collected during a batch in as few system calls as
        :func:`dtlskit._frontend.accel.send_batch` can; each one that fails is counted and
        dropped, as :meth:`transmit_locked` does on the I/O thread."""
        while items and not self.closed:
            sent, error = _accel.send_batch(self.sock, items)
            if error is None:
                return
            if isinstance(error, BlockingIOError):
                self.count_drop_locked("send_buffer_full")
            else:
                self._send_failed_locked(error, items[sent][1])
            items = items[sent + 1 :]

    def _wait_writable(self, deadline: float | None, address: Address | None) -> None:
        remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        if remaining <= 0:
            raise DTLSTimeoutError(
                f"send to {format_address(address or self._peer_for_errors())} timed out: "
                "the socket's send buffer stayed full"
            )
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLOUT)
        poller.poll(max(1, int(remaining * 1000)))

    def _peer_for_errors(self) -> Address | None:
        with contextlib.suppress(OSError):
            return tuple(self.sock.getpeername())
        return None

    def count_drop_locked(self, reason: str) -> None:
        """Count one datagram dropped by the I/O layer."""
        self.drops[reason] = self.drops.get(reason, 0) + 1

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        wake = self._wake_r.fileno()
        failures = 0
        try:
            with self.lock:
                if not self.closed:
                    self._start_locked(time.monotonic())
                    self._step_locked(time.monotonic())
            while not self._stopping:
                try:
                    if self._turn(wake):
                        break
                    failures = 0
                except Exception:
                    # A bug met while handling one peer's datagram or timer must not end every
                    # other peer's session (the asyncio flavour's loop logs a failed callback and
                    # goes on in the same way). The datagram was consumed, so the next turn does
                    # not repeat it; a step that fails turn after turn ends the thread.
                    failures += 1
                    if failures >= _MAX_FAILED_TURNS:
                        raise
                    logger.exception("I/O thread %s: a step failed; serving on", self._thread.name)
                    with self.lock:
                        self.count_drop_locked("internal_error")
        except Exception as exc:  # pragma: no cover - a bug; never leave waiters hanging
            logger.exception("I/O thread %s failed", self._thread.name)
            self._final_error = DTLSError(f"internal error in the I/O thread: {exc!r}")
        finally:
            with self.lock:
                self._run_requests_locked()
                self._close_sockets_locked()

    def _turn(self, wake: int) -> bool:
        """One wait, read and step of the loop; True when the thread should end."""
        deadline = self._deadline
        if self._requests:
            timeout: float | None = 0.0
        elif deadline is None:
            timeout = None
        else:
            timeout = deadline - time.monotonic()
        # outside the lock: only this thread reads the socket, and stop() closes it only after
        # this thread ended
        batch, error = _accel.recv_batch(self.sock, self.batch_size, timeout, wake)
        now = time.monotonic()
        with self.lock:
            if self.closed:
                return True
            if batch or error is not None:
                self._feed_locked(batch, error, now)
                deadline = self._deadline
                if (
                    not self._requests
                    and not self._has_work_locked()
                    and (deadline is None or now < deadline)
                ):
                    return False  # only the fast path ran: nothing to drain or re-arm
            self._step_locked(now)
        return False

    def _step_locked(self, now: float) -> None:
        self._run_requests_locked()
        if self.closed:
            return
        deadline = self._get_timer_locked()
        if deadline is not None and now >= deadline:
            self._handle_timer_locked(now)
        self._drain_all_locked()
        self._deadline = self._get_timer_locked()

    def _drain_all_locked(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while self._drain_locked():
                pass
        finally:
            self._draining = False

    def _run_requests_locked(self) -> None:
        while self._requests:
            action = self._requests.popleft()
            try:
                action()
            except Exception:  # pragma: no cover - requests are our own clean-ups
                logger.exception("clean-up request failed on %s", self._thread.name)

    def _close_sockets_locked(self) -> None:
        if self.closed:
            return
        # Sessions still open (normally none: close() and shutdown() close them first) end
        # now, and their channels hear of it; nothing more is transmitted.
        self._abort_all_locked(self._final_error)
        self.closed = True
        while self._drain_locked():
            pass
        self._deadline = None
        self.sock.close()
        with self._wake_lock:
            self._wake_w.close()
        self._wake_r.close()


def _notify_readers(inbox: Inbox) -> None:
    """The inbox's waker, called after queueing (engine lock held, the channel's condition
    not: lock order engine lock, then condition). A reader holds the condition from its check
    to its wait, so it cannot miss this.

    A reader waits only while the inbox is empty, and messages are taken only under the engine
    lock the caller holds: a message queued behind others (none taken since the first one was
    queued and notified) has no reader to wake, so only the first of a run notifies (the
    condition and its lock cost about a microsecond per message otherwise)."""
    if inbox.error is None and len(inbox.messages) > 1:
        return
    with inbox.waiter:
        inbox.waiter.notify_all()


class Channel(ChannelBase):
    """One DTLS session, message by message, with blocking calls.

    Get one from :func:`dtlskit.sync.connect`, as a :func:`~dtlskit.sync.serve` handler's
    argument, or from :meth:`Listener.accept`. Received messages wait in a per-channel queue
    bounded by ``config.limits.max_queued_messages`` (newer ones are dropped and counted as
    ``"queue_full"``, see :mod:`dtlskit._frontend.channel_base`). A client channel owns its
    socket and I/O thread; a server-side channel shares the listening socket, so socket options
    set on it apply to every peer of that socket.
    The life cycle is :mod:`dtlskit._frontend.channel_base`'s, shared with the asyncio flavour.
    """

    def __init__(
        self,
        engine: DTLSConnection,
        io: IOThread,
        peer_address: Address,
        *,
        owns_io: bool,
    ) -> None:
        super().__init__(engine, io.sock, peer_address)
        self._io = io
        self._owns_io = owns_io
        self._cond = threading.Condition(threading.Lock())
        self._reading = False
        self._send_address = None if owns_io else self._peer_address
        self._inbox.waiter = self._cond
        self._inbox.waker = _notify_readers

    # -- called by the I/O layer, engine lock held ------------------------------------------------

    def _abandon(self) -> None:
        """Mark closed without a warning: the channel was never handed to user code."""
        self._close_called = True
        self._end(ConnectionClosedLocally("the connection was closed locally"))
        with self._io.lock:
            self._release()

    # -- receiving ----------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message; blocks until one arrives.

        Raises :class:`DTLSTimeoutError` after ``timeout`` seconds (the channel stays usable);
        once the session has ended and every message received before was returned, the error
        that ended it (:class:`ConnectionClosedByPeer`, :class:`ConnectionClosedLocally`,
        :class:`ConnectionLost`, ...); :class:`ConcurrencyError` if another thread is already
        waiting in ``recv`` or ``recv_into``.
        """
        deadline = _deadline(timeout)
        while True:
            self._wait_readable(timeout, deadline)
            with self._io.lock:  # the inbox's byte counts are the engine's: take it under its lock
                message = self._inbox.take()
            if message is not None:
                return message
            # Another thread's recv took it between our check and the lock: wait for the next.

    def recv_into(
        self,
        buffer: Any,
        *,
        offset: int = 0,
        length: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Copy the next message into ``buffer[offset:offset + length]``; return its size.

        Every parameter after ``buffer`` is keyword-only: ``socket.recv_into(buffer, nbytes)``
        ported as is fails with ``TypeError`` instead of reading ``nbytes`` as an offset. If
        the message does not fit, :class:`BufferTooSmall` is raised and the message stays
        queued. Waiting and errors are as for :meth:`recv`.
        """
        view, offset, length = self._recv_into_slice(buffer, offset, length)
        deadline = _deadline(timeout)
        while True:
            self._wait_readable(timeout, deadline)
            with self._io.lock:
                if not self._inbox.messages:
                    continue  # another thread's recv took it: wait for the next
                message = self._inbox.messages[0]
                if len(message) > length:
                    raise BufferTooSmall(len(message), length)
                self._inbox.take()
            view[offset : offset + len(message)] = message
            return len(message)

    def _wait_readable(self, timeout: float | None, deadline: float | None) -> None:
        """Return once a message is queued (another thread's recv may still take it first:
        the caller checks under the engine lock), or raise."""
        if self._inbox.messages:
            return
        with self._cond:
            if self._reading:
                raise ConcurrencyError(
                    f"another thread is already waiting in recv() on the channel to "
                    f"{self._peer_text}; read from one thread and hand messages to the others"
                )
            self._reading = True
            try:
                while not self._inbox.messages:
                    if self._inbox.error is not None:
                        raise fresh_error(self._inbox.error)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise DTLSTimeoutError(
                            f"no message from {self._peer_text} within {timeout:g} s"
                        )
                    self._cond.wait(remaining)
            finally:
                self._reading = False

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the session ends with close_notify (either side); other ends raise."""
        while True:
            try:
                yield self.recv()
            except DTLSError as exc:
                if ends_iteration(exc):
                    return
                raise

    def pending(self) -> int:
        """Number of received messages waiting to be returned by :meth:`recv`."""
        with self._cond:
            return len(self._inbox.messages)

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Send one message (1 byte or more) as one DTLS record.

        Raises :class:`InvalidMessage` for anything but a non-empty ``bytes``, ``bytearray`` or
        ``memoryview`` (the session goes on; OpenSSL writes no empty records),
        :class:`MessageTooLarge` beyond :attr:`cleartext_mtu`, the error that ended the
        session (:class:`ConnectionClosed` family), :class:`DTLSTimeoutError` if the socket's
        send buffer stays full for ``timeout`` seconds, :class:`TransportError` for socket
        errors (``EMSGSIZE`` names the MTU).
        """
        deadline = _deadline(timeout)
        self._check_open()
        io = self._io
        with io.lock:
            if io.closed:
                raise ConnectionClosedLocally("the connection was closed locally")
            try:
                record = self._engine.seal(data)
            except DTLSError:
                io.pump_locked()  # the session may have ended: let its channel hear of it
                raise
            if record is not None:
                io.transmit_locked(
                    [record], self._send_address, deadline=deadline, raise_errors=True
                )
                return
            try:
                self._io.transmit_locked(
                    self._engine.datagrams_to_send(),
                    None if self._owns_io else self._peer_address,
                    deadline=deadline,
                    raise_errors=True,
                )
            finally:
                self._io.pump_locked()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Send one message without ever waiting (for a callback-style handler on the I/O
        thread): if the socket's send buffer is full the datagram is dropped and counted
        (``"send_buffer_full"``): UDP has no flow control. Raises as :meth:`send` does. Called
        from ``message_received`` on a server, the datagram leaves with the other replies of
        the same read batch, in order, in one system call; a socket error on it is then
        counted (``"send_failed"``) rather than raised."""
        if self._inbox.error is not None:  # (_check_open, inlined: the callback style's hot path)
            raise fresh_error(self._inbox.error)
        io = self._io
        with io.lock:
            if io.closed:
                raise ConnectionClosedLocally("the connection was closed locally")
            try:
                record = self._engine.seal(data)
            except DTLSError:
                io.pump_locked()
                raise
            if record is None:
                io.pump_locked()
                return
            collected = io._collected
            if collected is not None:  # a reply during a read batch: it leaves with the batch
                collected.append((record, self._send_address))
            else:
                io.transmit_locked([record], self._send_address)

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Send close_notify (once, best effort) and end the session. Idempotent.

        Never waits for the peer. Wakes every thread waiting in :meth:`recv`; messages already
        received are still returned, then :class:`ConnectionClosedLocally` is raised.
        """
        with self._cond:
            if self._close_called:
                return
            self._close_called = True
        try:
            with self._io.lock:
                if not self._io.closed:
                    self._engine.close()
                    self._io.pump_locked()
        finally:
            if self._owns_io:
                self._io.stop()
            self._end(ConnectionClosedLocally("the connection was closed locally"))

    def wait_closed(self, timeout: float | None = None) -> None:
        """After :meth:`close`: wait until the socket (a client's own) is released. In this
        flavour :meth:`close` already waits for that, so this returns at once; it is here so
        that code written for either flavour reads the same. ``timeout`` is accepted for the
        same reason. Before :meth:`close` it raises :class:`UsageError`."""
        if not self._close_called:
            raise UsageError("wait_closed() waits for close(): call close() first")

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        inbox = getattr(self, "_inbox", None)
        if getattr(self, "_close_called", True) or (not self._owns_io and self._inbox.ended):
            # Closed, or the session is over on a shared socket: only unread messages remain
            # (recv returns them until the channel is gone); their bytes go back to the
            # server's budget (no lock here: the I/O thread does it).
            io = getattr(self, "_io", None)
            if inbox is not None and inbox.budget is not None and inbox.held and io is not None:
                io.request(inbox.release)
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        engine, io, inbox = self._engine, self._io, self._inbox

        def close_engine() -> None:
            inbox.release()
            engine.close()
            io.pump_locked()

        io.request(close_engine)  # no lock here: __del__ may run on a thread that holds it
        if self._owns_io:
            io.request_stop()

    # -- information (every engine read holds the socket's engine lock) ------------------------

    def _bound_socket(self) -> socket.socket:
        return self._io.sock

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of the session's counters, drops of its message queue included."""
        with self._io.lock:
            return super().statistics()

    @property
    def mtu(self) -> int:
        """Largest datagram this session sends, in bytes."""
        with self._io.lock:
            return super().mtu

    @property
    def cleartext_mtu(self) -> int:
        """Largest message :meth:`send` accepts, in bytes."""
        with self._io.lock:
            return super().cleartext_mtu

    @property
    def version(self) -> str | None:
        """Negotiated protocol version, e.g. ``"DTLSv1.2"``."""
        with self._io.lock:
            return super().version

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite (OpenSSL name)."""
        with self._io.lock:
            return super().cipher

    @property
    def alpn_protocol(self) -> str | None:
        """The application protocol negotiated with ALPN, if any."""
        with self._io.lock:
            return super().alpn_protocol

    @property
    def peer_certificate(self) -> Any:
        """The peer's certificate (``cryptography.x509.Certificate``), or None."""
        with self._io.lock:
            return super().peer_certificate

    @property
    def peer_certificate_chain(self) -> list[Any]:
        """The certificates the peer sent, leaf first."""
        with self._io.lock:
            return super().peer_certificate_chain

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        with self._io.lock:
            return super().session_reused

    @property
    def session(self) -> Session | None:
        """The negotiated session, to pass as ``connect(..., session=)`` to resume it later
        (serialisable with ``to_bytes()`` / ``save(path)``); None before the handshake."""
        with self._io.lock:
            return super().session

    @property
    def peer_verified_chain(self) -> list[Any]:
        """The peer's chain as OpenSSL verified it, leaf to trusted root; empty when the peer
        sent none or it was not verified."""
        with self._io.lock:
            return super().peer_verified_chain

    @property
    def srtp_profile(self) -> str | None:
        """The DTLS-SRTP protection profile agreed (RFC 5764), or None."""
        with self._io.lock:
            return super().srtp_profile

    @property
    def psk_identity(self) -> str | None:
        """The PSK identity of the session (sent by the client), or None."""
        with self._io.lock:
            return super().psk_identity

    @property
    def server_name(self) -> str | None:
        """Server side: the SNI host name the client sent; client side: the name it sent."""
        with self._io.lock:
            return super().server_name

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        """Keying material exported from the session (RFC 5705), as
        :meth:`ChannelBase.export_keying_material`."""
        with self._io.lock:
            return super().export_keying_material(label, length, context)
