"""CoAP over DTLS (``coaps://``, RFC 7252 §9) for aiocoap, on dtlskit.

aiocoap's own DTLS transport (tinydtls) is experimental and PSK-only. This one speaks DTLS 1.2
through dtlskit: certificates, mutual authentication and PSK, for clients and servers::

    import aiocoap, dtlskit
    from dtlskit.contrib import aiocoap as coaps

    # server: a resource tree served on coaps://[::]:5684
    config = dtlskit.DTLSConfiguration.server("server.pem", "server.key", cafile="ca.pem",
                                              verify_mode=ssl.CERT_REQUIRED)
    context = await coaps.create_server_context(site, "::", 5684, config=config)

    # client
    config = dtlskit.DTLSConfiguration.client(cafile="ca.pem",
                                              certfile="client.pem", keyfile="client.key")
    context = await coaps.create_client_context(config)
    response = await context.request(aiocoap.Message(code=aiocoap.GET,
                                                     uri="coaps://sensor.local/temp")).response

A resource learns who asks from ``request.remote.authenticated_claims``: a
:class:`CertificateClaim` (the client certificate, verified) and/or a :class:`PSKClaim` (its PSK
identity). ``coaps_transport(context)`` gives the transport: its dtlskit server (``addresses``,
``statistics()``) and what it dropped (``drops``).

Errors: a handshake that fails, or a session that ends, fails the requests waiting on it with
``aiocoap.error.NetworkError`` whose ``__cause__`` is the dtlskit exception
(:class:`dtlskit.CertificateVerificationError`, :class:`dtlskit.HandshakeTimeout`, ...).

aiocoap is asyncio-only, and so is this transport. It needs one private aiocoap interface,
``Context._append_tokenmanaged_messagemanaged_transport`` (see ``docs/iot.md``); the extra
``coap`` pins the aiocoap versions it was tested with.
"""

from __future__ import annotations

import weakref
from typing import Any

import aiocoap

from dtlskit.config import DTLSConfiguration
from dtlskit.exceptions import ConfigurationError

from ._claims import CertificateClaim, PSKClaim
from ._transport import ClientConfig, CoapsTransport, attach

__all__ = [
    "CertificateClaim",
    "ClientConfig",
    "CoapsTransport",
    "PSKClaim",
    "add_transport",
    "coaps_transport",
    "create_client_context",
    "create_server_context",
]

COAPS_PORT = 5684

_transports: weakref.WeakKeyDictionary[Any, CoapsTransport] = weakref.WeakKeyDictionary()


async def add_transport(
    context: aiocoap.Context,
    *,
    client_config: ClientConfig | None = None,
    host: str | None = None,
    port: int = COAPS_PORT,
    server_config: DTLSConfiguration | None = None,
) -> CoapsTransport:
    """Give an existing aiocoap ``Context`` a ``coaps://`` transport on dtlskit.

    Requests to ``coaps://`` URIs go through it, with ``client_config`` (one
    :class:`~dtlskit.DTLSConfiguration` for every server, or a callable ``(host, port)`` ->
    configuration or ``None``). Without one, a PSK from ``context.client_credentials`` (the
    ``{"coaps://host/*": {"dtls": {"psk": ..., "client-identity": ...}}}`` entries aiocoap's
    tinydtls transport reads) is used, else the system's CAs. With ``server_config``, it also
    serves the context's site on ``host``:``port`` (``host`` None: every interface; port 0: any
    free port, see ``coaps_transport(context).server.addresses``).
    """
    if context in _transports:
        raise ConfigurationError("this aiocoap context already has a dtlskit coaps transport")
    if server_config is not None and not isinstance(server_config, DTLSConfiguration):
        raise ConfigurationError("server_config must be a dtlskit.DTLSConfiguration")
    server = None if server_config is None else (host, port, server_config)
    transport = await attach(context, client_config=client_config, server=server)
    _transports[context] = transport
    return transport


async def create_client_context(
    config: ClientConfig | None = None, *, loggername: str = "coap"
) -> aiocoap.Context:
    """An aiocoap client context whose only transport is ``coaps://`` on dtlskit (see
    :func:`add_transport` for ``config``). Shut it down with ``await context.shutdown()``."""
    context = aiocoap.Context(loggername=loggername)
    await add_transport(context, client_config=config)
    return context


async def create_server_context(
    site: Any,
    host: str | None,
    port: int = COAPS_PORT,
    *,
    config: DTLSConfiguration,
    client_config: ClientConfig | None = None,
    loggername: str = "coap-server",
) -> aiocoap.Context:
    """An aiocoap context serving ``site`` (e.g. an ``aiocoap.resource.Site``) on
    ``coaps://host:port`` with the server ``config``; it can also make ``coaps://`` requests
    (``client_config``, see :func:`add_transport`). Plain ``coap://`` is not served."""
    context = aiocoap.Context(serversite=site, loggername=loggername)
    await add_transport(
        context, client_config=client_config, host=host, port=port, server_config=config
    )
    return context


def coaps_transport(context: aiocoap.Context) -> CoapsTransport:
    """The dtlskit transport added to ``context``; raises ``LookupError`` if it has none."""
    try:
        return _transports[context]
    except KeyError:
        raise LookupError("this aiocoap context has no dtlskit coaps transport") from None
