"""The asyncio front end: DTLS clients and multi-client servers on an asyncio event loop.

``connect()`` opens a client :class:`Channel`; ``serve()`` runs a handler task per peer;
``listen()`` hands peers out through ``accept()``; ``run_server()`` is the blocking entry point,
optionally with ``SO_REUSEPORT`` worker processes. The blocking mirror image is
:mod:`dtlskit.sync`, with the same module and method names.
"""

from .._frontend.channel_base import SessionProtocol
from ..exceptions import BufferTooSmall
from .channel import Channel
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
