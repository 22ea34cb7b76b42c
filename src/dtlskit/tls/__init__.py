"""TLS over TCP with the DTLS API, asyncio flavour: ``dtlskit.tls.connect`` /
``serve`` / ``listen``; the blocking mirror image is :mod:`dtlskit.sync.tls`.

The same :class:`~dtlskit.DTLSConfiguration` (certificates, trust, PSK, SNI, ALPN, key log,
sessions; DTLS-only fields are refused), the same exceptions, channels of the same shape. On
TCP ``recv()`` returns what arrived (stream semantics, as sockets do) unless
``framing="length-prefixed"`` is asked for; ``read_exactly``, ``read_until`` and
``read_until_eof`` read streams. The engine is :class:`dtlskit.core.tls.TLSConnection`. See
``docs/tls.md``::

    async with dtlskit.tls.connect("localhost", 4433, config=client_cfg) as channel:
        await channel.send(b"GET / HTTP/1.0\\r\\n\\r\\n")
        print(await channel.read_until_eof())
"""

from ..core.tls import DEFAULT_MAX_MESSAGE_SIZE, Framing, SessionTicketReceived, TLSConnection
from ._common import TLSServerStatistics
from .channel import Channel
from .client import connect
from .server import Listener, Server, listen, serve

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Channel",
    "Framing",
    "Listener",
    "Server",
    "SessionTicketReceived",
    "TLSConnection",
    "TLSServerStatistics",
    "connect",
    "listen",
    "serve",
]
