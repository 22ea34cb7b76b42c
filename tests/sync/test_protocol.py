"""The callback handler style of the blocking flavour: a SessionProtocol per peer, called on
the socket's I/O thread, with no thread per peer."""

from __future__ import annotations

import threading

import pytest

import dtlskit
from dtlskit import sync
from tests.sync.test_route import WAIT, wait_until


class Echo(dtlskit.SessionProtocol):
    made: list[Echo] = []
    lost: list[BaseException | None] = []
    threads: set[str] = set()

    def connection_made(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.channel = channel
        Echo.made.append(self)

    def message_received(self, data: bytes) -> None:
        Echo.threads.add(threading.current_thread().name)
        if data == b"boom":
            raise RuntimeError("a handler bug")
        if data == b"send":
            self.channel.send(b"blocking send works on the I/O thread")
            return
        self.channel.send_nowait(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        Echo.lost.append(exc)


def test_protocol_echo_without_a_thread_per_peer(server_config, client_config):
    Echo.made, Echo.lost, Echo.threads = [], [], set()
    before = threading.active_count()
    with sync.serve(Echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        clients = [
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) for _ in range(5)
        ]
        try:
            for index, client in enumerate(clients):
                client.send(b"hello %d" % index)
                assert client.recv(timeout=WAIT) == b"hello %d" % index
            clients[0].send(b"send")
            assert clients[0].recv(timeout=WAIT) == b"blocking send works on the I/O thread"
            # 5 peers, 5 clients' I/O threads, and the server's one I/O thread: no peer threads.
            assert threading.active_count() == before + len(clients) + 1
            assert len(Echo.threads) == 1 and next(iter(Echo.threads)).startswith("dtlskit-server")
            clients[1].send(b"boom")  # a raising callback closes its own session only
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                clients[1].recv(timeout=WAIT)
            clients[2].send(b"still served")
            assert clients[2].recv(timeout=WAIT) == b"still served"
            clients[3].close()
            wait_until(lambda: len(Echo.lost) == 2)
            assert Echo.lost == [None, None]  # close_notify both times
        finally:
            for client in clients:
                client.close()
    assert len(Echo.made) == 5
