"""The threaded blocking server on real loopback sockets: many concurrent clients, a stalled
handshake, garbage datagrams, failing handlers, shutdown (close_notify, signals), no leaks."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest

import dtlskit
from dtlskit import sync
from dtlskit.core import DTLSConnection
from dtlskit.sync import Channel
from tests.helpers import WAIT, has_ipv6


def echo(channel: Channel) -> None:
    for message in channel:
        channel.send(message)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the bound")
        time.sleep(0.01)


def echo_once(port: int, config: dtlskit.DTLSConfiguration, message: bytes) -> bytes:
    with sync.connect("127.0.0.1", port, config=config, timeout=WAIT) as channel:
        channel.send(message)
        return channel.recv(timeout=WAIT)


def test_fifty_concurrent_clients(server_config, client_config) -> None:
    errors: list[tuple[int, BaseException]] = []
    done: list[int] = []
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        start = threading.Barrier(50)

        def client(index: int) -> None:
            rng = random.Random(index)
            try:
                start.wait(WAIT)
                with sync.connect("127.0.0.1", port, config=client_config, timeout=30) as ch:
                    for _ in range(5):
                        message = rng.randbytes(rng.randint(1, 1000))
                        ch.send(message)
                        echoed = ch.recv(timeout=30)
                        if echoed != message:
                            raise AssertionError(f"client {index}: echo differs")
                done.append(index)
            except BaseException as exc:
                errors.append((index, exc))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert sorted(done) == list(range(50))
        stats = server.statistics()
    assert stats.handshakes_completed == 50
    assert stats.handshakes_failed == 0


def stall_mid_handshake(port: int, config: dtlskit.DTLSConfiguration) -> socket.socket:
    """A client that passes the cookie exchange, receives the server's flight, then goes
    silent: the server holds a half-open association for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(WAIT)
    engine = DTLSConnection(config, server=False, peer_address=("127.0.0.1", port))
    engine.connect(time.monotonic())
    for datagram in engine.datagrams_to_send():
        sock.send(datagram)
    engine.receive_datagram(sock.recv(65536), time.monotonic())  # HelloVerifyRequest
    for datagram in engine.datagrams_to_send():  # ClientHello with the cookie
        sock.send(datagram)
    sock.recv(65536)  # the server's flight: an association now exists; never answer it
    return sock


def test_stalled_handshake_does_not_delay_others(server_config, client_config) -> None:
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with stall_mid_handshake(port, client_config):
            assert server.statistics().half_open == 1
            for index in range(5):
                assert echo_once(port, client_config, b"client %d" % index) == b"client %d" % index
            stats = server.statistics()
            assert stats.half_open == 1  # still stalled, and nobody waited for it
            assert stats.handshakes_completed == 5


def test_garbage_does_not_disturb_a_session(server_config, client_config) -> None:
    rng = random.Random(20240607)
    junk = [rng.randbytes(rng.choice((1, 5, 13, 40, 200, 1400))) for _ in range(150)]
    junk += [
        b"\x16\xfe\xfd" + bytes(8) + b"\x00\x05\x01\x00",  # ClientHello header, truncated
        b"\x16\xfe\xfd" + bytes(8) + b"\xff\xff" + bytes(30),  # huge length
        b"\x17\xfe\xfd\x00\x01" + bytes(6) + b"\x00\x20" + rng.randbytes(32),  # fake app data
        b"\x16\x03\x03" + bytes(8) + b"\x00\x10" + bytes(16),  # TLS, not DTLS
        b"",
    ]
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with (
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as channel,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sprayer,
            # A second handle on the established peer's socket: junk from its own address.
            socket.fromfd(channel.fileno(), socket.AF_INET, socket.SOCK_DGRAM) as spoofer,
        ):
            channel.send(b"before")
            assert channel.recv(timeout=WAIT) == b"before"
            expected = server.statistics().datagrams_received
            # In batches, each waited for: a burst would overflow the kernel's receive buffer,
            # and the loss of our own test message would prove nothing about dtlskit.
            for start in range(0, len(junk), 10):
                for datagram in junk[start : start + 10]:
                    sprayer.sendto(datagram, ("127.0.0.1", port))
                    spoofer.send(datagram)
                    expected += 2
                wait_until(lambda n=expected: server.statistics().datagrams_received >= n)
            for index in range(3):
                channel.send(b"after %d" % index)
                assert channel.recv(timeout=WAIT) == b"after %d" % index
            stats = server.statistics()
            assert stats.sessions == 1
            assert stats.handshakes_failed == 0
            assert stats.associations_created == 1
            dropped = stats.drops.get("not_client_hello", 0) + stats.drops.get(
                "malformed_client_hello", 0
            )
            assert dropped >= len(junk)  # every datagram from the sprayer, at least
            assert not channel.closed


def test_handler_that_raises_does_not_stop_the_server(
    server_config, client_config, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(channel: Channel) -> None:
        for message in channel:
            if message == b"boom":
                raise RuntimeError("handler exploded on purpose")
            channel.send(message)

    caplog.set_level(logging.ERROR, logger="dtlskit.server")
    with sync.serve(handler, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with (
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as doomed,
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as other,
        ):
            doomed.send(b"boom")
            # Only that peer's session ends, with a close_notify.
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                doomed.recv(timeout=WAIT)
            other.send(b"unaffected")
            assert other.recv(timeout=WAIT) == b"unaffected"
        assert echo_once(port, client_config, b"new peer") == b"new peer"
        assert server.is_serving()
    records = [r for r in caplog.records if r.name == "dtlskit.server"]
    assert any(r.exc_info and "handler exploded on purpose" in str(r.exc_info[1]) for r in records)


def test_a_bug_met_for_one_datagram_does_not_end_the_io_thread(
    server_config, client_config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception escaping the engine while one datagram is handled (a bug, injected here into
    our own demultiplexer) is logged and counted for each such datagram; the I/O thread serves
    every other peer on. (The asyncio twin is in tests/asyncio/test_server.py.)"""
    from dtlskit.core import ServerEngine

    bad_ports: set[int] = set()
    real_receive = ServerEngine._receive_other  # (a datagram off the fast path)

    def receive(self: ServerEngine, data: bytes, address: tuple, conn: object, now: float) -> None:  # type: ignore[type-arg]
        if address[1] in bad_ports:
            raise RuntimeError("injected engine bug")
        real_receive(self, data, address, conn, now)

    monkeypatch.setattr(ServerEngine, "_receive_other", receive)
    caplog.set_level(logging.ERROR, logger="dtlskit")
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with (
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as channel,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trigger,
        ):
            trigger.bind(("127.0.0.1", 0))
            bad_ports.add(trigger.getsockname()[1])
            received = server.statistics().datagrams_received
            for _ in range(3):
                trigger.sendto(b"\x16\xfe\xfd" + bytes(20), ("127.0.0.1", port))
            wait_until(lambda: server.statistics().drops.get("internal_error", 0) >= 3)
            channel.send(b"still served")
            assert channel.recv(timeout=WAIT) == b"still served"
            assert server.statistics().datagrams_received >= received + 1
        assert echo_once(port, client_config, b"new peer") == b"new peer"
        assert server.is_serving()
    assert any("internal error handling a datagram" in r.getMessage() for r in caplog.records)


def test_close_sends_close_notify_and_joins_handlers(server_config, client_config) -> None:
    finished = threading.Event()

    def handler(channel: Channel) -> None:
        try:
            echo(channel)
        finally:
            finished.set()

    server = sync.serve(handler, "127.0.0.1", 0, config=server_config)
    port = server.addresses[0][1]
    with sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as channel:
        channel.send(b"x")
        assert channel.recv(timeout=WAIT) == b"x"
        server.close()
        assert finished.is_set()  # close() joined the handler thread
        with pytest.raises(dtlskit.ConnectionClosedByPeer):
            channel.recv(timeout=WAIT)
    server.close()  # idempotent
    assert not server.is_serving()
    server.serve_forever()  # returns at once once closed
    assert server.sockets[0].fileno() == -1


def test_sigterm_closes_the_server(
    server_config, client_config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dtlskit.server")
    server = sync.serve(echo, "127.0.0.1", 0, config=server_config)
    restore = sync.install_signal_handlers(server)
    safety = threading.Timer(WAIT, server.close)  # never hang the suite if the handler is broken
    try:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        port = server.addresses[0][1]
        with sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as channel:
            channel.send(b"x")
            assert channel.recv(timeout=WAIT) == b"x"
            safety.start()
            killer = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
            killer.start()
            server.serve_forever()
            killer.join(WAIT)
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                channel.recv(timeout=WAIT)
    finally:
        safety.cancel()
        restore()
        server.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert any("SIGTERM received" in r.getMessage() for r in caplog.records)
    assert not [t for t in threading.enumerate() if t.name == "dtlskit-signal-close"]


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this host")
def test_all_interfaces_serves_both_families(server_config, client_config) -> None:
    with sync.serve(echo, None, 0, config=server_config) as server:
        families = {sock.family for sock in server.sockets}
        assert families == {socket.AF_INET, socket.AF_INET6}
        ports = {address[1] for address in server.addresses}
        assert len(ports) == 1
        port = ports.pop()
        for host in ("127.0.0.1", "::1"):
            with sync.connect(host, port, config=client_config, timeout=WAIT) as channel:
                channel.send(host.encode())
                assert channel.recv(timeout=WAIT) == host.encode()


def test_serve_argument_errors(server_config) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="fixed port"):
        sync.serve(echo, "127.0.0.1", 0, config=server_config, workers=2)
    with pytest.raises(dtlskit.ConfigurationError, match="workers"):
        sync.serve(echo, "127.0.0.1", 0, config=server_config, workers=0)
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with pytest.raises(dtlskit.TransportError, match="already in use"):
            sync.serve(echo, "127.0.0.1", port, config=server_config)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _cycle(server_config: dtlskit.DTLSConfiguration, client_config) -> None:
    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        channels = [
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) for _ in range(5)
        ]
        for index, channel in enumerate(channels):
            channel.send(b"%d" % index)
            assert channel.recv(timeout=WAIT) == b"%d" % index
        channels[0].close()  # one closes first, the others are closed by the server
    for channel in channels:
        with pytest.raises(dtlskit.ConnectionClosed):
            channel.recv(timeout=WAIT)
        channel.close()
    with sync.listen("127.0.0.1", 0, config=server_config) as lst:
        port = lst.getsockname()[1]
        with sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as channel:
            lst.accept(timeout=WAIT).close()
        sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT).close()


def test_no_leaked_fds_or_threads(server_config, client_config) -> None:
    _cycle(server_config, client_config)  # warm-up: lazy imports, OpenSSL initialisation
    fds = _fd_count()
    threads = set(threading.enumerate())
    _cycle(server_config, client_config)
    assert _fd_count() == fds
    assert set(threading.enumerate()) == threads


def test_run_server_serves_until_sigterm(pki, client_config, tmp_path):
    """sync.run_server mirrors asyncio's: serve, SIGTERM closes every session, exit code 0."""
    import sys

    from ..peers import free_udp_port, running

    port = free_udp_port()
    script = tmp_path / "serve.py"
    cert, key = str(pki.server_cert), str(pki.server_key)
    script.write_text(
        "import sys, dtlskit, dtlskit.sync\n"
        "def echo(ch):\n"
        "    for m in ch:\n"
        "        ch.send(m)\n"
        f"cfg = dtlskit.DTLSConfiguration.server({cert!r}, {key!r})\n"
        "print('starting', flush=True)\n"
        f"sys.exit(dtlskit.sync.run_server(echo, '127.0.0.1', {port}, config=cfg))\n"
    )
    with running([sys.executable, str(script)], ready="starting") as peer:
        channel = None
        for _ in range(50):  # bounded: the port is bound a moment after "starting"
            try:
                channel = sync.connect("127.0.0.1", port, config=client_config, timeout=10)
                break
            except dtlskit.ConnectionRefused:
                time.sleep(0.1)
        assert channel is not None, "the server never started listening"
        with channel:
            channel.send(b"ping")
            assert channel.recv(timeout=10) == b"ping"
            peer.process.send_signal(signal.SIGTERM)
            assert peer.process.wait(timeout=15) == 0
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                channel.recv(timeout=10)


def test_handler_threads_are_reused_and_end_at_close(server_config, client_config) -> None:
    """A handler thread whose handler returned takes the next peer (no thread start-up per
    handshake on the I/O thread); close() ends the idle ones."""
    idents: list[int] = []

    def handler(channel: sync.Channel) -> None:
        idents.append(threading.get_ident())
        for message in channel:
            channel.send(message)

    before = set(threading.enumerate())
    with sync.serve(handler, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        for round_ in range(3):
            with sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client:
                client.send(b"round %d" % round_)
                assert client.recv(timeout=WAIT) == b"round %d" % round_
            # The handler sees close_notify, returns, and its thread waits for the next peer.
            wait_until(lambda: server._peers._idle == 1)
    assert len(idents) == 3 and len(set(idents)) == 1
    wait_until(lambda: set(threading.enumerate()) <= before)
