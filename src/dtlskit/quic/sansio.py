"""The sans-I/O QUIC layer, public: drive it from your own loop (``select()``, a GUI, ...).

::

    engine = dtlskit.quic.sansio.server_engine(config)      # one per server socket
    session = engine.receive_datagram(data, address, now)   # route one datagram
    for datagram, address in session.datagrams_to_send(now): sock.sendto(datagram, address)
    deadline = session.get_timer()                          # call session.handle_timer(now) then

    session = dtlskit.quic.sansio.client_session(config, server_name="localhost", now=now)
    session.connect(address, now)

The verbs are aioquic's, with our semantics on top (:class:`QuicSession`: messages as streams,
claimed streams, datagrams, bounds, errors from :mod:`dtlskit.exceptions`). After every input or
user verb, send ``datagrams_to_send(now)`` and re-arm the timer. ``examples/quic_echo_server.py``
is seed 002's ``select()``-driven non-blocking echo server written this way.
"""

from __future__ import annotations

from typing import Any

from ..config import DTLSConfiguration
from ._config import quic_configuration
from ._engine import QuicServerEngine, QuicSession, QuicStatistics, StreamError

__all__ = [
    "QuicServerEngine",
    "QuicSession",
    "QuicStatistics",
    "StreamError",
    "client_session",
    "server_engine",
]


def server_engine(
    config: DTLSConfiguration, *, datagrams: bool = False, max_stream_bytes: int | None = None
) -> QuicServerEngine:
    """A server's demultiplexer for one socket (``config``: a server configuration with ALPN)."""
    quic, settings = quic_configuration(
        config, server=True, datagrams=datagrams, max_stream_bytes=max_stream_bytes
    )
    return QuicServerEngine(lambda: quic, settings, session_tickets=config.session_tickets)


def client_session(
    config: DTLSConfiguration,
    *,
    server_name: str,
    now: float,
    datagrams: bool = False,
    max_stream_bytes: int | None = None,
    session: Any = None,
) -> QuicSession:
    """A client connection, not yet started: call ``connect(address, now)`` on it."""
    from aioquic.quic.connection import QuicConnection

    quic, settings = quic_configuration(
        config,
        server=False,
        server_name=server_name,
        datagrams=datagrams,
        max_stream_bytes=max_stream_bytes,
        session_ticket=session,
    )
    box: list[QuicSession] = []

    def on_ticket(ticket: Any) -> None:
        if box:
            box[0].session_ticket = ticket

    result = QuicSession(
        QuicConnection(configuration=quic, session_ticket_handler=on_ticket),
        settings,
        server=False,
        now=now,
    )
    box.append(result)
    return result
