"""The blocking driver of one listening socket: :class:`ServerDriver`.

Theory of operation
-------------------
The mirror image of :mod:`dtlskit.asyncio.driver`: same class name, same role. A driver moves
bytes and time between one UDP socket and its :class:`~dtlskit.core.ServerEngine`; every policy
is the engine's. It is an :class:`~dtlskit.sync.channel.IOThread`: one thread per socket, one
engine lock. The thread waits in :func:`dtlskit._frontend.accel.recv_batch` (a batched read
that waits, the GIL released, only when the socket has nothing; see
:class:`~dtlskit.sync.channel.IOThread`), and each batch of up to :data:`BATCH` datagrams is fed
to the engine; an established session's
application-data record takes the engine's fast path straight to its channel's inbox (or its
:class:`~dtlskit.SessionProtocol`, called right here on this thread), and when nothing else
happened (``engine.has_work()`` is False) the drain/transmit/re-arm steps are skipped. Channels
send their records themselves, straight to the socket; replies a callback-style handler sends
during a batch are collected and leave together after it, in one
:func:`dtlskit._frontend.accel.send_batch` (``sendmmsg`` with the accelerator), in order.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Callable
from typing import Any

from .._frontend import sockets as _sockets
from .._frontend.channel_base import (
    aggregate_server_statistics,
    end_protocol,
    feed_batch,
    log_peer_event,
    send_error,
)
from ..core import events as ev
from ..core.connection import DTLSConnection
from ..core.server import ServerEngine, ServerStatistics
from ..exceptions import DTLSError
from .channel import Channel, IOThread

__all__ = ["BATCH", "ServerDriver"]

Address = tuple[Any, ...]

BATCH = 64
"""Datagrams read per wake-up before the other steps run."""


class ServerDriver(IOThread):
    """The I/O thread of one listening socket and its ``ServerEngine``."""

    batch_size = BATCH

    def __init__(
        self,
        sock: socket.socket,
        engine: ServerEngine,
        on_channel: Callable[[Channel], str | None],
        mtu: int,
    ) -> None:
        super().__init__(sock, name=f"dtlskit-server-{_sockets.format_address(sock.getsockname())}")
        self.engine: ServerEngine = engine
        self._on_channel = on_channel
        self._mtu = mtu
        self.receive_buffer_bytes = _sockets.size_receive_buffer(
            sock, engine.config.recv_buffer_size
        )
        self._channels: weakref.WeakValueDictionary[DTLSConnection, Channel] = (
            weakref.WeakValueDictionary()
        )

    def _feed_locked(
        self, batch: list[tuple[bytes, Address]], error: OSError | None, now: float
    ) -> None:
        if batch:
            feed_batch(self, batch, now, self.send_collected_locked, self.count_drop_locked)
        if error is not None:
            self.count_drop_locked("receive_failed")

    def _has_work_locked(self) -> bool:
        return self.engine.has_work()

    def _drain_locked(self) -> bool:
        progressed = False
        while (item := self.engine.next_event()) is not None:
            progressed = True
            address, conn, event = item
            if isinstance(event, ev.HandshakeCompleted):
                log_peer_event(address, conn, event)
                self._established_locked(address, conn)
            elif isinstance(event, ev.MessageReceived):
                channel = self._channels.get(conn)
                if channel is not None:
                    channel._handle_event(event)
                else:
                    self.count_drop_locked("no_channel")
            elif isinstance(event, ev.ENDED):
                channel = self._channels.pop(conn, None)
                if channel is not None:
                    channel._handle_event(event)
                    if channel._protocol is not None:
                        end_protocol(channel)
                        channel.close()
                        channel._release()
                log_peer_event(address, conn, event)
        datagrams = self.engine.datagrams_to_send()
        if datagrams:
            progressed = True
            for data, address in datagrams:
                self.transmit_locked([data], address)
        return progressed

    def _established_locked(self, address: Address, conn: DTLSConnection) -> None:
        channel = Channel(conn, self, address, owns_io=False)
        self._channels[conn] = channel
        refused = self._on_channel(channel)
        if refused is not None:
            self._channels.pop(conn, None)
            channel._abandon()
            conn.close()
            self.count_drop_locked(refused)

    def _send_failed_locked(self, exc: OSError, address: Address | None) -> DTLSError:
        self.count_drop_locked("send_failed")
        conn = self.engine.connection(address) if address is not None else None
        return send_error(exc, address, conn.mtu if conn is not None else self._mtu)

    def _abort_all_locked(self, error: DTLSError) -> None:
        for conn in self.engine.connections.values():
            conn.abort(error)

    def close_all_locked(self) -> None:
        """close_notify to every peer; their channels end with ConnectionClosedLocally."""
        if not self.closed:
            self.engine.close_all()
            self.pump_locked()

    def shutdown(self) -> None:
        """Close every association, stop the thread, close the socket."""
        with self.lock:
            self.close_all_locked()
        self.stop()

    def abandon(self) -> None:
        """Clean up from ``__del__``: no lock, no join."""
        self.request(self.close_all_locked)
        self.request_stop()

    def statistics(self) -> ServerStatistics:
        """The engine's counters plus the drops this I/O layer counted itself."""
        with self.lock:
            stats = self.engine.statistics()
            stats.receive_buffer_bytes = self.receive_buffer_bytes
            if not self.closed:
                stats.kernel_drops = _sockets.kernel_drops(self.sock) or 0
            return aggregate_server_statistics([stats], dict(self.drops))
