"""Every error dtlskit raises, in one tree.

::

    DTLSError
    ├── ConfigurationError          (also ValueError) a setting, certificate, key or file is
    │                               missing, invalid or unloadable (also from dtlskit.certs)
    ├── InvalidArgument             (also ValueError and TypeError) a call's argument has a
    │                               wrong type or value (a timeout < 0, a recv_into offset, ...)
    ├── UsageError                  (also RuntimeError) a call that is not valid in the object's
    │                               current state (an engine started twice, a server reused, ...)
    ├── HandshakeError              the handshake did not complete
    │   ├── HandshakeTimeout        (also DTLSTimeoutError) the peer stayed silent past the deadline
    │   ├── CertificateVerificationError   a certificate was rejected; .reason is a
    │   │                                  VerificationReason (stable), the words are in the message
    │   └── HandshakeFailure        the peer or OpenSSL aborted: alert, no shared cipher, bad PSK
    ├── ConnectionClosed            the session is over; any further send/recv raises it
    │   ├── ConnectionClosedByPeer  the peer sent close_notify
    │   ├── ConnectionClosedLocally this side called close()
    │   └── ConnectionLost          ended abnormally: fatal alert, idle timeout, replaced, shutdown
    ├── InvalidMessage              (also ValueError) empty, not bytes, or does not fit
    │   ├── MessageTooLarge         a message does not fit in one DTLS record
    │   └── BufferTooSmall          recv_into: the next message does not fit the buffer given
    ├── DTLSTimeoutError            (also TimeoutError) a deadline ran out: a blocking call's own
    │   │                           timeout (the session is still usable), or ...
    │   └── HandshakeTimeout        ... the handshake's (the same class as above)
    ├── ConnectionRefused           (also ConnectionRefusedError) nothing listens at the address
    ├── ConcurrencyError            (also RuntimeError) two tasks or threads used one channel in a
    │                               way it cannot serve
    └── TransportError              (also OSError) the socket failed: unreachable, EMSGSIZE, ...

So ``except dtlskit.DTLSError`` catches every error dtlskit raises; the second bases keep code
written against the standard library's exceptions working. Foreign exceptions
(``OpenSSL.SSL.Error``, ``OSError``) are translated at one boundary per layer and chained with
``raise ... from exc``: no pyOpenSSL exception reaches a user.

:class:`VerificationReason` (not an exception) holds the stable values of
:attr:`CertificateVerificationError.reason`; they are ``str`` values, so
``error.reason == "hostname mismatch"`` and ``error.reason is VerificationReason.HOSTNAME_MISMATCH``
both hold for a certificate issued for another name.
"""

from __future__ import annotations

import enum

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
    "InvalidArgument",
    "InvalidMessage",
    "MessageTooLarge",
    "TransportError",
    "UsageError",
    "VerificationReason",
]


class DTLSError(Exception):
    """Base class of every exception dtlskit raises on purpose."""


class ConfigurationError(DTLSError, ValueError):
    """A configuration value is invalid, or a file it names cannot be loaded."""


class InvalidArgument(DTLSError, ValueError, TypeError):
    """An argument of a call has a wrong type or value (a negative timeout, a ``recv_into``
    offset outside the buffer, a read-only buffer, ...). Also a ``ValueError`` and a
    ``TypeError``, so code that catches either keeps working."""


class UsageError(DTLSError, RuntimeError):
    """A call that is not valid in the object's current state (a client engine started twice,
    a server started again after it stopped, ...). Also a ``RuntimeError``."""


class HandshakeError(DTLSError):
    """The handshake did not complete; no application data was exchanged."""


class VerificationReason(str, enum.Enum):
    """Why a certificate was rejected: the stable value of
    :attr:`CertificateVerificationError.reason` (each value is its words, a ``str``)."""

    HOSTNAME_MISMATCH = "hostname mismatch"
    """The peer's certificate is not for the expected host name (``server_hostname``)."""
    IP_ADDRESS_MISMATCH = "IP address mismatch"
    """The peer's certificate is not for the expected IP address."""
    EXPIRED = "certificate has expired"
    """A certificate of the chain is past its notAfter date."""
    NOT_YET_VALID = "certificate is not yet valid"
    """A certificate of the chain is before its notBefore date."""
    UNKNOWN_ISSUER = "unknown issuer"
    """The chain does not lead to a trusted CA (missing issuer, self-signed, wrong cafile)."""
    REVOKED = "certificate revoked"
    """A certificate of the chain was revoked."""
    INVALID = "invalid certificate"
    """Any other verification failure (bad signature, wrong purpose, malformed, ...)."""
    CERTIFICATE_REQUIRED = "certificate required"
    """The server requires a client certificate and the client sent none."""
    REJECTED_BY_PEER = "rejected by the peer"
    """The peer rejected *our* certificate; the alert it sent is in ``alert``."""
    UNVERIFIED_SESSION = "session made without verification"
    """A resumed session whose server certificate was never verified (refused)."""

    def __str__(self) -> str:
        return self.value


class DTLSTimeoutError(DTLSError, TimeoutError):
    """A deadline ran out. Raised as itself, a call's own ``timeout`` ran out and the session
    is still usable; as :class:`HandshakeTimeout`, the handshake did not complete in time."""


class HandshakeTimeout(HandshakeError, DTLSTimeoutError):
    """The peer did not complete the handshake before the handshake deadline."""


class CertificateVerificationError(HandshakeError):
    """A certificate was rejected.

    ``reason`` is a :class:`VerificationReason` (compare it to the members, or to their
    words); the message says the same in OpenSSL's words with the certificate's depth and
    subject. ``alert`` is the alert the peer sent when it rejected ours
    (``REJECTED_BY_PEER``), else None.
    """

    def __init__(
        self,
        message: str,
        reason: VerificationReason = VerificationReason.INVALID,
        *,
        alert: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = VerificationReason(reason)
        self.alert = alert


class HandshakeFailure(HandshakeError):
    """The handshake was aborted by a fatal alert (sent or received)."""

    def __init__(self, message: str, alert: str | None = None) -> None:
        super().__init__(message)
        self.alert = alert


class ConnectionClosed(DTLSError):
    """The session has ended; ``reason`` says how.

    QUIC (``dtlskit.quic``): ``error_code`` and ``reason_phrase`` are those of the
    CONNECTION_CLOSE (or RESET_STREAM) that ended it, when one did; else None."""

    def __init__(
        self,
        message: str,
        *,
        alert: str | None = None,
        error_code: int | None = None,
        reason_phrase: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = message
        self.alert = alert
        self.error_code = error_code
        self.reason_phrase = reason_phrase


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


class ConnectionRefused(DTLSError, ConnectionRefusedError):
    """The peer's host answered that nothing listens on that port (ICMP port unreachable)."""


class ConcurrencyError(DTLSError, RuntimeError):
    """A channel was used concurrently in a way it does not support (two readers at once)."""


class TransportError(DTLSError, OSError):
    """The socket reported an error (unreachable network, datagram too large, ...)."""
