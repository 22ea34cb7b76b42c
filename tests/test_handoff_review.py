"""Reproducers of review B of the hand-off (issue 12, /work/briefs/review-handoff.md):
B-H1 accept(timeout=) under a flood, B-H2 an empty datagram on a SOCK_DGRAM Unix socket, B-H3
hello_verify_per_second in listener mode; and the reviewer's descriptor-accounting checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import dtlskit
import dtlskit.handoff as handoff_mod
from dtlskit import sync
from dtlskit.core.connection import DTLSConnection

SECRET = b"handoff test secret, 32 bytes.."


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


FLOOD = textwrap.dedent(
    """
    import socket, sys
    port, hello = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # drop the HelloVerifyRequests
    print("go", flush=True)
    for _ in range(400_000):
        try:
            s.sendto(hello, ("127.0.0.1", port))
        except OSError:
            pass
    """
)


def test_sync_accept_timeout_is_honoured_under_a_flood(pki):
    """B-H1: HandoffListener.accept(timeout=) only checks its deadline when select() finds the
    socket NOT readable. While a flood keeps the listening socket readable (ClientHellos
    without cookies, each answered by a HelloVerifyRequest), accept never raises
    DTLSTimeoutError: it returns only once the flood stops. Expected: the timeout fires
    while the flood is still going."""
    config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, cookie_secret=SECRET)
    client = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
    with sync.listen_handoff("127.0.0.1", 0, config=config) as listener:
        port = listener.getsockname()[1]
        engine = DTLSConnection(client, server=False, peer_address=("127.0.0.1", port))
        engine.connect(0.0)
        (hello,) = engine.datagrams_to_send()
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, str(port), hello.hex()], stdout=subprocess.PIPE, text=True
        )
        try:
            assert flood.stdout.readline().strip() == "go"
            with pytest.raises(dtlskit.DTLSTimeoutError):
                listener.accept(timeout=0.2)
            still_flooding = flood.poll() is None
            stats = listener.statistics()
        finally:
            flood.kill()
            flood.wait()
            flood.stdout.close()
        assert stats.hello_verify_requests_sent > 0
        assert still_flooding, (
            "accept(timeout=0.2) returned only after the flood of "
            f"{stats.datagrams_received} datagrams ended"
        )


def test_empty_datagram_on_a_dgram_unix_socket_is_not_end_of_stream():
    """B-H2: receive() reads an empty message without descriptors as "the other side closed
    the Unix socket" (ConnectionLost). On a SOCK_DGRAM Unix socket (which Handoff.send
    accepts) there is no end of stream: anyone who can write to it sends b"" and the worker
    believes its listener went away (the example's and the tests' workers then exit).
    Expected: InvalidArgument (a malformed hand-off, discarded), and the next hand-off is
    still received."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        a.send(b"")
        with pytest.raises(dtlskit.InvalidArgument):
            handoff_mod.receive(b, timeout=5)
    finally:
        a.close()
        b.close()


def test_no_descriptor_leak_over_many_bad_handoffs():
    """Descriptor accounting over 300 malformed hand-offs of every kind (passes on the tip:
    recorded so the owner can keep it)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    before = fds()
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        r, w = os.pipe()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        cases = [
            (b"DTKH", [tcp.fileno()]),
            (b"x" * 70000, [udp.fileno()]),  # oversized: truncated
            (b"DTKH\x01", [r]),
            (b"DTKH\x01", [udp.fileno()] * 5),  # more descriptors than the receiver has room for
            (b"DTKH\x01", [w, r]),
            (b"", [udp.fileno()]),
        ]
        for message, passed in cases:
            try:
                socket.send_fds(a, [message], passed)
            except OSError:
                continue  # too large for the socket: nothing was sent
            with pytest.raises(dtlskit.DTLSError):
                handoff_mod.receive(b, timeout=5)
        for f in (tcp, udp):
            f.close()
        os.close(r)
        os.close(w)
    assert fds() == before
    a.close()
    b.close()


def test_listener_honours_hello_verify_per_second(pki):
    """B-H3: listen_handoff's docstring says the configuration's "limits are used here", but
    the HandoffGate takes only max_client_hello_size: Limits.hello_verify_per_second (the
    operator's cap on cookie CPU/bandwidth, honoured by ServerEngine) is silently ignored.
    Deterministic: every datagram is read with the same `now`, so at most the burst (2) may be
    answered."""
    from dtlskit.handoff import HandoffListenerCore

    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        cookie_secret=SECRET,
        limits=dtlskit.Limits(hello_verify_per_second=1.0),
    )
    client = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
    core = HandoffListenerCore.bind("127.0.0.1", 0, config, 16)
    try:
        port = core.getsockname()[1]
        engine = DTLSConnection(client, server=False, peer_address=("127.0.0.1", port))
        engine.connect(0.0)
        (hello,) = engine.datagrams_to_send()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for _ in range(20):
                peer.sendto(hello, ("127.0.0.1", port))
            import select

            select.select([core.sock], [], [], 5)
            for _ in range(20):
                core.read(0.0)
        assert core.statistics().datagrams_received == 20
        assert core.statistics().hello_verify_requests_sent <= 2
    finally:
        core.close()


def _cookie_exchange(sock: socket.socket, port: int, client: dtlskit.DTLSConfiguration) -> None:
    """Drive a client engine through the cookie exchange and stop: its second ClientHello
    (with the cookie) reaches the listener, then the client goes silent for ever."""
    import select

    engine = DTLSConnection(client, server=False, peer_address=("127.0.0.1", port))
    engine.connect(time.monotonic())
    for data in engine.datagrams_to_send():
        sock.sendto(data, ("127.0.0.1", port))
    readable, _, _ = select.select([sock], [], [], 20)
    assert readable, "no HelloVerifyRequest"
    engine.receive_datagram(sock.recv(65536), time.monotonic())
    for data in engine.datagrams_to_send():
        sock.sendto(data, ("127.0.0.1", port))


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_workers_that_never_finish_leak_no_descriptor(pki, flavour):
    """30 hand-offs whose clients go silent after the cookie exchange, each finished by
    from_handoff with a short timeout (HandshakeTimeout): /proc/self/fd is back where it was."""
    import asyncio

    config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, cookie_secret=SECRET)
    client = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
    listener = sync.listen_handoff("127.0.0.1", 0, config=config)
    port = listener.getsockname()[1]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
    for c in clients:
        c.bind(("127.0.0.1", 0))
    before = fds()
    try:
        import threading

        handoffs: list = []
        done = threading.Event()

        def accept_loop() -> None:  # the sync listener answers only while accept() runs
            while not done.is_set() and len(handoffs) < len(clients):
                try:
                    handoffs.append(listener.accept(timeout=0.2))
                except dtlskit.DTLSTimeoutError:
                    continue

        acceptor = threading.Thread(target=accept_loop, daemon=True)
        acceptor.start()
        try:
            for c in clients:
                _cookie_exchange(c, port, client)
            acceptor.join(60)
        finally:
            done.set()
        assert len(handoffs) == len(clients)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for handoff in handoffs:
            handoff.send(a)
        received = [handoff_mod.receive(b, timeout=5) for _ in handoffs]
        a.close()
        b.close()
        if flavour == "sync":
            for handoff in received:
                with pytest.raises(dtlskit.HandshakeTimeout):
                    sync.from_handoff(handoff, config=config, timeout=0.3)
        else:

            async def finish() -> None:
                for handoff in received:
                    with pytest.raises(dtlskit.HandshakeTimeout):
                        await dtlskit.from_handoff(handoff, config=config, timeout=0.3)

            asyncio.run(finish())
        import gc

        gc.collect()
        assert fds() == before
        assert listener.statistics().handed_off == 30
    finally:
        listener.close()
        for c in clients:
            c.close()
