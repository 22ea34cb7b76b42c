"""The conformance suite (:mod:`dtlskit.testing.conformance`) run against the TLS front ends.

The TLS channels pass every check that applies to a byte stream carrying messages: they run
with ``framing="length-prefixed"`` (message boundaries between dtlskit peers, messages up to
:data:`MAX_MESSAGE` bytes), so the checks of message boundaries, too-large and invalid
messages, closing either way, concurrent readers and timeouts run unchanged. Datagram-only
checks (the DTLS version string, datagram counters) are replaced by :func:`check_tls_properties`.

Use it from a test::

    @pytest.mark.parametrize("check", tls_conformance.CHECKS)
    @pytest.mark.parametrize("harness_class", tls_conformance.HARNESSES)
    def test_tls_conformance(check, harness_class, server_config, client_config):
        with harness_class() as harness:
            check(harness, server_config, client_config)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from ..config import DTLSConfiguration
from ..core.tls import Framing
from . import conformance
from .conformance import WAIT, Client, Harness

__all__ = ["CHECKS", "HARNESSES", "MAX_MESSAGE", "TLSAsyncioHarness", "TLSSyncHarness"]

MAX_MESSAGE = 16384
"""``max_message_size`` of the harness channels (what the checks read as ``cleartext_mtu``)."""

_FRAMING: Framing = "length-prefixed"
_ALIASES = {"cleartext_mtu": "max_message_size", "mtu": "max_message_size"}


def _read(channel: Any, name: str) -> Any:
    if name in _ALIASES:
        return MAX_MESSAGE
    value = getattr(channel, name)
    return value() if name in ("getpeername", "getsockname", "statistics") else value


def check_tls_properties(
    harness: Harness, server: DTLSConfiguration, client: DTLSConfiguration
) -> None:
    """Version (TLS 1.3 by default), cipher, peer certificate, addresses, counters."""
    host, port = harness.serve_echo(server)
    channel = harness.connect(port, client)
    assert channel.attribute("version") == "TLSv1.3"
    assert channel.attribute("cipher")
    certificate = channel.attribute("peer_certificate")
    assert certificate is not None and "localhost" in certificate.subject.rfc4514_string()
    assert channel.attribute("getpeername")[:2] == (host, port)
    assert channel.attribute("getsockname")[1] > 0
    assert channel.attribute("closed") is False
    for index in range(3):
        channel.send(b"count me %d" % index)
        channel.recv()
    stats = channel.attribute("statistics")
    assert stats.messages_sent == 3 and stats.messages_received == 3
    assert stats.bytes_sent > 0 and stats.bytes_received > 0
    channel.close()
    assert channel.attribute("closed") is True


CHECKS: list[Callable[[Harness, DTLSConfiguration, DTLSConfiguration], None]] = [
    conformance.check_echo_keeps_message_boundaries,
    check_tls_properties,
    conformance.check_message_too_large_keeps_the_session,
    conformance.check_invalid_messages_are_refused,
    conformance.check_local_close_is_idempotent_and_final,
    conformance.check_server_close_reaches_the_client,
    conformance.check_concurrent_recv_is_refused,
    conformance.check_recv_timeout_leaves_the_session_usable,
]


class _TLSSyncClient(conformance._SyncClient):
    def attribute(self, name: str) -> Any:
        return _read(self._channel, name)


class TLSSyncHarness(conformance.SyncHarness):
    """:mod:`dtlskit.sync.tls`: a threaded echo server and blocking clients over TCP."""

    name = "sync-tls"

    def serve_echo(self, config: DTLSConfiguration) -> tuple[str, int]:
        from ..sync import tls

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

        self._server = tls.serve(
            echo, "127.0.0.1", 0, config=config, framing=_FRAMING, max_message_size=MAX_MESSAGE
        )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        host, port = self._server.addresses[0][:2]
        return str(host), int(port)

    def connect(self, port: int, config: DTLSConfiguration) -> Client:
        from ..sync import tls

        channel = tls.connect(
            "127.0.0.1",
            port,
            config=config,
            timeout=WAIT,
            framing=_FRAMING,
            max_message_size=MAX_MESSAGE,
        )
        client = _TLSSyncClient(channel)
        self._clients.append(client)
        return client


class _TLSAsyncioClient(conformance._AsyncioClient):
    def attribute(self, name: str) -> Any:
        async def read() -> Any:
            return _read(self._channel, name)

        return self._harness.run(read())


class TLSAsyncioHarness(conformance.AsyncioHarness):
    """:mod:`dtlskit.tls`: a loop in a helper thread; the checks call into it."""

    name = "asyncio-tls"

    def serve_echo(self, config: DTLSConfiguration) -> tuple[str, int]:
        from .. import tls

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
            return await tls.serve(
                echo,
                "127.0.0.1",
                0,
                config=config,
                framing=_FRAMING,
                max_message_size=MAX_MESSAGE,
            )

        self._server = self.run(start())
        host, port = self._server.addresses[0][:2]
        return str(host), int(port)

    def connect(self, port: int, config: DTLSConfiguration) -> Client:
        from .. import tls

        async def open_channel() -> Any:
            return await tls.connect(
                "127.0.0.1",
                port,
                config=config,
                timeout=WAIT,
                framing=_FRAMING,
                max_message_size=MAX_MESSAGE,
            )

        client = _TLSAsyncioClient(self, self.run(open_channel()))
        self._clients.append(client)
        return client


HARNESSES: list[type[TLSAsyncioHarness] | type[TLSSyncHarness]] = [
    TLSAsyncioHarness,
    TLSSyncHarness,
]
