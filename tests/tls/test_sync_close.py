"""dtlskit.sync.tls: a closing server and a handler thread that holds its connection for a
moment (real loopback TCP, real OpenSSL).

A handler that has just written an echo may still hold its channel when the server closes
(descheduled before it released the lock, as happens on a loaded machine). The server used to
take any held channel for one blocked writing to a peer that does not read and shut its socket
down without close_notify: the client saw a truncated stream (ConnectionLost) instead of
ConnectionClosedByPeer. The handler here holds the channel on purpose, until the server is
inside its close of that channel, so the interleaving is certain rather than left to load.
"""

from __future__ import annotations

import threading

import pytest

import dtlskit
from dtlskit.sync import tls


def test_a_briefly_held_connection_still_gets_close_notify(server_config, client_config) -> None:
    closing = threading.Event()
    holding = threading.Event()

    def handler(channel: tls.Channel) -> None:
        original = channel._close_for_server

        def noted() -> None:
            closing.set()
            original()

        channel._close_for_server = noted  # type: ignore[method-assign]
        assert channel.recv(timeout=10) == b"hello"
        with channel._lock:  # holds the connection, writing nothing, until the server closes it
            holding.set()
            assert closing.wait(10)

    server = tls.serve(handler, "127.0.0.1", 0, config=server_config)
    try:
        client = tls.connect("127.0.0.1", server.port, config=client_config)
        client.send(b"hello")
        assert holding.wait(10)
        closer = threading.Thread(target=server.close)
        closer.start()
        closer.join(30)
        assert not closer.is_alive()
        assert closing.is_set()
        with pytest.raises(dtlskit.ConnectionClosedByPeer):
            client.recv(timeout=10)
        client.close()
    finally:
        server.close()
