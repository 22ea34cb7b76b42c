"""QUIC (RFC 9000) on the same API as DTLS, over aioquic's sans-I/O connection (asyncio flavour).

::

    import dtlskit, dtlskit.quic

    config = dtlskit.DTLSConfiguration.client(cafile="ca.pem", alpn_protocols=["hq-interop"])
    async with dtlskit.quic.connect("localhost", 4433, config=config) as channel:
        await channel.send(b"hello")        # one stream: the message, then FIN
        print(await channel.recv())         # the next stream the peer ended with FIN
        print(await channel.request(b"hi")) # seed 002: the answer on the same stream

The blocking flavour is :mod:`dtlskit.sync.quic` (same names; ``timeout=`` on blocking calls).
Needs the ``quic`` extra (``pip install 'dtlskit[quic]'``: aioquic). See ``docs/quic.md``:
what maps from :class:`~dtlskit.DTLSConfiguration`, what QUIC refuses and why, the bounds.
"""

from __future__ import annotations

try:
    import aioquic  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is not installed
    from ..exceptions import ConfigurationError

    raise ConfigurationError(
        "dtlskit.quic needs aioquic: pip install 'dtlskit[quic]'"
    ) from exc

import logging

# aioquic logs each connection error on its "quic" logger; we raise it as one of our exceptions
# instead, so without the application's own logging set-up it should not also reach stderr.
logging.getLogger("quic").addHandler(logging.NullHandler())

from . import sansio  # noqa: E402
from ._asyncio import QuicChannel, QuicServer, QuicStream, connect, serve  # noqa: E402
from ._config import REFUSED  # noqa: E402
from ._engine import QuicStatistics, StreamError  # noqa: E402

__all__ = [
    "REFUSED",
    "QuicChannel",
    "QuicServer",
    "QuicStatistics",
    "QuicStream",
    "StreamError",
    "connect",
    "sansio",
    "serve",
]
