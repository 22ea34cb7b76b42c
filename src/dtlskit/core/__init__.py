"""The sans-I/O core of dtlskit: DTLS engines that take bytes and ``now`` and return datagrams,
events and deadlines. Nothing here opens a socket, starts a thread or reads a clock."""

from .connection import ConnectionStatistics, DTLSConnection, State
from .cookies import CookieJar
from .events import (
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
    MessageReceived,
    SessionClosed,
)
from .server import ServerEngine, ServerStatistics
from .session import Session

__all__ = [
    "ConnectionStatistics",
    "ConnectionTerminated",
    "CookieJar",
    "DTLSConnection",
    "Event",
    "HandshakeCompleted",
    "MessageReceived",
    "ServerEngine",
    "ServerStatistics",
    "Session",
    "SessionClosed",
    "State",
]
