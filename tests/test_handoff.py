"""Hand-off of un-handshaken peers (issue 12, part 1): listener mode, SCM_RIGHTS passing,
``from_handoff`` in both flavours, and each race of the issue on real sockets.

Workers are threads of this process unless a test needs one to die: then it is a real process
(fds cross a Unix socket either way)."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtlskit
import dtlskit.handoff as handoff_mod
from dtlskit import sync
from dtlskit.certs import PKIFiles
from dtlskit.core.connection import DTLSConnection
from dtlskit.core.handoff import encode_handoff
from dtlskit.handoff import Handoff, HandoffListenerCore

WAIT = 20.0
SECRET = b"handoff test secret, 32 bytes.."


@pytest.fixture
def handoff_config(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, cookie_secret=SECRET)


@pytest.fixture
def client_cfg(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", handshake_timeout=WAIT
    )


def echo_worker(
    unix: socket.socket, config: dtlskit.DTLSConfiguration, ended: list[BaseException]
) -> None:
    """A worker thread: take hand-offs, finish each handshake, echo, record how it ended."""

    def serve(channel: sync.Channel) -> None:
        try:
            for message in channel:
                channel.send(message)
        except dtlskit.DTLSError as exc:
            ended.append(exc)
        finally:
            channel.close()

    while True:
        try:
            handoff = handoff_mod.receive(unix)
        except dtlskit.ConnectionLost:
            return
        try:
            channel = sync.from_handoff(handoff, config=config, timeout=WAIT)
        except dtlskit.DTLSError as exc:
            ended.append(exc)
            continue
        threading.Thread(target=serve, args=(channel,), daemon=True).start()


class Rig:
    """A sync hand-off listener whose accept loop runs on a thread and passes every peer to a
    route (by default: an echoing worker thread over a SOCK_SEQPACKET pair)."""

    def __init__(self, listener: sync.HandoffListener, config: dtlskit.DTLSConfiguration) -> None:
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.ended: list[BaseException] = []
        self.accepted: list[Handoff] = []
        self._main, self._worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.route: Callable[[Handoff], None] = lambda handoff: handoff.send(self._main)
        self._stop = threading.Event()
        self._worker_thread = threading.Thread(
            target=echo_worker, args=(self._worker, config, self.ended), daemon=True
        )
        self._worker_thread.start()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                handoff = self.listener.accept(timeout=0.2)
            except dtlskit.DTLSTimeoutError:
                continue
            except dtlskit.UsageError:
                return
            self.accepted.append(handoff)
            self.route(handoff)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        self._main.close()  # the worker sees the end of its Unix socket and returns
        self._worker_thread.join(5)
        self._worker.close()


@pytest.fixture
def rig_factory(handoff_config: dtlskit.DTLSConfiguration) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(host: str = "127.0.0.1", listener: sync.HandoffListener | None = None) -> Rig:
        rig = Rig(listener or sync.listen_handoff(host, 0, config=handoff_config), handoff_config)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def echo_once(host: str, port: int, config: dtlskit.DTLSConfiguration, **kw: Any) -> bytes:
    with sync.connect(host, port, config=config, timeout=WAIT, **kw) as channel:
        channel.send(b"ping")
        return channel.recv(timeout=WAIT)


# -- the round trip, both flavours ---------------------------------------------------------------


def test_sync_listener_hands_off_and_worker_finishes_handshake(rig_factory, client_cfg):
    rig = rig_factory()
    assert echo_once("127.0.0.1", rig.port, client_cfg) == b"ping"
    stats = rig.listener.statistics()
    assert stats.handed_off == 1 and stats.hello_verify_requests_sent == 1
    handoff = rig.accepted[0]
    with pytest.raises(dtlskit.UsageError, match="sent, detached or closed"):
        handoff.socket  # noqa: B018 - flyAway: the socket left this process


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_asyncio_listener_and_from_handoff(handoff_config, client_cfg, host):
    async def main() -> bytes:
        listener = await dtlskit.listen_handoff(host, 0, config=handoff_config)
        port = listener.getsockname()[1]
        main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        async def worker() -> None:
            handoff = await handoff_mod.receive_async(worker_end)
            channel = await dtlskit.from_handoff(handoff, config=handoff_config, timeout=WAIT)
            try:
                async for message in channel:
                    await channel.send(message[::-1])
            finally:
                channel.close()

        async def accept() -> None:
            (await listener.accept()).send(main_end)

        tasks = [asyncio.create_task(worker()), asyncio.create_task(accept())]
        try:
            async with dtlskit.connect(host, port, config=client_cfg, timeout=WAIT) as channel:
                await channel.send(b"abc")
                return await asyncio.wait_for(channel.recv(), WAIT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            listener.close()
            main_end.close()
            worker_end.close()

    assert asyncio.run(main()) == b"cba"


def test_ipv6_listener(rig_factory, client_cfg):
    rig = rig_factory("::1")
    assert echo_once("::1", rig.port, client_cfg) == b"ping"
    assert rig.accepted[0].local_address[0] == "::1"


@pytest.mark.parametrize(("wildcard", "target"), [("0.0.0.0", "127.0.0.2"), ("::", "::1")])
def test_wildcard_listener_binds_the_address_the_client_used(
    rig_factory, client_cfg, wildcard, target
):
    rig = rig_factory(wildcard)
    assert echo_once(target, rig.port, client_cfg.replace(server_hostname="localhost")) == b"ping"
    # The per-peer socket answers from the address the client sent to, not the wildcard.
    assert rig.accepted[0].local_address[0] == target


def test_detach_and_from_fd_rebuild_the_handoff(rig_factory, client_cfg, handoff_config):
    rig = rig_factory()

    def route(handoff: Handoff) -> None:
        fd, message = handoff.detach()  # flyAway: ours to pass on or close
        rebuilt = Handoff.from_fd(fd, message)
        assert rebuilt.peer_address[1] == handoff.peer_address[1]
        rebuilt.send(rig._main)

    rig.route = route
    assert echo_once("127.0.0.1", rig.port, client_cfg) == b"ping"


# -- races ---------------------------------------------------------------------------------------


def first_client_hello(port: int, config: dtlskit.DTLSConfiguration) -> bytes:
    engine = DTLSConnection(config, server=False, peer_address=("127.0.0.1", port))
    engine.connect(time.monotonic())
    (hello,) = engine.datagrams_to_send()
    return hello


def wait_readable(socks: list[socket.socket]) -> None:
    readable, _, _ = select.select(socks, [], [], WAIT)
    assert readable, "nothing arrived"


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_other_peers_datagrams_between_bind_and_connect_go_back_to_the_listener(
    rig_factory, client_cfg, handoff_config, host
):
    listener = sync.listen_handoff(host, 0, config=handoff_config)
    core: HandoffListenerCore = listener._core
    port = listener.getsockname()[1]
    others = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    for other in others:
        other.bind(("127.0.0.1", 0))
    hello = first_client_hello(port, client_cfg)
    fired: list[int] = []

    def in_the_window(sock: socket.socket) -> None:
        if fired:
            return
        fired.append(1)
        for other in others:
            other.sendto(hello, ("127.0.0.1", port))
        # At least one is on the new socket (a wildcard listener: all of them).
        wait_readable([sock])

    core._between_bind_and_connect = in_the_window  # type: ignore[method-assign]
    rig = rig_factory(listener=listener)
    assert echo_once("127.0.0.1", port, client_cfg) == b"ping"
    for other in others:  # every other peer got its HelloVerifyRequest, wherever it landed
        other.settimeout(WAIT)
        reply = other.recv(2048)
        assert reply[0] == 22 and reply[13] == 3  # handshake, hello_verify_request
        other.close()
    stats = rig.listener.statistics()
    assert stats.returned_to_listener >= 1
    if host == "0.0.0.0":
        assert stats.returned_to_listener == 16
    assert stats.hello_verify_requests_sent == 17


def test_retransmitted_client_hello_after_handoff_is_not_a_second_session(
    handoff_config, client_cfg
):
    listener = sync.listen_handoff("127.0.0.1", 0, config=handoff_config)
    port = listener.getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(("127.0.0.1", port))
    engine = DTLSConnection(client_cfg, server=False, peer_address=("127.0.0.1", port))
    engine.connect(time.monotonic())
    client.send(engine.datagrams_to_send()[0])
    core: HandoffListenerCore = listener._core
    wait_readable([core.sock])
    core.read(time.monotonic())  # answers the first ClientHello
    client.settimeout(WAIT)
    engine.receive_datagram(client.recv(2048), time.monotonic())
    (with_cookie,) = engine.datagrams_to_send()
    client.send(with_cookie)

    def in_the_window(sock: socket.socket) -> None:
        client.send(with_cookie)  # the retransmission races the hand-off's connect()
        wait_readable([sock, core.sock])

    core._between_bind_and_connect = in_the_window  # type: ignore[method-assign]
    with listener:
        handoff = listener.accept(timeout=WAIT)
        with pytest.raises(dtlskit.DTLSTimeoutError):
            listener.accept(timeout=0.5)
        stats = listener.statistics()
        assert stats.handed_off == 1
        assert stats.drops == {"duplicate_client_hello": 1}
        # The hand-off still works: the worker finishes the handshake with this client.
        channel_box: list[sync.Channel] = []
        thread = threading.Thread(
            target=lambda: channel_box.append(
                sync.from_handoff(handoff, config=handoff_config, timeout=WAIT)
            )
        )
        thread.start()
        deadline = time.monotonic() + WAIT
        while not engine.handshake_completed and time.monotonic() < deadline:
            for datagram in engine.datagrams_to_send():
                client.send(datagram)
            readable, _, _ = select.select([client], [], [], 0.5)
            if readable:
                engine.receive_datagram(client.recv(65536), time.monotonic())
            elif (timer := engine.get_timer()) is not None and time.monotonic() >= timer:
                engine.handle_timer(time.monotonic())
        for datagram in engine.datagrams_to_send():
            client.send(datagram)
        thread.join(WAIT)
        assert engine.handshake_completed and channel_box
        channel_box[0].close()
    client.close()


WORKER_SCRIPT = textwrap.dedent(
    """
    import socket, sys, time
    import dtlskit, dtlskit.handoff
    from dtlskit.core.connection import DTLSConnection
    fd, cert, key, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    unix = socket.socket(fileno=fd)
    handoff = dtlskit.handoff.receive(unix, timeout=30)
    if mode == "answer":  # send our first flight, then die before the rest
        config = dtlskit.DTLSConfiguration.server(cert, key)
        engine = DTLSConnection(config, server=True, peer_address=handoff.peer_address)
        engine.start_server(handoff.client_hello, time.monotonic())
        for datagram in engine.datagrams_to_send():
            handoff.socket.send(datagram)
    print("holding", flush=True)
    time.sleep(60)
    """
)


def start_dying_worker(tmp_path: Path, pki: PKIFiles, mode: str) -> tuple[Any, socket.socket]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(worker_end.fileno()),
            str(pki.server_cert),
            str(pki.server_key),
            mode,
        ],
        pass_fds=[worker_end.fileno()],
        stdout=subprocess.PIPE,
    )
    worker_end.close()
    return process, main_end


def test_worker_dies_before_answering_and_another_worker_takes_the_peer(
    rig_factory, client_cfg, tmp_path, pki
):
    rig = rig_factory()
    process, to_process = start_dying_worker(tmp_path, pki, "silent")
    thread_route = rig.route

    def route(handoff: Handoff) -> None:
        if len(rig.accepted) == 1:
            handoff.send(to_process)
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"holding"
            process.kill()  # dies holding the peer's socket, before any answer
            process.wait()
        else:
            thread_route(handoff)

    rig.route = route
    try:
        # The client's retransmitted ClientHello reaches the listener once the dead worker's
        # socket is gone, and is handed off again.
        assert echo_once("127.0.0.1", rig.port, client_cfg) == b"ping"
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
        to_process.close()
    stats = rig.listener.statistics()
    assert stats.handed_off == 2 and stats.handed_off_again == 1


def test_worker_dies_mid_handshake_then_client_reconnects_from_the_same_port(
    rig_factory, client_cfg, tmp_path, pki
):
    rig = rig_factory()
    process, to_process = start_dying_worker(tmp_path, pki, "answer")
    thread_route = rig.route

    def route(handoff: Handoff) -> None:
        if len(rig.accepted) == 1:
            handoff.send(to_process)
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"holding"
            process.kill()  # dies after its first flight
            process.wait()
        else:
            thread_route(handoff)

    rig.route = route
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    local = probe.getsockname()
    probe.close()
    try:
        # The client is past its ClientHello: nobody can finish this handshake.
        with pytest.raises(dtlskit.HandshakeTimeout):
            echo_once(
                "127.0.0.1", rig.port, client_cfg.replace(handshake_timeout=4.0), local_addr=local
            )
        # The listener served on; a new handshake from the same address and port works.
        assert echo_once("127.0.0.1", rig.port, client_cfg, local_addr=local) == b"ping"
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
        to_process.close()
    assert rig.listener.statistics().handed_off == 2


CLIENT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import dtlskit
    from dtlskit import sync
    port, ca = int(sys.argv[1]), sys.argv[2]
    config = dtlskit.DTLSConfiguration.client(cafile=ca, server_hostname="localhost")
    channel = sync.connect("127.0.0.1", port, config=config, timeout=20)
    channel.send(b"first")
    assert channel.recv(timeout=20) == b"first"
    print(channel.getsockname()[1], flush=True)
    os._exit(0)  # a client that restarts: no close_notify
    """
)


def test_client_restarts_from_the_same_port_while_its_session_lives(
    rig_factory, client_cfg, tmp_path, pki
):
    rig = rig_factory()
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(rig.port), str(pki.ca_cert)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    local_port = int(out.stdout.strip())
    # The worker still holds the old session's socket; the new ClientHello lands there, gets
    # its cookie from the worker, ends the old session, and the retry reaches the listener.
    assert (
        echo_once("127.0.0.1", rig.port, client_cfg, local_addr=("127.0.0.1", local_port))
        == b"ping"
    )
    assert any(
        isinstance(exc, dtlskit.ConnectionLost) and "replaced" in str(exc) for exc in rig.ended
    )
    assert rig.listener.statistics().handed_off == 2


# -- untrusted input on the receiving side -------------------------------------------------------


def connected_udp(port: int = 9) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", port))
    return sock


def hello_with_cookie(client_cfg: dtlskit.DTLSConfiguration, cookie: bytes) -> bytes:
    """A real first ClientHello with ``cookie`` put in its (empty) cookie field."""
    engine = DTLSConnection(client_cfg, server=False, peer_address=("127.0.0.1", 9))
    engine.connect(0.0)
    hello = engine.datagrams_to_send()[0]
    cookie_offset = 13 + 12 + 2 + 32 + 1 + hello[13 + 12 + 2 + 32]
    forged = bytearray(hello[:cookie_offset]) + bytes([len(cookie)]) + cookie
    forged += hello[cookie_offset + 1 :]
    for at, width in ((11, 2), (14, 3), (22, 3)):  # record, message and fragment lengths
        value = int.from_bytes(forged[at : at + width], "big") + len(cookie)
        forged[at : at + width] = value.to_bytes(width, "big")
    return bytes(forged)


def test_from_fd_refuses_bad_messages_and_descriptors(client_cfg):
    sock = connected_udp()
    local, peer = sock.getsockname(), sock.getpeername()
    # A ClientHello without a cookie was never validated by a listener.
    no_cookie = encode_handoff(local, peer, hello_with_cookie(client_cfg, b""))
    with pytest.raises(dtlskit.InvalidArgument, match="no cookie"):
        Handoff.from_fd(os.dup(sock.fileno()), no_cookie)
    message = encode_handoff(local, peer, hello_with_cookie(client_cfg, b"\x01" * 32))
    Handoff.from_fd(os.dup(sock.fileno()), message).close()  # the valid one is taken
    bad = [
        b"",
        b"XXXX" + message[4:],
        message[:4] + b"\x09" + message[5:],
        message[:-1],
        message + b"\x00",
        encode_handoff(local, (peer[0], peer[1] + 1), hello_with_cookie(client_cfg, b"\x01" * 32)),
        encode_handoff((local[0], local[1] + 1), peer, hello_with_cookie(client_cfg, b"\x01" * 32)),
    ]
    for blob in bad:
        fd = os.dup(sock.fileno())
        with pytest.raises(dtlskit.InvalidArgument):
            Handoff.from_fd(fd, blob)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed on failure
    read_end, write_end = os.pipe()
    os.close(write_end)
    with pytest.raises(dtlskit.InvalidArgument, match="not a socket"):
        Handoff.from_fd(read_end, message)
    unconnected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unconnected.bind(("127.0.0.1", 0))
    with pytest.raises(dtlskit.InvalidArgument, match="not connected"):
        Handoff.from_fd(unconnected.detach(), message)
    sock.close()


def test_receive_refuses_a_message_without_exactly_one_descriptor(client_cfg):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.send(b"DTKH" + b"\0" * 40)
    with pytest.raises(dtlskit.InvalidArgument, match="0 descriptors"):
        handoff_mod.receive(b, timeout=WAIT)
    one, two = connected_udp(), connected_udp()
    socket.send_fds(a, [b"x"], [one.fileno(), two.fileno()])
    with pytest.raises(dtlskit.InvalidArgument, match="2 descriptors"):
        handoff_mod.receive(b, timeout=WAIT)
    with pytest.raises(dtlskit.DTLSTimeoutError):
        handoff_mod.receive(b, timeout=0.2)
    a.close()
    with pytest.raises(dtlskit.ConnectionLost):
        handoff_mod.receive(b, timeout=WAIT)
    for s in (b, one, two):
        s.close()


def test_worker_rechecks_the_cookie_when_it_knows_the_secret(handoff_config, client_cfg):
    sock = connected_udp()
    forged = hello_with_cookie(client_cfg, b"\x01" * 32)
    handoff = Handoff.from_fd(
        os.dup(sock.fileno()), encode_handoff(sock.getsockname(), sock.getpeername(), forged)
    )
    with pytest.raises(dtlskit.HandshakeFailure, match="cookie_secret"):
        sync.from_handoff(handoff, config=handoff_config, timeout=5)
    sock.close()


def test_listener_arguments_and_closing(handoff_config):
    with pytest.raises(dtlskit.InvalidArgument, match="IP address"):
        sync.listen_handoff("localhost", 0, config=handoff_config)
    with pytest.raises(dtlskit.InvalidArgument, match="backlog"):
        sync.listen_handoff("127.0.0.1", 0, config=handoff_config, backlog=0)
    with pytest.raises(dtlskit.ConfigurationError):
        sync.listen_handoff("127.0.0.1", 0, config="nope")  # type: ignore[arg-type]
    listener = sync.listen_handoff("127.0.0.1", 0, config=handoff_config)
    listener.close()
    with pytest.raises(dtlskit.UsageError, match="closed"):
        listener.accept(timeout=1)

    async def main() -> None:
        listener = await dtlskit.listen_handoff("::1", 0, config=handoff_config)
        waiter = asyncio.create_task(listener.accept())
        await asyncio.sleep(0)
        listener.close()  # wakes the waiting accept()
        with pytest.raises(dtlskit.UsageError, match="closed"):
            await waiter

    asyncio.run(main())
