"""Cancelling an asyncio ``connect()`` (issue 8, defect 7).

The cancel is made to land at exactly the moment that used to lose it, by a real event loop
with one hook (no sleeps order anything, the resolution and the sockets are real):

- as name resolution completes: ``asyncio.wait_for`` on Python 3.10/3.11 returned the result
  of a future that finished as its waiter was cancelled, swallowing the cancel; the task then
  ran on to the handshake deadline;
- as the socket is being set up: with a datagram transport, the transport closed, the handshake
  future (which no one would await any more) got ConnectionLost, and asyncio logged "Future
  exception was never retrieved" at ERROR when it was collected. The client now reads its socket
  with ``loop.add_reader`` and has no await before its first flight, so a cancel landing as the
  reader is added takes effect at the handshake wait: the socket must still be released;
- as the handshake fails (the task must not leave the failure unretrieved either).

Either way the task must end with CancelledError, having sent nothing more, and log no ERROR.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import dtlskit
from dtlskit.asyncio import connect, serve
from dtlskit.certs import PKIFiles
from tests.helpers import WAIT

T = TypeVar("T")


class CancellingLoop(asyncio.SelectorEventLoop):
    """A real selector loop that cancels ``target`` at a chosen moment."""

    target: asyncio.Task[Any] | None = None
    cancel_after_resolution = False
    cancel_on_failure = False
    cancel_on_add_reader = False
    reader_fd: int | None = None
    cancels = 0

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        if self.cancel_on_add_reader and self.target is not None:
            # The client's socket is being set up: cancel the connect task in the same step.
            self.cancel_on_add_reader = False
            self.reader_fd = fd
            self.cancels += 1
            self.target.cancel()
        super().add_reader(fd, callback, *args)

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().getaddrinfo(*args, **kwargs)
        if self.cancel_after_resolution and self.target is not None:
            # The resolution is complete (its future finishes as this returns) and the
            # connect task is cancelled in the same step: the two land together.
            self.cancel_after_resolution = False
            self.cancels += 1
            self.target.cancel()
        return result

    def call_soon(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        future = args[0] if args else None
        if (
            self.cancel_on_failure
            and self.target is not None
            and getattr(callback, "__self__", None) is self.target
            and isinstance(future, asyncio.Future)
            and future.done()
            and not future.cancelled()
            # (read without retrieving it)
            and isinstance(future._exception, dtlskit.HandshakeError)  # type: ignore[attr-defined]
        ):
            # The handshake future the connect task awaits has just failed and the task's
            # wake-up is being scheduled: cancel the task first, before it could retrieve it.
            self.cancel_on_failure = False
            self.cancels += 1
            self.target.cancel()
        return super().call_soon(callback, *args, context=context)


def run_on_cancelling_loop(main: Callable[[CancellingLoop], Coroutine[Any, Any, T]]) -> T:
    loop = CancellingLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(loop), 60))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()  # "never retrieved" is logged when the future is collected
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_cancel_landing_as_resolution_completes_is_not_lost(
    client_config: dtlskit.DTLSConfiguration, caplog: pytest.LogCaptureFixture
) -> None:
    async def main(loop: CancellingLoop) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.setblocking(False)
            port = silent.getsockname()[1]
            loop.cancel_after_resolution = True
            task = asyncio.ensure_future(
                connect("localhost", port, config=client_config, timeout=WAIT)
            )
            loop.target = task
            with pytest.raises(asyncio.CancelledError):
                await task  # a lost cancel ends it with HandshakeTimeout instead
            assert loop.cancels == 1
            assert task.cancelled()
            with pytest.raises(BlockingIOError):  # it stopped before any ClientHello
                silent.recvfrom(2048)

    with caplog.at_level(logging.DEBUG):
        run_on_cancelling_loop(main)
        no_error_logged(caplog)


def test_cancel_landing_as_the_handshake_fails_logs_no_error(
    pki: PKIFiles,
    other_pki: PKIFiles,
    server_config: dtlskit.DTLSConfiguration,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's certificate fails verification (the client trusts another CA); the
    connect task is cancelled as that failure is delivered."""
    wrong_ca = dtlskit.DTLSConfiguration.client(
        cafile=other_pki.ca_cert, server_hostname="localhost"
    )

    async def main(loop: CancellingLoop) -> None:
        async with serve(lambda channel: channel.recv(), "127.0.0.1", 0, config=server_config) as s:
            port = s.addresses[0][1]
            loop.cancel_on_failure = True
            task = asyncio.ensure_future(connect("127.0.0.1", port, config=wrong_ca, timeout=WAIT))
            loop.target = task
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.cancels == 1
            assert task.cancelled()

    with caplog.at_level(logging.DEBUG):
        run_on_cancelling_loop(main)
        no_error_logged(caplog)


def test_cancel_while_the_socket_is_set_up_logs_no_error(
    client_config: dtlskit.DTLSConfiguration, caplog: pytest.LogCaptureFixture
) -> None:
    async def main(loop: CancellingLoop) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.setblocking(False)
            port = silent.getsockname()[1]
            loop.cancel_on_add_reader = True
            task = asyncio.ensure_future(
                connect("127.0.0.1", port, config=client_config, timeout=WAIT)
            )
            loop.target = task
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.cancels == 1
            assert loop.reader_fd is not None
            assert not loop.remove_reader(loop.reader_fd)  # the driver stopped reading
            hello, _ = silent.recvfrom(2048)  # its first flight left before the cancel landed
            assert hello[0] == 22  # a handshake record

    with caplog.at_level(logging.DEBUG):
        run_on_cancelling_loop(main)
        no_error_logged(caplog)
