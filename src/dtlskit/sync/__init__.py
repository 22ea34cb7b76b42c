"""Blocking DTLS: ``connect`` a client, ``serve`` one thread per peer, or ``listen``/``accept``.

The mirror image of :mod:`dtlskit.asyncio` (same module and method names; calls that wait take
a ``timeout`` instead of being coroutines)::

    from dtlskit import DTLSConfiguration, sync

    def echo(channel):
        for message in channel:
            channel.send(message)

    with sync.serve(echo, "::", 4433, config=server_cfg) as server:
        sync.install_signal_handlers(server)
        server.serve_forever()

    with sync.connect("localhost", 4433, config=client_cfg) as channel:
        channel.send(b"hello")
        print(channel.recv(timeout=5))

Each socket has one I/O thread that alone feeds its engine; user threads hand it work under a
lock per socket. See the docstring of :mod:`dtlskit.sync.channel`.
"""

from .._frontend.channel_base import SessionProtocol
from .channel import BufferTooSmall, Channel
from .client import connect
from .handoff import HandoffListener, from_handoff, listen_handoff
from .server import Listener, Server, install_signal_handlers, listen, run_server, serve

__all__ = [
    "BufferTooSmall",
    "Channel",
    "HandoffListener",
    "Listener",
    "Server",
    "SessionProtocol",
    "connect",
    "from_handoff",
    "install_signal_handlers",
    "listen",
    "listen_handoff",
    "run_server",
    "serve",
]
