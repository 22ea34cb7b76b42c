"""Blocking hand-off (EdgerOS multi-task server): :func:`listen_handoff` accepts peers without
handshaking them, :func:`from_handoff` finishes a handed-off peer's handshake.

The mirror image of :mod:`dtlskit.asyncio.handoff`; the shared parts and the races they close
are in :mod:`dtlskit.handoff` and :mod:`dtlskit.core.handoff`. The listener reads its socket in
the thread that calls :meth:`HandoffListener.accept` (ClientHellos are answered while someone
waits in ``accept``, as in EdgerOS); a handed-off channel has its own I/O thread, like a client
channel.
"""

from __future__ import annotations

import select
import time
from typing import Any

from .._frontend.channel_base import check_server_config, fresh_error
from .._frontend.sockets import format_address
from ..config import DTLSConfiguration
from ..core.connection import DTLSConnection, State
from ..exceptions import (
    ConfigurationError,
    DTLSTimeoutError,
    HandshakeFailure,
    HandshakeTimeout,
    UsageError,
)
from ..handoff import (
    Handoff,
    HandoffListenerCore,
    HandoffStatistics,
    ReconnectGuard,
    may_be_client_hello,
    prepare,
)
from .channel import Channel
from .client import _ClientIO

__all__ = ["HandoffListener", "from_handoff", "listen_handoff"]

Address = tuple[Any, ...]


class HandoffListener:
    """A listening socket that verifies cookies and hands peers out un-handshaken
    (EdgerOS ``createServer`` + ``accept`` in multi-task mode). A context manager."""

    def __init__(self, core: HandoffListenerCore) -> None:
        self._core = core

    def accept(self, timeout: float | None = None) -> Handoff:
        """The next peer whose cookie verified, as a :class:`~dtlskit.handoff.Handoff` (its
        connected socket and ClientHello). Answers other peers' ClientHellos meanwhile.
        Raises :class:`DTLSTimeoutError` after ``timeout`` seconds (None: wait for ever)."""
        core = self._core
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if core.ready:
                return core.ready.popleft()
            if core._closed:
                raise UsageError("accept() on a closed hand-off listener")
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                readable, _, _ = select.select([core.sock], [], [], remaining)
            except (OSError, ValueError):  # closed by another thread meanwhile
                if core._closed:
                    raise UsageError("the hand-off listener was closed during accept()") from None
                raise
            if readable:
                core.read(time.monotonic())
                if core.ready:
                    continue
            # Checked after a read too: a flood keeps the socket readable for as long as it
            # lasts, and the caller's timeout must still fire.
            if deadline is not None and time.monotonic() >= deadline:
                raise DTLSTimeoutError(f"no peer was accepted within {timeout:g} s")

    def getsockname(self) -> Address:
        """The address and port the listener is bound to."""
        return self._core.getsockname()

    def fileno(self) -> int:
        return self._core.sock.fileno()

    def statistics(self) -> HandoffStatistics:
        """Counters: HelloVerifyRequests sent, peers handed off, drops by reason, ..."""
        return self._core.statistics()

    def close(self) -> None:
        """Close the listening socket and every accepted hand-off not taken yet. Sockets
        already handed off are not affected."""
        self._core.close()

    def __enter__(self) -> HandoffListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def listen_handoff(
    host: str,
    port: int,
    *,
    config: DTLSConfiguration,
    backlog: int = 128,
) -> HandoffListener:
    """A hand-off listener on ``host`` (an IP address; ``"0.0.0.0"`` or ``"::"`` for all) and
    ``port`` (0: any free port). ``config`` is the server configuration: its cookie secret,
    ``limits.hello_verify_per_second`` and ``limits.max_client_hello_size`` are used here; give
    the workers the same ``cookie_secret``. At most ``backlog``
    accepted peers wait for :meth:`HandoffListener.accept` (more are dropped, counted as
    ``accept_queue_full``, and retry)."""
    return HandoffListener(HandoffListenerCore.bind(host, port, config, backlog))


class _HandoffIO(_ClientIO):
    """The I/O thread of a handed-off peer: a client channel's, but the engine starts from the
    stored ClientHello and a new ClientHello from the peer goes to the guard."""

    def __init__(self, handoff: Handoff, engine: DTLSConnection, guard: ReconnectGuard) -> None:
        sock = handoff.socket
        super().__init__(sock, engine, handoff.peer_address)
        self._hello = handoff.client_hello
        self._guard = guard

    def _start_locked(self, now: float) -> None:
        if self.engine.state is State.INITIAL:
            self.engine.start_server(self._hello, now)

    def _feed_locked(
        self, batch: list[tuple[bytes, Address]], error: OSError | None, now: float
    ) -> None:
        receive = self.engine.receive_datagram
        guard = self._guard
        for data, _ in batch:
            if data[:1] == b"\x16" and may_be_client_hello(data):
                reply = guard.screen(data, now)
                if reply is not None:
                    if reply:
                        self.transmit_locked([reply], None)
                    if guard.replaced:
                        self.request_stop()  # closes the socket: the listener gets the peer
                        return
                    continue
            receive(data, now)
        if error is not None:
            self._socket_failed_locked(error)


def from_handoff(
    handoff: Handoff,
    *,
    config: DTLSConfiguration,
    timeout: float | None = None,
    verify_cookie: bool | None = None,
) -> Channel:
    """EdgerOS ``Dtls.createByFd`` in synchronous mode: finish the handshake of a handed-off
    peer and return its :class:`Channel`, blocking at most ``timeout`` seconds (default
    ``config.handshake_timeout``; :class:`HandshakeTimeout` after it).

    The hand-off's socket becomes the channel's (the ``Handoff`` is emptied). With
    ``config.cookie_secret`` set (or ``verify_cookie=True``) the handed-off ClientHello's cookie
    is checked again here (:class:`HandshakeFailure` if it does not verify).
    """
    check_server_config(config)
    if timeout is None:
        timeout = config.handshake_timeout
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    engine_config = config
    if timeout != config.handshake_timeout:
        engine_config = config.replace(handshake_timeout=timeout)
    deadline = time.monotonic() + timeout
    try:
        engine, guard = prepare(handoff, engine_config, time.monotonic(), verify_cookie)
        io = _HandoffIO(handoff, engine, guard)
    except BaseException:
        handoff.close()
        raise
    handoff._sock = None  # the channel owns the socket now
    peer = handoff.peer_address
    channel = Channel(engine, io, peer, owns_io=True)
    io.attach(channel)
    try:
        io.start()
        io.handshake_done.wait(max(0.0, deadline - time.monotonic()))
        with io.lock:
            if not io.established and engine.state in (State.INITIAL, State.HANDSHAKING):
                engine.abort(
                    HandshakeTimeout(
                        f"handshake with {format_address(peer)} did not complete within "
                        f"{timeout:g} s"
                    )
                )
                io.pump_locked()
            error = engine.error
        if io.established:
            return channel
    except BaseException:
        channel._abandon()
        io.stop()
        raise
    channel._abandon()
    io.stop()
    if error is None:  # pragma: no cover - an ended handshake always records why
        error = HandshakeFailure(f"handshake with {format_address(peer)} failed")
    raise fresh_error(error)
