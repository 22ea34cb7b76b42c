"""Every error dtlskit raises, in one tree.

::

    DTLSError
    ├── ConfigurationError          (also ValueError) a setting is missing, invalid or unloadable
    ├── HandshakeError              the handshake did not complete
    │   ├── HandshakeTimeout        (also TimeoutError) the peer stayed silent past the deadline
    │   ├── CertificateVerificationError   the peer's certificate was rejected (reason in .reason)
    │   └── HandshakeFailure        the peer or OpenSSL aborted: alert, no shared cipher, bad PSK
    ├── ConnectionClosed            the session is over; any further send/recv raises it
    │   ├── ConnectionClosedByPeer  the peer sent close_notify
    │   ├── ConnectionClosedLocally this side called close()
    │   └── ConnectionLost          ended abnormally: fatal alert, idle timeout, replaced, shutdown
    ├── InvalidMessage              (also ValueError) empty, not bytes, or does not fit
    │   ├── MessageTooLarge         a message does not fit in one DTLS record
    │   └── BufferTooSmall          recv_into: the next message does not fit the buffer given
    ├── DTLSTimeoutError            (also TimeoutError) a blocking call's own timeout ran out
    ├── ConnectionRefused           (also ConnectionRefusedError) nothing listens at the address
    ├── ConcurrencyError            two tasks or threads used one channel in a way it cannot serve
    └── TransportError              (also OSError) the socket failed: unreachable, EMSGSIZE, ...

Foreign exceptions (``OpenSSL.SSL.Error``, ``OSError``) are translated at one boundary per
layer and chained with ``raise ... from exc``: no pyOpenSSL exception reaches a user.
"""

from __future__ import annotations

__all__ = [
    "BufferTooSmall",
    "CertificateVerificationError",
    "ConcurrencyError",
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionClosedByPeer",
    "ConnectionClosedLocally",
    "ConnectionLost",
    "ConnectionRefused",
    "DTLSError",
    "DTLSTimeoutError",
    "HandshakeError",
    "HandshakeFailure",
    "HandshakeTimeout",
    "InvalidMessage",
    "MessageTooLarge",
    "TransportError",
]


class DTLSError(Exception):
    """Base class of every exception dtlskit raises on purpose."""


class ConfigurationError(DTLSError, ValueError):
    """A configuration value is invalid, or a file it names cannot be loaded."""


class HandshakeError(DTLSError):
    """The handshake did not complete; no application data was exchanged."""


class HandshakeTimeout(HandshakeError, TimeoutError):
    """The peer did not complete the handshake before the handshake deadline."""


class CertificateVerificationError(HandshakeError):
    """A certificate was rejected.

    ``reason`` is OpenSSL's verification result in words ("certificate has expired",
    "hostname mismatch", ...) or the alert the peer sent when it rejected ours.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class HandshakeFailure(HandshakeError):
    """The handshake was aborted by a fatal alert (sent or received)."""

    def __init__(self, message: str, alert: str | None = None) -> None:
        super().__init__(message)
        self.alert = alert


class ConnectionClosed(DTLSError):
    """The session has ended; ``reason`` says how."""

    def __init__(self, message: str, *, alert: str | None = None) -> None:
        super().__init__(message)
        self.reason = message
        self.alert = alert


class ConnectionClosedByPeer(ConnectionClosed):
    """The peer ended the session cleanly with close_notify."""


class ConnectionClosedLocally(ConnectionClosed):
    """This side closed the session."""


class ConnectionLost(ConnectionClosed):
    """The session ended abnormally (fatal alert, idle timeout, replaced, server shut down)."""


class InvalidMessage(DTLSError, ValueError):
    """A message DTLS cannot carry: empty (OpenSSL writes no empty records) or not bytes-like."""


class MessageTooLarge(InvalidMessage):
    """A message is larger than one DTLS record can carry at the current MTU."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds the cleartext MTU of {limit} bytes; "
            "split it, or raise the MTU if the path allows larger datagrams"
        )
        self.size = size
        self.limit = limit


class BufferTooSmall(InvalidMessage):
    """``recv_into``: the next message does not fit in the given buffer slice.

    The message stays queued; retry with a buffer of at least ``size`` bytes.
    """

    def __init__(self, size: int, available: int) -> None:
        super().__init__(
            f"the next message is {size} bytes but the buffer slice holds only {available}; "
            "it stays queued: call recv_into again with a larger buffer, or recv()"
        )
        self.size = size
        self.available = available


class DTLSTimeoutError(DTLSError, TimeoutError):
    """A call's own ``timeout`` ran out; the session itself is still usable."""


class ConnectionRefused(DTLSError, ConnectionRefusedError):
    """The peer's host answered that nothing listens on that port (ICMP port unreachable)."""


class ConcurrencyError(DTLSError, RuntimeError):
    """A channel was used concurrently in a way it does not support (two readers at once)."""


class TransportError(DTLSError, OSError):
    """The socket reported an error (unreachable network, datagram too large, ...)."""
