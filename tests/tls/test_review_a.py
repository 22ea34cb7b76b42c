"""Adversarial review A of issue 10 (TLS over TCP): its reproducers, kept as regression tests.

Self-contained (uses the suite's `server_config` / `client_config` fixtures from
tests/conftest.py): drop into tests/tls/. Real sockets on loopback, real OpenSSL on both ends.
Each test FAILS on branch `tls` as reviewed (7fbbebd + working tree at 16:20 UTC) unless said
otherwise. No assertion on timing: the only waits are bounded loops on observable state, and
waiting for an idle deadline (set small in the configuration) to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest

import dtlskit
import dtlskit.tls
from dtlskit.config import Limits
from dtlskit.core.tls import TLSConnection
from dtlskit.sync import tls

WAIT = 10.0


def raw_tls_client(port: int, config: dtlskit.DTLSConfiguration):
    """Our engine over a plain socket: the test sends exactly what it wants, reads nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    engine = TLSConnection(config, server=False)
    engine.connect(time.monotonic())
    while not engine.handshake_completed:
        sock.sendall(engine.data_to_send())
        data = sock.recv(65536)
        assert data, "the server closed during the handshake"
        engine.receive_data(data, time.monotonic())
    sock.sendall(engine.data_to_send())
    return sock, engine


def push_until_full(sock: socket.socket, engine: TLSConnection) -> int:
    """Send application data and never read, until the kernel buffers on both sides are full
    (our non-blocking send stops making progress)."""
    sock.setblocking(False)
    sent = stalls = 0
    for _ in range(20000):
        engine.send(b"z" * 16384)
        out = engine.data_to_send()
        view = memoryview(out)
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                n = 0
            except OSError:  # the server gave up on us (reset): also fine for these tests
                return sent
            if n == 0:
                stalls += 1
                if stalls > 50:
                    return sent
                time.sleep(0.01)  # (the kernel's buffers, not an ordering of events)
                continue
            sent += n
            view = view[n:]
    return sent


# -- H-T1: sync server: a non-reading client freezes the accept thread --------------------------


def test_sync_server_keeps_accepting_when_a_client_never_reads(server_config, client_config):
    """The echo handler's send() blocks in sendall (no timeout) holding channel._lock. At the
    idle deadline the accept thread's sweep calls channel._expire(), which takes the same lock:
    the accept thread blocks for good and no other client is ever accepted."""
    cfg = server_config.replace(idle_timeout=0.3)

    def handler(channel: tls.Channel) -> None:
        for data in channel:
            channel.send(data)

    with tls.serve(handler, "127.0.0.1", 0, config=cfg) as server:
        sock, engine = raw_tls_client(server.port, client_config)
        push_until_full(sock, engine)
        for stuck in list(server._channels):  # (none left if the server already gave up)
            deadline = stuck._engine.get_timer()
            while deadline is not None and time.monotonic() < deadline + 0.5:
                time.sleep(0.05)  # the idle deadline passes
        for i in range(2):
            with tls.connect("127.0.0.1", server.port, config=client_config, timeout=5) as good:
                good.send(b"served %d" % i)
                assert good.recv(timeout=WAIT) == b"served %d" % i
        sock.close()


# -- M-T1: asyncio: a non-reading client survives its idle timeout, past max_sessions ------------


def test_asyncio_server_frees_connections_of_peers_that_never_read(server_config, client_config):
    """At the idle deadline the server writes close_notify and calls transport.close(), which
    waits for the write buffer to drain: with a peer that never reads it never does. The gate
    releases the slot, so such zombies (socket, buffers, engine, and the handler task stuck in
    `await send`) pile up beyond limits.max_sessions."""
    cfg = server_config.replace(idle_timeout=0.3, limits=Limits(max_sessions=2))

    async def main() -> None:
        async def handler(channel: dtlskit.tls.Channel) -> None:
            async for data in channel:
                await channel.send(data)

        async with dtlskit.tls.serve(handler, "127.0.0.1", 0, config=cfg) as server:
            loop = asyncio.get_running_loop()
            socks = []
            for _ in range(6):
                sock, engine = await loop.run_in_executor(
                    None, raw_tls_client, server.port, client_config
                )
                await loop.run_in_executor(None, push_until_full, sock, engine)
                socks.append(sock)
                for _ in range(400):  # its idle timeout ends it (counted) before the next
                    if server.statistics().connections < 2:
                        break
                    await asyncio.sleep(0.05)
            for _ in range(400):  # (20 s: more than CLOSE_GRACE on the tip)
                if len(server._tasks) <= 2:
                    break
                await asyncio.sleep(0.05)
            # Every connection the server still holds in any way is one it counts.
            assert len(server._tasks) <= 2, (len(server._tasks), server.statistics())
            for sock in socks:
                sock.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# -- M-T2: asyncio framed: zero-length frames are never counted -----------------------------------


def test_asyncio_zero_length_frames_are_bounded(server_config, client_config):
    """Received counts bytes; a 4-byte frame header with length 0 adds a message of 0 bytes, so
    `received.size` never passes max_queued_bytes and reading never pauses: a client queues
    an unbounded number of messages at a listener (or any handler not calling recv)."""

    async def main() -> None:
        async with dtlskit.tls.listen(
            "127.0.0.1", 0, config=server_config, framing="length-prefixed"
        ) as listener:
            loop = asyncio.get_running_loop()
            sock, engine = await loop.run_in_executor(
                None, raw_tls_client, listener.port, client_config
            )

            def flood() -> None:
                for _ in range(400):  # 1.6 M empty frames, 6.5 MB on the wire
                    engine.send(b"\0\0\0\0" * 4096)
                    sock.sendall(engine.data_to_send())

            flooding = loop.run_in_executor(None, flood)
            channel = await listener.accept(timeout=WAIT)
            done, _ = await asyncio.wait({flooding}, timeout=20)
            for _ in range(100):  # let the server read what it is going to read
                await asyncio.sleep(0.02)
            limit = server_config.limits.max_queued_bytes
            # bounded: no more messages than the byte limit allows (at least 1 byte each)
            assert channel.pending() <= limit, channel.pending()
            sock.close()
            if not done:
                await asyncio.wait({flooding}, timeout=5)

    asyncio.run(asyncio.wait_for(main(), 60))


# -- M-T3: asyncio reads longer than limits.max_queued_bytes hang forever --------------------------


@pytest.mark.parametrize("reader", ["read_exactly", "read_until_eof", "read_until"])
def test_asyncio_reads_longer_than_the_queue_limit_complete(server_config, client_config, reader):
    """The protocol pauses reading past max_queued_bytes (1 MiB) and resumes only when the
    buffer falls below it, but read_exactly(n)/read_until_eof()/read_until(limit=...) take
    nothing until they can return everything: a 2 MiB body deadlocks (default limits)."""
    size = 2 * 1024 * 1024

    async def main() -> None:
        async def handler(channel: dtlskit.tls.Channel) -> None:
            await channel.send(b"B" * size + b"\n")
            channel.close()

        async with (
            dtlskit.tls.serve(handler, "127.0.0.1", 0, config=server_config) as server,
            dtlskit.tls.connect("127.0.0.1", server.port, config=client_config) as channel,
        ):
            if reader == "read_exactly":
                read = channel.read_exactly(size + 1)
            elif reader == "read_until_eof":
                read = channel.read_until_eof()
            else:
                read = channel.read_until(b"\n", limit=4 * size)
            data = await asyncio.wait_for(read, 20)
            assert len(data) == size + 1

    asyncio.run(asyncio.wait_for(main(), 60))


# -- L-T1: a connection reset during the handshake: "stream truncated" in asyncio -----------------


def _resetting_server() -> tuple[socket.socket, threading.Thread]:
    """A TCP server that reads the ClientHello, then resets the connection (SO_LINGER 0)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def run() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            conn.settimeout(WAIT)
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, thread


def test_connection_reset_during_handshake_is_a_handshake_error_in_both_flavours(client_config):
    """Blocking client: HandshakeFailure ("closed the TCP connection during the handshake").
    asyncio client: ConnectionLost "... was lost: [Errno 104] ... (the stream was truncated)",
    because TLSProtocol.connection_lost aborts the engine the same way in every state."""
    listener, thread = _resetting_server()
    port = listener.getsockname()[1]
    with pytest.raises(dtlskit.DTLSError) as sync_error:
        tls.connect("127.0.0.1", port, config=client_config, timeout=5)

    async def attempt() -> None:
        async with dtlskit.tls.connect("127.0.0.1", port, config=client_config, timeout=5):
            pass

    with pytest.raises(dtlskit.DTLSError) as async_error:
        asyncio.run(attempt())
    thread.join(WAIT)
    listener.close()
    assert isinstance(sync_error.value, dtlskit.HandshakeFailure), sync_error.value
    assert isinstance(async_error.value, dtlskit.HandshakeFailure), async_error.value
    assert "truncated" not in str(async_error.value)


# -- H-T2: TLS 1.3 KeyUpdate requests from a peer that never reads: unbounded write buffer -------

_KEYUPDATE_CLIENT = r"""
import ctypes, select, socket, sys
ssl = ctypes.CDLL("libssl.so.3")
ssl.TLS_client_method.restype = ctypes.c_void_p
ssl.SSL_CTX_new.restype = ctypes.c_void_p; ssl.SSL_CTX_new.argtypes = [ctypes.c_void_p]
ssl.SSL_new.restype = ctypes.c_void_p; ssl.SSL_new.argtypes = [ctypes.c_void_p]
ssl.SSL_set_fd.argtypes = [ctypes.c_void_p, ctypes.c_int]
ssl.SSL_connect.argtypes = [ctypes.c_void_p]
ssl.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
ssl.SSL_do_handshake.argtypes = [ctypes.c_void_p]
ssl.SSL_get_error.argtypes = [ctypes.c_void_p, ctypes.c_int]
port, count = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # and never read
h = ssl.SSL_new(ssl.SSL_CTX_new(ssl.TLS_client_method()))
ssl.SSL_set_fd(h, s.fileno())
assert ssl.SSL_connect(h) == 1
s.setblocking(False)
sent = 0
while sent < count:
    if ssl.SSL_key_update(h, 1) != 1:   # SSL_KEY_UPDATE_REQUESTED
        break
    while ssl.SSL_do_handshake(h) != 1:  # sends it
        if not select.select([], [s], [], 3.0)[1]:
            print(sent, flush=True)        # the server stopped reading us: done
            sys.exit(0)
    sent += 1
print(sent, flush=True)
"""


def test_asyncio_server_write_buffer_stays_bounded_under_keyupdate_requests(server_config):
    """Each KeyUpdate(update_requested) the server reads makes OpenSSL write a KeyUpdate back;
    TLSProtocol.flush() writes it to the transport whatever its buffer holds and keeps
    reading, and every read pushes the idle deadline back. A client that sends 250,000-400,000 of
    them (10 MB) and reads nothing grows the server's transport buffer without bound (6.3 MB
    measured, linear in what it sends; any client that completes a handshake can do it)."""
    import subprocess
    import sys

    bound = server_config.limits.max_queued_bytes  # 1 MiB: what one connection may pin

    async def main() -> int:
        async def handler(channel: dtlskit.tls.Channel) -> None:
            async for _ in channel:  # reads, never writes
                pass

        async with dtlskit.tls.serve(handler, "127.0.0.1", 0, config=server_config) as server:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _KEYUPDATE_CLIENT,
                str(server.port),
                "250000",
                stdout=subprocess.PIPE,
            )
            peak = 0
            while proc.returncode is None:
                for protocol in list(server._protocols):
                    if protocol.transport is not None:
                        peak = max(peak, protocol.transport.get_write_buffer_size())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), 0.05)
            await proc.communicate()
            return peak

    peak = asyncio.run(asyncio.wait_for(main(), 120))
    assert peak <= bound, f"{peak} bytes buffered for a peer that reads nothing"


# -- M-T4 / H-T3: the quadratic stream buffer: see tests/tls/test_received.py (count-based, on
# the rewritten buffer; the reviewer's versions patched the first version's internals) --------


# -- M-T5: blocking client: recv(timeout=...) never returns against a server that never reads ----

_KEYUPDATE_SERVER = r"""
import ctypes, select, socket, sys
ssl = ctypes.CDLL("libssl.so.3")
ssl.TLS_server_method.restype = ctypes.c_void_p
ssl.SSL_CTX_new.restype = ctypes.c_void_p; ssl.SSL_CTX_new.argtypes = [ctypes.c_void_p]
ssl.SSL_CTX_use_certificate_chain_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
ssl.SSL_CTX_use_PrivateKey_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
ssl.SSL_new.restype = ctypes.c_void_p; ssl.SSL_new.argtypes = [ctypes.c_void_p]
ssl.SSL_set_fd.argtypes = [ctypes.c_void_p, ctypes.c_int]
ssl.SSL_accept.argtypes = [ctypes.c_void_p]
ssl.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
ssl.SSL_do_handshake.argtypes = [ctypes.c_void_p]
cert, key, count = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3])
ctx = ssl.SSL_CTX_new(ssl.TLS_server_method())
assert ssl.SSL_CTX_use_certificate_chain_file(ctx, cert) == 1
assert ssl.SSL_CTX_use_PrivateKey_file(ctx, key, 1) == 1
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(1)
print(lst.getsockname()[1], flush=True)
conn, _ = lst.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
h = ssl.SSL_new(ctx); ssl.SSL_set_fd(h, conn.fileno())
assert ssl.SSL_accept(h) == 1
conn.setblocking(False)
sent = 0
while sent < count:
    if ssl.SSL_key_update(h, 1) != 1:
        break
    while ssl.SSL_do_handshake(h) != 1:
        if not select.select([], [conn], [], 3.0)[1]:
            print("stopped: the client stopped reading at", sent, flush=True)
            select.select([], [], [], 30)
            sys.exit(0)
    sent += 1
print("sent", sent, flush=True)
select.select([], [], [], 30)
"""


def test_sync_client_recv_timeout_holds_against_a_server_that_never_reads(pki, client_config):
    """The hostile server (system libssl via ctypes) sends TLS 1.3 KeyUpdate requests and never
    reads. The blocking client's recv(timeout=3) reads them inside _pump(); OpenSSL answers each;
    _flush_locked() writes the answers with sendall() and no deadline, under the channel lock:
    once the kernel buffers are full it blocks for good, so recv never returns (still blocked
    after 40 s in tls_probe11.py). The server's handler threads have the idle sweep; a client
    has nothing. recv must return (DTLSTimeoutError, or the connection's end) in bounded time."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KEYUPDATE_SERVER,
            str(pki.server_cert),
            str(pki.server_key),
            "400000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        channel = tls.connect("127.0.0.1", port, config=client_config, timeout=5)
        outcome: list[object] = []

        def reader() -> None:
            try:
                channel.recv(timeout=3)
                outcome.append("data")
            except dtlskit.DTLSError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(30)  # a bound on the wait (3 s asked), not a timing assertion
        assert not thread.is_alive(), "recv(timeout=3) still blocked after 30 s"
        assert outcome and isinstance(outcome[0], dtlskit.DTLSError), outcome
        channel.close()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- L-T2: blocking server: a thread that cannot start kills the accept thread ---------------------


def test_sync_server_survives_a_client_thread_that_cannot_start(
    server_config, client_config, monkeypatch
):
    """Server._accept_from() calls thread.start() unguarded: when the OS refuses a thread
    (RuntimeError "can't start new thread": a container's pids.max, RLIMIT_NPROC, memory for
    stacks; a server admits up to max_sessions = 10,000 threads by default) the exception ends
    the accept thread, and the server never accepts again while it still looks up
    (is_serving()). The refusal is simulated here for one connection (the OS's answer, not a
    socket's or OpenSSL's). Expected: that connection is refused and counted, later ones
    served."""
    real_start = threading.Thread.start
    refused = []

    def start(self):
        if self.name.startswith("dtlskit-tls ") and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        return real_start(self)

    def handler(channel: tls.Channel) -> None:
        for data in channel:
            channel.send(data)

    with tls.serve(handler, "127.0.0.1", 0, config=server_config) as server:
        monkeypatch.setattr(threading.Thread, "start", start)
        victim = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        for _ in range(500):
            if refused:
                break
            time.sleep(0.01)
        assert refused
        with tls.connect("127.0.0.1", server.port, config=client_config, timeout=5) as good:
            good.send(b"still accepting")
            assert good.recv(timeout=WAIT) == b"still accepting"
        victim.close()


# -- M-T7: read_until with another separator after a failed search --------------------------------


def test_sync_read_until_another_separator_after_a_timeout(server_config, client_config):
    """The same over real sockets: read_until(b"\\r\\n", timeout=1) times out (the connection
    stays usable, as documented), then read_until(b"\\n") must return b"ab\\n"."""

    def handler(channel: tls.Channel) -> None:
        channel.send(b"ab\ncd")
        with contextlib.suppress(dtlskit.DTLSError):
            channel.read_until_eof()  # until the client leaves

    with (
        tls.serve(handler, "127.0.0.1", 0, config=server_config) as server,
        tls.connect("127.0.0.1", server.port, config=client_config) as channel,
    ):
        while channel.pending() < 5:  # both lines' bytes are here
            with contextlib.suppress(dtlskit.DTLSTimeoutError):
                channel.read_until(b"\r\n", timeout=0.2)
        with pytest.raises(dtlskit.DTLSTimeoutError):
            channel.read_until(b"\r\n", timeout=0.2)
        assert channel.read_until(b"\n", timeout=3) == b"ab\n"
