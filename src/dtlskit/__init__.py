"""dtlskit: secure sessions over UDP (DTLS 1.2) for Python, on OpenSSL."""

from .config import DEFAULT_CIPHERS, DTLSConfiguration, Limits
from .exceptions import (
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
    MessageTooLarge,
    TransportError,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CIPHERS",
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
    "Limits",
    "MessageTooLarge",
    "TransportError",
    "__version__",
]
