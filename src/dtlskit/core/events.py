"""Events an engine reports, in the order they happened. Frozen; named in the past tense.

The I/O layers drain them with ``next_event()`` after every call that feeds the engine, and turn
the terminal ones (:class:`SessionClosed`, :class:`ConnectionTerminated`) into exceptions on
the user's next call.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import DTLSError

__all__ = [
    "ENDED",
    "ConnectionTerminated",
    "Event",
    "HandshakeCompleted",
    "MessageReceived",
    "SessionClosed",
]


@dataclass(frozen=True)
class Event:
    """Base class of engine events."""


@dataclass(frozen=True)
class HandshakeCompleted(Event):
    """The handshake finished; application data may flow."""

    version: str
    """Negotiated protocol version, e.g. ``"DTLSv1.2"``."""

    cipher: str
    """Negotiated cipher suite (OpenSSL name)."""

    session_reused: bool
    """Whether an earlier session was resumed instead of a full handshake."""


@dataclass(frozen=True)
class MessageReceived(Event):
    """One application datagram arrived, decrypted and authenticated."""

    data: bytes
    """The message, exactly as the peer sent it."""


@dataclass(frozen=True)
class SessionClosed(Event):
    """The session ended cleanly with close_notify. (Named apart from the exception
    :class:`dtlskit.ConnectionClosed`, which is what a user sees raised after it.)"""

    by_peer: bool
    """True when the peer sent close_notify, False when this side called ``close()``."""

    alert: str | None = None
    """Name of the alert that closed it (``"close notify"``), when one was exchanged."""


@dataclass(frozen=True)
class ConnectionTerminated(Event):
    """The session ended abnormally; ``error`` says why and is what the user will see raised."""

    error: DTLSError
    """The exception the I/O layer raises on the next call (a HandshakeError or ConnectionLost)."""


ENDED: tuple[type[Event], ...] = (SessionClosed, ConnectionTerminated)
"""The events that end a session, for ``isinstance`` (a tuple: ``SessionClosed |
ConnectionTerminated`` builds a union object on every check, ~0.5 us)."""
