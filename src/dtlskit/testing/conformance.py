"""A conformance suite of channel behaviour that every dtlskit front end passes.

Each check is a function taking a :class:`Harness` (one per flavour) and the server and client
configurations. A harness starts an echo server and opens clients, exposing both through the
same small blocking facade, so one check runs unchanged against the asyncio flavour (driven on
a loop in a helper thread) and the blocking one. Real OpenSSL, real UDP sockets on loopback.

Use it from a test::

    from dtlskit.testing import conformance

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
    @pytest.mark.parametrize("harness_class", conformance.HARNESSES)
    def test_conformance(check, harness_class, server_config, client_config):
        with harness_class() as harness:
            check(harness, server_config, client_config)

A new front end joins by implementing :class:`Harness` and passing every check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ..config import DTLSConfiguration
from ..exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    DTLSTimeoutError,
    InvalidMessage,
    MessageTooLarge,
)

__all__ = ["CHECKS", "HARNESSES", "AsyncioHarness", "Client", "Harness", "SyncHarness"]

WAIT = 10.0
"""Bound on every wait in a check: a safety net, never a timing assertion."""

T = TypeVar("T")


class Client(Protocol):
    """The blocking facade of one client channel."""

    def send(self, data: bytes) -> None: ...
    def recv(self, timeout: float = WAIT) -> bytes: ...
    def close(self) -> None: ...
    def attribute(self, name: str) -> Any: ...
    def concurrent_recvs(self) -> list[BaseException | bytes]: ...


class Harness(Protocol):
    """One front end, as the checks see it."""

    name: str

    def serve_echo(self, config: DTLSConfiguration) -> tuple[str, int]: ...
    def connect(self, port: int, config: DTLSConfiguration) -> Client: ...
    def close_server(self) -> None: ...
    def server_saw_end(self) -> BaseException | None: ...
    def __enter__(self) -> Harness: ...
    def __exit__(self, *exc_info: object) -> None: ...


# -- the checks ---------------------------------------------------------------------------------


def _expect(
    errors: type[BaseException] | tuple[type[BaseException], ...],
    action: Callable[[], object],
    failure: str,
) -> None:
    """Run ``action``; it must raise one of ``errors``, else the check fails with ``failure``."""
    try:
        action()
    except errors:
        return
    raise AssertionError(failure)


def check_echo_keeps_message_boundaries(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    """Every message comes back whole and alone, sizes 1 byte up to the cleartext MTU."""
    _, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    limit = channel.attribute("cleartext_mtu")
    for size in (1, 2, 100, 1000, limit):
        message = bytes((size + i) % 256 for i in range(size))
        channel.send(message)
        assert channel.recv() == message, f"{harness.name}: {size}-byte message changed"
    channel.close()


def check_properties_after_handshake(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    """The negotiated version, cipher, peer certificate and addresses are exposed."""
    host, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    assert channel.attribute("version") == "DTLSv1.2"
    assert channel.attribute("cipher")
    certificate = channel.attribute("peer_certificate")
    assert certificate is not None and "localhost" in certificate.subject.rfc4514_string()
    assert channel.attribute("getpeername")[:2] == (host, port)
    assert channel.attribute("getsockname")[1] > 0
    assert channel.attribute("mtu") >= channel.attribute("cleartext_mtu") > 0
    assert channel.attribute("closed") is False
    channel.close()
    assert channel.attribute("closed") is True


def check_statistics_count_traffic(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    _, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    for index in range(3):
        channel.send(b"count me %d" % index)
        channel.recv()
    stats = channel.attribute("statistics")
    assert stats.messages_sent == 3 and stats.messages_received == 3
    assert stats.datagrams_sent >= 5 and stats.bytes_received > 0
    channel.close()


def check_message_too_large_keeps_the_session(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    _, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    too_big = b"x" * (channel.attribute("cleartext_mtu") + 1)
    _expect(
        MessageTooLarge,
        lambda: channel.send(too_big),
        f"{harness.name}: an oversized message was accepted",
    )
    channel.send(b"still fine")
    assert channel.recv() == b"still fine"
    channel.close()


def check_invalid_messages_are_refused(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    """Empty and non-bytes messages raise InvalidMessage; the session goes on."""
    _, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    for bad in (b"", "text", 5):
        _expect(
            InvalidMessage,
            lambda bad=bad: channel.send(bad),  # type: ignore[misc]
            f"{harness.name}: send({bad!r}) was accepted",
        )
    channel.send(b"after")
    assert channel.recv() == b"after"
    channel.close()


def check_local_close_is_idempotent_and_final(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    """close() twice is fine; then send and recv raise ConnectionClosedLocally; the server's
    handler sees the peer's close_notify."""
    _, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    channel.send(b"hello")
    assert channel.recv() == b"hello"
    channel.close()
    channel.close()
    for action in (lambda: channel.send(b"late"), lambda: channel.recv(1.0)):
        _expect(
            ConnectionClosedLocally, action, f"{harness.name}: a closed channel was still usable"
        )
    ended = harness.server_saw_end()
    assert isinstance(ended, ConnectionClosedByPeer), f"{harness.name}: server saw {ended!r}"


def check_server_close_reaches_the_client(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    """Closing the server sends close_notify: the client's recv raises ConnectionClosedByPeer
    (after any message already received)."""
    _, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    channel.send(b"last words")
    assert channel.recv() == b"last words"
    harness.close_server()
    _expect(
        ConnectionClosedByPeer,
        channel.recv,
        f"{harness.name}: recv after the server closed returned",
    )
    _expect(
        ConnectionClosed,
        lambda: channel.send(b"anyone?"),
        f"{harness.name}: send after the peer closed was accepted",
    )
    channel.close()


def check_concurrent_recv_is_refused(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    """Two readers on one channel: one gets the message, the other ConcurrencyError."""
    _, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    results = channel.concurrent_recvs()
    assert sum(isinstance(r, ConcurrencyError) for r in results) == 1, results
    assert b"wake" in results, results
    channel.close()


def check_recv_timeout_leaves_the_session_usable(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    _, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    _expect(
        (DTLSTimeoutError, TimeoutError),
        lambda: channel.recv(0.2),
        f"{harness.name}: recv with nothing to read returned",
    )
    channel.send(b"after the timeout")
    assert channel.recv() == b"after the timeout"
    channel.close()


CHECKS: list[Callable[[Harness, DTLSConfiguration, DTLSConfiguration], None]] = [
    check_echo_keeps_message_boundaries,
    check_properties_after_handshake,
    check_statistics_count_traffic,
    check_message_too_large_keeps_the_session,
    check_invalid_messages_are_refused,
    check_local_close_is_idempotent_and_final,
    check_server_close_reaches_the_client,
    check_concurrent_recv_is_refused,
    check_recv_timeout_leaves_the_session_usable,
]


# -- the blocking flavour -------------------------------------------------------------------------


class _SyncClient:
    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def send(self, data: bytes) -> None:
        self._channel.send(data, timeout=WAIT)

    def recv(self, timeout: float = WAIT) -> bytes:
        return bytes(self._channel.recv(timeout=timeout))

    def close(self) -> None:
        self._channel.close()

    def attribute(self, name: str) -> Any:
        value = getattr(self._channel, name)
        return value() if name in ("getpeername", "getsockname", "statistics") else value

    def concurrent_recvs(self) -> list[BaseException | bytes]:
        results: list[BaseException | bytes] = []
        started = threading.Barrier(2)

        def reader() -> None:
            started.wait(WAIT)
            try:
                results.append(self._channel.recv(timeout=WAIT))
            except BaseException as exc:  # the check inspects what each reader got
                results.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for thread in threads:
            thread.start()
        for _ in range(100):  # let one reader fail, then give the other something to read
            if results:
                break
            threading.Event().wait(0.02)
        self._channel.send(b"wake", timeout=WAIT)
        for thread in threads:
            thread.join(WAIT)
        return results


class SyncHarness:
    """:mod:`dtlskit.sync`: a threaded echo server and blocking clients."""

    name = "sync"

    def __init__(self) -> None:
        self._server: Any = None
        self._clients: list[_SyncClient] = []
        self._ends: list[BaseException | None] = []
        self._ended = threading.Event()

    def serve_echo(self, config: DTLSConfiguration) -> tuple[str, int]:
        from .. import sync

        def echo(channel: Any) -> None:
            try:
                for message in channel:
                    channel.send(message)
                channel.recv(timeout=0.1)  # after iteration: what ended the session
            except BaseException as exc:
                self._ends.append(exc)
            else:  # pragma: no cover - recv after the end always raises
                self._ends.append(None)
            finally:
                self._ended.set()

        self._server = sync.serve(echo, "127.0.0.1", 0, config=config)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        host, port = self._server.addresses[0][:2]
        return str(host), int(port)

    def connect(self, port: int, config: DTLSConfiguration) -> Client:
        from .. import sync

        client = _SyncClient(sync.connect("127.0.0.1", port, config=config, timeout=WAIT))
        self._clients.append(client)
        return client

    def close_server(self) -> None:
        if self._server is not None:
            self._server.close()

    def server_saw_end(self) -> BaseException | None:
        self._ended.wait(WAIT)
        return self._ends[0] if self._ends else None

    def __enter__(self) -> SyncHarness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for client in self._clients:
            client.close()
        self.close_server()


# -- the asyncio flavour --------------------------------------------------------------------------


class _AsyncioClient:
    def __init__(self, harness: AsyncioHarness, channel: Any) -> None:
        self._harness = harness
        self._channel = channel

    def send(self, data: bytes) -> None:
        self._harness.run(self._channel.send(data))

    def recv(self, timeout: float = WAIT) -> bytes:
        return bytes(self._harness.run(asyncio.wait_for(self._channel.recv(), timeout)))

    def close(self) -> None:
        async def close() -> None:
            self._channel.close()
            await self._channel.wait_closed()

        self._harness.run(close())

    def attribute(self, name: str) -> Any:
        async def read() -> Any:
            value = getattr(self._channel, name)
            return value() if name in ("getpeername", "getsockname", "statistics") else value

        return self._harness.run(read())

    def concurrent_recvs(self) -> list[BaseException | bytes]:
        async def both() -> list[BaseException | bytes]:
            readers = [asyncio.ensure_future(self._channel.recv()) for _ in range(2)]
            await asyncio.sleep(0.05)
            await self._channel.send(b"wake")
            done = await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), WAIT)
            return list(done)

        return self._harness.run(both())


class AsyncioHarness:
    """:mod:`dtlskit.asyncio`: a loop in a helper thread; the checks call into it."""

    name = "asyncio"

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: Any = None
        self._clients: list[_AsyncioClient] = []
        self._ends: list[BaseException | None] = []
        self._ended = threading.Event()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the harness loop and wait for it (bounded)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(WAIT * 2)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def serve_echo(self, config: DTLSConfiguration) -> tuple[str, int]:
        from .. import asyncio as dtls_asyncio

        async def echo(channel: Any) -> None:
            try:
                async for message in channel:
                    await channel.send(message)
                await asyncio.wait_for(channel.recv(), 0.1)
            except BaseException as exc:
                self._ends.append(exc)
            else:  # pragma: no cover - recv after the end always raises
                self._ends.append(None)
            finally:
                self._ended.set()

        async def start() -> Any:
            return await dtls_asyncio.serve(echo, "127.0.0.1", 0, config=config)

        self._server = self.run(start())
        host, port = self._server.addresses[0][:2]
        return str(host), int(port)

    def connect(self, port: int, config: DTLSConfiguration) -> Client:
        from .. import asyncio as dtls_asyncio

        async def open_channel() -> Any:
            return await dtls_asyncio.connect("127.0.0.1", port, config=config, timeout=WAIT)

        client = _AsyncioClient(self, self.run(open_channel()))
        self._clients.append(client)
        return client

    def close_server(self) -> None:
        if self._server is None:
            return

        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        self.run(close())

    def server_saw_end(self) -> BaseException | None:
        self._ended.wait(WAIT)
        return self._ends[0] if self._ends else None

    def __enter__(self) -> AsyncioHarness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for client in self._clients:
                client.close()
            self.close_server()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            self._loop.close()


HARNESSES: list[type[AsyncioHarness] | type[SyncHarness]] = [AsyncioHarness, SyncHarness]
