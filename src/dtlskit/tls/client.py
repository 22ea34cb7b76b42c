"""asyncio TLS client: :func:`connect`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator
from typing import Any

from .._frontend.sockets import Address, check_port
from ..config import DTLSConfiguration
from ..core.session import Session
from ..core.tls import DEFAULT_MAX_MESSAGE_SIZE, Framing, TLSConnection, check_framing
from ..exceptions import ConfigurationError, HandshakeTimeout
from ._common import connect_error
from .channel import Channel, TLSProtocol

__all__ = ["connect"]

logger = logging.getLogger("dtlskit.tls")


class _Connector:
    """What :func:`connect` returns: await it, or use it as an async context manager."""

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._channel: Channel | None = None

    def __await__(self) -> Generator[Any, None, Channel]:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> Channel:
        self._channel = await _open(*self._args)
        return self._channel

    async def __aexit__(self, *exc_info: object) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
            await channel.wait_closed()


def connect(
    host: str,
    port: int,
    *,
    config: DTLSConfiguration | None = None,
    local_addr: Address | None = None,
    timeout: float | None = None,
    server_hostname: str | None = None,
    session: Session | None = None,
    framing: Framing = "stream",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> _Connector:
    """Open a TLS connection over TCP to ``host``:``port``; ``await`` it or ``async with``.

    The DTLS :func:`dtlskit.connect`'s arguments, same meaning: ``config`` defaults to
    ``DTLSConfiguration.client()``; the name checked and sent in SNI is ``server_hostname``,
    else ``config.server_hostname``, else ``host``; ``timeout`` (default
    ``config.handshake_timeout``) covers the TCP connect and the handshake; ``session``
    resumes. ``framing="length-prefixed"`` gives message semantics with another dtlskit peer
    (``max_message_size`` bounds each message both ways).
    """
    check_framing(framing, max_message_size)
    return _Connector(
        host,
        port,
        config,
        local_addr,
        timeout,
        server_hostname,
        session,
        framing,
        max_message_size,
    )


async def _open(
    host: str,
    port: int,
    config: DTLSConfiguration | None,
    local_addr: Address | None,
    timeout: float | None,
    server_hostname: str | None,
    session: Session | None,
    framing: Framing,
    max_message_size: int,
) -> Channel:
    loop = asyncio.get_running_loop()
    check_port(port)
    config = config if config is not None else DTLSConfiguration.client()
    limit = config.handshake_timeout if timeout is None else float(timeout)
    if not limit > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    engine_config = config
    if limit != config.handshake_timeout:
        engine_config = config.replace(handshake_timeout=limit)
    name = server_hostname or config.server_hostname or host
    engine = TLSConnection(
        engine_config,
        server=False,
        server_hostname=name,
        session=session,
        framing=framing,
        max_message_size=max_message_size,
        context=config.context(False, tls=True),
    )
    protocol = TLSProtocol(loop, engine)
    deadline = loop.time() + limit
    attempt = asyncio.ensure_future(
        loop.create_connection(lambda: protocol, host, port, local_addr=local_addr)
    )
    try:
        done, _ = await asyncio.wait({attempt}, timeout=limit)
    except BaseException:
        attempt.cancel()
        raise
    if not done:
        attempt.cancel()
        raise HandshakeTimeout(f"TCP connect to {host}:{port} took longer than {limit:g} s")
    try:
        attempt.result()
    except OSError as exc:
        raise connect_error(exc, host, port) from exc
    channel = Channel(protocol)
    try:
        # The engine's own deadline ends the handshake; this wait is a backstop.
        await asyncio.wait_for(
            asyncio.shield(protocol.handshake), max(deadline - loop.time(), 0) + 1
        )
    except asyncio.TimeoutError:
        channel.close()
        raise HandshakeTimeout(
            f"handshake with {host}:{port} took longer than {limit:g} s"
        ) from None
    except BaseException:
        channel.close()
        raise
    logger.debug("connected to %s:%s (%s, %s)", host, port, channel.version, channel.cipher)
    return channel
