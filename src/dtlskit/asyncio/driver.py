"""The asyncio driver of one listening socket: :class:`ServerDriver`.

Theory of operation
-------------------
The mirror image of :mod:`dtlskit.sync.driver`: same class name, same hooks
(``on_readable``, ``send_record``, ``flush``, ``shutdown``, ``statistics``). A driver moves
bytes and time between one UDP socket and its :class:`~dtlskit.core.ServerEngine`; every policy
is the engine's.

Each wake-up is the same steps:

1. **Read a batch.** ``loop.add_reader`` on the socket (not a ``DatagramProtocol``, which costs
   one callback per datagram): :func:`dtlskit._frontend.accel.recv_batch` drains up to
   :data:`BATCH` datagrams, each fed to the engine. An established session's
   application-data record takes the engine's fast path straight to its channel (or callback
   handler) and leaves nothing to do.
2. **Only if the engine has work** (a handshake moved, a session ended, output is queued):
   transmit with :func:`dtlskit._frontend.accel.send_batch`, drain events, and re-arm the one
   ``call_at`` timer if the deadline moved earlier.

Replies a callback-style handler sends while a batch is being read (``send_nowait`` from
``message_received``) are collected and leave together at the end of the batch, in one
:func:`dtlskit._frontend.accel.send_batch` (``sendmmsg`` with the accelerator): one system call
for the wake-up instead of one per reply. Anything else the driver sends first sends what was
collected, so a peer's datagrams keep their order. A socket error on a collected reply is
counted (``"send_failed"``) instead of raised, since its sender has returned. Other sends go
straight to ``sock.sendto``. When the kernel's send buffer is full (``EAGAIN``) the
rest wait in a queue bounded by :data:`BACKLOG_BYTES` and ``loop.add_writer`` sends them when
there is room; ``await channel.send()`` waits meanwhile, and what does not fit is dropped and
counted (``"send_buffer_full"``): nothing is lost silently. Works on uvloop too.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import weakref
from typing import TYPE_CHECKING

from .._frontend import accel as _accel
from .._frontend.channel_base import end_protocol, feed_batch, log_peer_event, send_error
from .._frontend.sockets import Address, format_address, kernel_drops, size_receive_buffer
from ..core import events as ev
from ..core.connection import DTLSConnection
from ..core.server import ServerEngine, ServerStatistics
from ..exceptions import ConnectionLost, DTLSError
from .channel import Channel, Endpoint

if TYPE_CHECKING:
    from .server import Server

__all__ = ["BACKLOG_BYTES", "BATCH", "ServerDriver", "SocketDriver"]

logger = logging.getLogger("dtlskit.server")

BATCH = 64
"""Datagrams read per wake-up before the other steps run."""
BACKLOG_BYTES = 1_048_576
"""Bytes of datagrams waiting for room in the socket's send buffer; beyond, dropped and
counted (``"send_buffer_full"``)."""


class SocketDriver(Endpoint):
    """What every asyncio socket driver shares (the server's :class:`ServerDriver` and the
    client's): the socket is read with ``loop.add_reader`` (subclasses say what
    :meth:`on_readable` does with a batch), datagrams go straight to the socket, and a full
    send buffer queues them, bounded by :data:`BACKLOG_BYTES`, until ``loop.add_writer`` says
    there is room. An address of None sends on a connected socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        super().__init__(loop)
        self.sock = sock
        sock.setblocking(False)
        self._fd = sock.fileno()
        self._closed = False
        self._backlog: collections.deque[tuple[bytes, Address | None]] = collections.deque()
        self._backlog_bytes = 0
        self._collected: list[tuple[bytes, Address | None]] | None = None
        """While a batch is read: the replies sent meanwhile, to send together after it."""

    # -- to override ----------------------------------------------------------------------------

    def on_readable(self) -> None:
        """The socket is readable: read a batch and feed it to the engine."""
        raise NotImplementedError

    def _count_drop(self, reason: str) -> None:
        """Count one datagram the driver dropped."""
        raise NotImplementedError

    def _send_failed(self, exc: OSError, address: Address | None) -> DTLSError | None:
        """A socket error sending to ``address``: count it; the error its sender should see."""
        raise NotImplementedError

    # -- reading --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading."""
        self._loop.add_reader(self._fd, self.on_readable)

    # -- sending --------------------------------------------------------------------------------

    def send_record(self, record: bytes, address: Address | None) -> DTLSError | None:
        """Send one datagram now (or queue it behind earlier ones); the failure it caused."""
        if self._closed:
            return None
        collected = self._collected
        if collected is not None:
            collected.append((record, address))
            return None
        if self._backlog:
            self._enqueue(record, address)
            return None
        try:
            if address is None:
                self.sock.send(record)
            else:
                self.sock.sendto(record, address)
        except (BlockingIOError, InterruptedError):
            self._enqueue(record, address)
        except OSError as exc:
            return self._send_failed(exc, address)
        return None

    def _sendto(self, data: bytes, address: Address | None) -> bool:
        failure = self.send_record(data, address)
        if failure is not None:
            self._send_failure = failure
        return not self._closed

    def _send_items(self, items: list[tuple[bytes, Address | None]]) -> None:
        while items and not self._closed:
            if self._backlog:
                for data, address in items:
                    self._enqueue(data, address)
                return
            sent, error = _accel.send_batch(self.sock, items)
            if error is None:
                return
            items = items[sent:]
            if isinstance(error, BlockingIOError | InterruptedError):
                for data, address in items:  # no room: the rest wait for add_writer
                    self._enqueue(data, address)
                return
            data, address = items.pop(0)
            failure = self._send_failed(error, address)
            if failure is not None:
                self._send_failure = failure

    def _enqueue(self, data: bytes, address: Address | None) -> None:
        if self._backlog_bytes + len(data) > BACKLOG_BYTES:
            self._count_drop("send_buffer_full")
            return
        if not self._backlog:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writable.clear()
        self._backlog.append((data, address))
        self._backlog_bytes += len(data)

    def _on_writable(self) -> None:
        backlog = self._backlog
        while backlog:
            data, address = backlog[0]
            try:
                if address is None:
                    self.sock.send(data)
                else:
                    self.sock.sendto(data, address)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._send_failed(exc, address)
            backlog.popleft()
            self._backlog_bytes -= len(data)
        self._loop.remove_writer(self._fd)
        self._writable.set()

    # -- closing --------------------------------------------------------------------------------

    def is_closed(self) -> bool:
        return self._closed

    def _release_socket(self) -> None:
        """Stop reading and writing, forget the backlog, close the socket (once)."""
        if self._closed:
            return
        self._closed = True
        self._rearm(None)
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            if self._backlog:
                self._loop.remove_writer(self._fd)
        self._backlog.clear()
        self._backlog_bytes = 0
        self._writable.set()
        self.sock.close()
        if not self._lost.done():
            self._lost.set_result(None)

    async def wait_lost(self) -> None:
        await asyncio.shield(self._lost)


class ServerDriver(SocketDriver):
    """One listening socket and its ServerEngine, driven from the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        server: Server,
        engine: ServerEngine,
        sock: socket.socket,
    ) -> None:
        super().__init__(loop, sock)
        self._server = server
        self.engine = engine
        self.address = tuple(sock.getsockname())
        """The bound address (kept: the socket cannot tell it once closed)."""
        self.channels: weakref.WeakValueDictionary[DTLSConnection, Channel] = (
            weakref.WeakValueDictionary()
        )
        """Held weakly, as in the blocking flavour: a dropped channel warns and is closed."""
        self._shutting_down = False
        self.receive_buffer_bytes = size_receive_buffer(sock, server._config.recv_buffer_size)
        self._replies: list[tuple[bytes, Address | None]] = []
        """Replies handler tasks sent this turn of the loop, to go out together."""

    # -- reading --------------------------------------------------------------------------------

    def on_readable(self) -> None:
        """The socket is readable: feed a batch to the engine, then do what it asks."""
        if self._shutting_down:
            return
        batch, error = _accel.recv_batch(self.sock, BATCH)
        engine = self.engine
        if batch:
            replies = self._replies
            if replies:  # handler tasks' replies not yet sent lead the batch's
                self._replies = []
                self._collected = replies
            feed_batch(self, batch, self._loop.time(), self._send_items, self._count_drop)
        if error is not None:
            self._server._count_drop("receive_failed")
            logger.debug("receive error on %s: %s", format_address(self.address), error)
        if engine.has_work():
            self.flush()

    # -- sending --------------------------------------------------------------------------------

    def send_reply(self, record: bytes, address: Address | None) -> DTLSError | None:
        """A record a handler task sent with ``await channel.send()``: collected with the
        other replies sent in the same turn of the loop and sent together, in order, in one
        :func:`dtlskit._frontend.accel.send_batch` (``sendmmsg``) at the loop's next turn (no
        added wait: the loop does not sleep while a callback is ready). A reply sent while a
        batch is read joins that batch's replies instead. A socket error is counted
        (``"send_failed"``), as for every datagram the server sends in a batch."""
        if self._closed:
            return None
        collected = self._collected
        if collected is not None:  # during a read batch: leaves with the batch
            collected.append((record, address))
            return None
        replies = self._replies
        if not replies:
            self._loop.call_soon(self._flush_replies)
        replies.append((record, address))
        return None

    def _flush_replies(self) -> None:
        replies = self._replies
        if replies:  # (empty if a read batch or a transmit took them first)
            self._replies = []
            self._send_items(replies)

    def _transmit(self) -> None:
        replies = self._replies
        if replies:  # handler tasks' replies first: a peer's datagrams keep their order
            self._replies = []
            self._send_items(replies)
        collected = self._collected
        if collected:  # replies collected so far go first: a peer's datagrams keep their order
            self._collected = []
            self._send_items(collected)
        items: list[tuple[bytes, Address | None]] = list(self.engine.datagrams_to_send())
        self._send_items(items)

    def _count_drop(self, reason: str) -> None:
        self._server._count_drop(reason)

    def _send_failed(self, exc: OSError, address: Address | None) -> DTLSError | None:
        self._server._count_drop("send_failed")
        logger.debug("send error on %s: %s", format_address(self.address), exc)
        if exc.errno == errno.EMSGSIZE:
            conn = self.engine.connection(address) if address is not None else None
            mtu = conn.mtu if conn is not None else self._server._config.mtu
            return send_error(exc, address, mtu)
        return None

    # -- Endpoint -------------------------------------------------------------------------------

    def _drain(self) -> None:
        while (item := self.engine.next_event()) is not None:
            address, conn, event = item
            if isinstance(event, ev.HandshakeCompleted):
                channel = self._server._make_channel(conn, self, address)
                self.channels[conn] = channel
                log_peer_event(address, conn, event)
                self._server._on_channel(channel)
                self._again = True  # the server may have closed it: transmit again
            elif isinstance(event, ev.MessageReceived):
                channel_or_none = self.channels.get(conn)
                if channel_or_none is not None:
                    channel_or_none._handle_event(event)
                else:
                    self._server._count_drop("no_channel")
            elif isinstance(event, ev.ENDED):
                ended = self.channels.pop(conn, None)
                if ended is not None:
                    ended._handle_event(event)
                    if ended._protocol is not None:
                        end_protocol(ended)
                        ended.close()
                        ended._release()
                log_peer_event(address, conn, event)

    def _deadline(self) -> float | None:
        return self.engine.get_timer()

    def _on_deadline(self, now: float) -> None:
        self.engine.handle_timer(now)

    def statistics(self) -> ServerStatistics:
        """The engine's counters, with the socket's receive buffer and the kernel's drops."""
        stats = self.engine.statistics()
        stats.receive_buffer_bytes = self.receive_buffer_bytes
        if not self._closed:
            stats.kernel_drops = kernel_drops(self.sock) or 0
        return stats

    def channel_abandoned(self, engine: DTLSConnection) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close_abandoned, engine)

    def _close_abandoned(self, engine: DTLSConnection) -> None:
        if engine.inbox is not None:
            engine.inbox.release()
        if not self._shutting_down:
            engine.close()  # close_notify; the ended session leaves the engine
            self.flush()

    # -- shutdown -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """close_notify to every established peer, forget every association, close the socket."""
        if self._shutting_down:
            return
        self._shutting_down = True
        self.engine.close_all()
        self.flush()
        self._close_socket(None)

    def _close_socket(self, error: DTLSError | None) -> None:
        if self._closed:
            return
        if error is not None and self.engine.connections:
            for conn in self.engine.connections.values():
                conn.abort(error)
            self.flush()
        self._release_socket()

    def abort(self) -> None:
        """Close the socket at once: every session ends with ConnectionLost."""
        self._shutting_down = True
        self._close_socket(ConnectionLost("the server socket was closed"))
