"""dtlskit: secure sessions over UDP (DTLS 1.2) for Python, on OpenSSL.

``dtlskit.connect`` / ``dtlskit.serve`` / ``dtlskit.listen`` / ``dtlskit.run_server`` are the
asyncio front end (:mod:`dtlskit.asyncio`); the blocking mirror image is :mod:`dtlskit.sync`;
the sans-I/O engines are in :mod:`dtlskit.core`. :data:`ACCELERATOR` says whether established
records move through the optional C extension (``"native"``) or pure Python (``"python"``);
``DTLSKIT_NATIVE=0`` in the environment turns the extension off.
"""

from ._frontend.accel import ACCELERATOR
from ._frontend.channel_base import SessionProtocol
from .asyncio import connect, from_handoff, listen, listen_handoff, run_server, serve
from .config import DEFAULT_CIPHERS, DTLSConfiguration, Limits
from .core.session import Session
from .exceptions import (
    BufferTooSmall,
    CertificateVerificationError,
    ConcurrencyError,
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    ConnectionLost,
    ConnectionRefused,
    DTLSError,
    DTLSTimeoutError,
    HandshakeError,
    HandshakeFailure,
    HandshakeTimeout,
    InvalidArgument,
    InvalidMessage,
    MessageTooLarge,
    TransportError,
    UsageError,
    VerificationReason,
)

__version__ = "0.1.0"

__all__ = [
    "ACCELERATOR",
    "DEFAULT_CIPHERS",
    "BufferTooSmall",
    "CertificateVerificationError",
    "ConcurrencyError",
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionClosedByPeer",
    "ConnectionClosedLocally",
    "ConnectionLost",
    "ConnectionRefused",
    "DTLSConfiguration",
    "DTLSError",
    "DTLSTimeoutError",
    "HandshakeError",
    "HandshakeFailure",
    "HandshakeTimeout",
    "InvalidArgument",
    "InvalidMessage",
    "Limits",
    "MessageTooLarge",
    "Session",
    "SessionProtocol",
    "TransportError",
    "UsageError",
    "VerificationReason",
    "__version__",
    "connect",
    "from_handoff",
    "listen",
    "listen_handoff",
    "run_server",
    "serve",
]
