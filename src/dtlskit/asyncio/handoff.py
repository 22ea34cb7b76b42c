"""asyncio hand-off (EdgerOS multi-task server): :func:`listen_handoff` accepts peers without
handshaking them, :func:`from_handoff` finishes a handed-off peer's handshake.

The mirror image of :mod:`dtlskit.sync.handoff`; the shared parts and the races they close are
in :mod:`dtlskit.handoff` and :mod:`dtlskit.core.handoff`. The listener reads its socket from
``loop.add_reader`` for as long as it is open; a handed-off channel is driven like a client's
(:class:`~dtlskit.asyncio.client.ClientDriver`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._frontend import accel as _accel
from .._frontend.channel_base import check_server_config
from ..config import DTLSConfiguration
from ..core.connection import DTLSConnection
from ..exceptions import ConfigurationError, UsageError
from ..handoff import (
    Handoff,
    HandoffListenerCore,
    HandoffStatistics,
    ReconnectGuard,
    may_be_client_hello,
    prepare,
)
from .channel import Channel
from .client import ClientDriver, _settle
from .driver import BATCH

__all__ = ["HandoffListener", "from_handoff", "listen_handoff"]

Address = tuple[Any, ...]


class HandoffListener:
    """A listening socket that verifies cookies and hands peers out un-handshaken
    (EdgerOS ``createServer`` + ``accept`` in multi-task mode). An async context manager."""

    def __init__(self, core: HandoffListenerCore, loop: asyncio.AbstractEventLoop) -> None:
        self._core = core
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        loop.add_reader(core.sock, self._on_readable)

    def _on_readable(self) -> None:
        self._core.read(self._loop.time())
        if self._core.ready and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def accept(self) -> Handoff:
        """The next peer whose cookie verified, as a :class:`~dtlskit.handoff.Handoff`. Wrap
        in ``asyncio.wait_for`` for a timeout."""
        core = self._core
        while not core.ready:
            if core._closed:
                raise UsageError("accept() on a closed hand-off listener")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return core.ready.popleft()

    def getsockname(self) -> Address:
        """The address and port the listener is bound to."""
        return self._core.getsockname()

    def statistics(self) -> HandoffStatistics:
        """Counters: HelloVerifyRequests sent, peers handed off, drops by reason, ..."""
        return self._core.statistics()

    def close(self) -> None:
        """Close the listening socket and every accepted hand-off not taken yet; a waiting
        ``accept`` raises :class:`UsageError`. Sockets already handed off are not affected."""
        if self._core._closed:
            return
        self._loop.remove_reader(self._core.sock)
        self._core.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aenter__(self) -> HandoffListener:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


async def listen_handoff(
    host: str,
    port: int,
    *,
    config: DTLSConfiguration,
    backlog: int = 128,
) -> HandoffListener:
    """A hand-off listener on ``host`` (an IP address; ``"0.0.0.0"`` or ``"::"`` for all) and
    ``port`` (0: any free port); see :func:`dtlskit.sync.listen_handoff`."""
    core = HandoffListenerCore.bind(host, port, config, backlog)
    return HandoffListener(core, asyncio.get_running_loop())


class _HandoffDriver(ClientDriver):
    """A client channel's driver whose engine started from the stored ClientHello; a new
    ClientHello from the peer goes to the guard."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: DTLSConnection,
        handoff: Handoff,
        guard: ReconnectGuard,
        deadline: float,
        limit: float,
    ) -> None:
        super().__init__(loop, engine, handoff.socket, handoff.peer_address, deadline, limit)
        self._guard = guard

    def on_readable(self) -> None:
        if self._closed:
            return
        batch, error = _accel.recv_batch(self.sock, BATCH)
        engine = self._engine
        if batch:
            now = self._loop.time()
            guard = self._guard
            for data, _ in batch:
                if data[:1] == b"\x16" and may_be_client_hello(data):
                    reply = guard.screen(data, now)
                    if reply is not None:
                        if reply:
                            self._send_items([(reply, None)])
                        if guard.replaced:
                            self.flush()
                            self._close_socket()  # the listener gets the peer's next datagram
                            return
                        continue
                engine.receive_datagram(data, now)
        if error is not None:
            self._socket_failed(error)
        if not self._established or engine.has_work():
            self.flush()


async def from_handoff(
    handoff: Handoff,
    *,
    config: DTLSConfiguration,
    timeout: float | None = None,
    verify_cookie: bool | None = None,
) -> Channel:
    """EdgerOS ``Dtls.createByFd`` in asynchronous mode: finish the handshake of a handed-off
    peer and return its :class:`Channel` (:class:`HandshakeTimeout` after ``timeout`` seconds,
    default ``config.handshake_timeout``). See :func:`dtlskit.sync.from_handoff`."""
    loop = asyncio.get_running_loop()
    check_server_config(config)
    limit = config.handshake_timeout if timeout is None else float(timeout)
    if not limit > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    engine_config = (
        config if limit == config.handshake_timeout else config.replace(handshake_timeout=limit)
    )
    try:
        engine, guard = prepare(handoff, engine_config, loop.time(), verify_cookie)
        driver = _HandoffDriver(loop, engine, handoff, guard, loop.time() + limit, limit)
        driver.start()
    except BaseException:
        handoff.close()
        raise
    sock = handoff.socket
    handoff._sock = None  # the channel owns the socket now
    peer = handoff.peer_address
    channel = Channel(engine, driver, sock, peer, owns_socket=True)
    driver.attach(channel)
    engine.start_server(handoff.client_hello, loop.time())
    driver.flush()
    try:
        await driver.handshake
    except asyncio.CancelledError:
        _settle(driver.handshake)
        channel.close()
        raise
    except BaseException:
        channel.close()
        await channel.wait_closed()
        raise
    return channel
