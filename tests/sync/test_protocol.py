"""The callback handler style of the blocking flavour: a SessionProtocol per peer, called on
the socket's I/O thread, with no thread per peer."""

from __future__ import annotations

import sys
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


class StackDepth(dtlskit.SessionProtocol):
    depths: list[int] = []

    def connection_made(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.channel = channel

    def message_received(self, data: bytes) -> None:
        self.channel.send_nowait(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        frame, depth = sys._getframe(), 0
        while frame is not None:
            frame, depth = frame.f_back, depth + 1
        StackDepth.depths.append(depth)


def test_closing_a_server_ends_its_sessions_one_after_another_not_nested(
    server_config, client_config
):
    """Closing a callback-style server ends each session; each ended channel closes itself.
    That close must not start a drain nested in the running one: the stack grew by a few
    frames per session and 1,000 sessions overflowed it (RecursionError in ``close``)."""
    StackDepth.depths = []
    with sync.serve(StackDepth, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        clients = [
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) for _ in range(6)
        ]
        for client in clients:
            client.send(b"ping")
            assert client.recv(timeout=WAIT) == b"ping"
    for client in clients:
        client.close()
    assert len(StackDepth.depths) == 6
    assert len(set(StackDepth.depths)) == 1, StackDepth.depths


class ThreeThenClose(dtlskit.SessionProtocol):
    """Several replies per message, then (for b"last") a close: the replies collected while the
    batch was read must leave before the close_notify the close sends."""

    def connection_made(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.channel = channel

    def message_received(self, data: bytes) -> None:
        for index in range(3):
            self.channel.send_nowait(data + b"-%d" % index)
        if data == b"blocking":
            self.channel.send(b"blocking-sent")
        if data == b"last":
            self.channel.close()


def test_protocol_replies_keep_their_order_before_a_close(server_config, client_config):
    with sync.serve(ThreeThenClose, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client:
            client.send(b"blocking")
            for index in range(3):
                assert client.recv(timeout=WAIT) == b"blocking-%d" % index
            assert client.recv(timeout=WAIT) == b"blocking-sent"
            client.send(b"last")
            for index in range(3):
                assert client.recv(timeout=WAIT) == b"last-%d" % index
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                client.recv(timeout=WAIT)
        assert server.statistics().drops.get("send_failed", 0) == 0


class Burst(dtlskit.SessionProtocol):
    def connection_made(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.channel = channel

    def message_received(self, data: bytes) -> None:
        for index in range(int(data)):
            self.channel.send_nowait(b"%d" % index)


def test_client_reads_a_burst_in_batches_in_order(server_config, client_config):
    """The blocking client reads its socket in batches (recvmmsg with the accelerator): a burst
    of replies larger than one batch arrives whole and in order."""
    with sync.serve(Burst, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client:
            client.send(b"150")
            assert [client.recv(timeout=WAIT) for _ in range(150)] == [
                b"%d" % index for index in range(150)
            ]
            assert client.statistics().drops == {}
        assert server.statistics().drops == {}
