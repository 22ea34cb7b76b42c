"""Server instructions per new handshake and per echoed message, counted by callgrind.

CPU time on a shared machine moves with whatever else runs (caches, frequency, other
processes); instruction counts do not. This script counts, with ``valgrind --tool=callgrind``,
only the instructions the *server* executes (user space: the kernel's share of a system call
is not counted):

* each server step runs inside a ctypes callback, and callgrind collects only inside it
  (``--collect-atstart=no --toggle-collect=closure_fcn``);
* each figure is the difference between a short and a long run, divided by the extra
  handshakes or messages, so start-up, imports and the warm-up cancel out.

Handshakes (in memory, client: raw pyOpenSSL, not counted):

* ``floor``: the minimal pyOpenSSL server of ``dtlskit bench`` (same context options, no
  cookies), per handshake including the client's close_notify;
* ``dtlskit``: a :class:`~dtlskit.core.ServerEngine` (stateless cookie exchange included), its
  output, events and timer read as a driver does.

Echo (64-byte messages, 32 per round, on loopback, one asyncio process; the client is raw
pyOpenSSL on its own socket, not counted): the server's read handler (``on_readable``) for
``dtlskit.asyncio.serve`` with the callback and the iterator styles (the iterator's handler
task runs outside ``on_readable`` and is not counted: that row shows the read side only), and a
plain UDP reader draining up to 64 datagrams (user-space instructions only: most of its cost is
in the kernel, so no ratio is drawn against it).

    python benchmarks/instructions.py [--handshakes 60] [--rounds 40]
    python benchmarks/instructions.py --cpu-time   # the handshake cases in CPU time, no valgrind

Each dtlskit figure is measured with the accelerator as installed and with
``DTLSKIT_NATIVE=0``. A benchmark, not a test: it prints figures and asserts nothing. Needs
valgrind; takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

_CALLBACK = ctypes.CFUNCTYPE(None)
_pending: list[Callable[[], None]] = []


def _trampoline() -> None:
    _pending[0]()


_c_entry = _CALLBACK(_trampoline)


def counted(step: Callable[[], None]) -> None:
    """Run ``step`` inside the C callback whose instructions callgrind collects."""
    _pending[:] = [step]
    _c_entry()


# -- the measured programs (run under valgrind, one case each) -----------------------------------


def _drain(conn: Any) -> list[bytes]:
    from OpenSSL import SSL

    out = []
    while True:
        try:
            out.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return out


def _handshakes(kind: str, count: int) -> None:
    from OpenSSL import SSL

    import dtlskit
    from dtlskit.certs import create_pki
    from dtlskit.core import ServerEngine

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.servers import _minimal_context

    pki = create_pki(tempfile.mkdtemp())

    class Spec:
        certfile = str(pki.server_cert)
        keyfile = str(pki.server_key)

    floor_ctx = _minimal_context(cast(Any, Spec))  # only its two file names are read
    client_ctx = SSL.Context(SSL.DTLS_METHOD)
    client_ctx.set_cipher_list(dtlskit.DEFAULT_CIPHERS.encode())
    client_ctx.set_verify(SSL.VERIFY_NONE)
    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, limits=dtlskit.Limits(max_sessions=1_000_000)
    )
    engine = ServerEngine(config)

    def client_step(client: Any) -> bool:
        try:
            client.do_handshake()
            return True
        except SSL.WantReadError:
            return False

    def one(n: int) -> None:
        client = SSL.Connection(client_ctx, None)
        client.set_connect_state()
        client.set_ciphertext_mtu(1400)
        client_step(client)
        datagrams = _drain(client)
        address = (f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 40000)
        state: dict[str, Any] = {"peer": None, "handshaking": True}
        done = False
        for _ in range(20):
            replies: list[bytes] = []

            def floor_step(datagrams: list[bytes], replies: list[bytes]) -> None:
                for data in datagrams:
                    if state["peer"] is None:
                        peer = SSL.Connection(floor_ctx)
                        peer.set_accept_state()
                        peer.set_ciphertext_mtu(1400)
                        state["peer"] = peer
                    peer = state["peer"]
                    try:
                        peer.bio_write(data)
                        if state["handshaking"]:
                            try:
                                peer.do_handshake()
                                state["handshaking"] = False
                            except SSL.WantReadError:
                                pass
                        if not state["handshaking"]:
                            while True:
                                try:
                                    peer.send(peer.recv(65536))
                                except SSL.WantReadError:
                                    break
                        replies.extend(_drain(peer))
                    except SSL.ZeroReturnError:
                        state["peer"] = None

            def dtlskit_step(datagrams: list[bytes], replies: list[bytes]) -> None:
                now = 1000.0 + n * 0.001
                for data in datagrams:
                    engine.receive_datagram(data, address, now)
                replies.extend(data for data, _ in engine.datagrams_to_send())
                while engine.next_event() is not None:
                    pass
                engine.get_timer()

            step = floor_step if kind == "floor" else dtlskit_step
            counted(functools.partial(step, datagrams, replies))
            for reply in replies:
                client.bio_write(reply)
            if not done:
                done = client_step(client)
                if done:
                    client.shutdown()
            datagrams = _drain(client)
            if done and not datagrams and not replies:
                return

    for n in range(1, count + 1):
        one(n)


def _echo(kind: str, rounds: int) -> None:
    from OpenSSL import SSL

    import dtlskit
    import dtlskit.asyncio
    from dtlskit.asyncio import driver
    from dtlskit.certs import create_pki

    original = driver.ServerDriver.on_readable

    def on_readable(self: Any) -> None:
        counted(lambda: original(self))

    driver.ServerDriver.on_readable = on_readable  # type: ignore[method-assign]

    class Echo(dtlskit.SessionProtocol):
        def connection_made(self, channel: Any) -> None:
            self.channel = channel

        def message_received(self, data: bytes) -> None:
            self.channel.send_nowait(data)

    async def iterate(channel: Any) -> None:
        async for message in channel:
            await channel.send(message)

    async def exchange(sock: socket.socket, protect: Any) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            for _ in range(32):
                for datagram in protect(b"x" * 64):
                    sock.send(datagram)
            got = 0
            while got < 32:
                got += protect(await asyncio.wait_for(loop.sock_recv(sock, 65536), 10), True)
        sock.close()

    async def main() -> None:
        if kind == "udp":
            loop = asyncio.get_running_loop()
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            server.bind(("127.0.0.1", 0))
            server.setblocking(False)

            def drain() -> None:
                for _ in range(64):
                    try:
                        data, address = server.recvfrom(65536)
                    except BlockingIOError:
                        return
                    server.sendto(data, address)

            loop.add_reader(server.fileno(), lambda: counted(drain))

            def plain(data: bytes, received: bool = False) -> Any:
                return 1 if received else [data]

            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(server.getsockname())
            await exchange(sock, plain)
            loop.remove_reader(server.fileno())
            server.close()
            return
        pki = create_pki(tempfile.mkdtemp())
        config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        handler: Any = Echo if kind == "callback" else iterate
        async with dtlskit.asyncio.serve(handler, "127.0.0.1", 0, config=config) as dtls_server:
            port = dtls_server.sockets[0].getsockname()[1]
            ctx = SSL.Context(SSL.DTLS_METHOD)
            ctx.set_verify(SSL.VERIFY_NONE)
            ctx.set_cipher_list(dtlskit.DEFAULT_CIPHERS.encode())
            client = SSL.Connection(ctx, None)
            client.set_connect_state()
            client.set_ciphertext_mtu(1400)
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(("127.0.0.1", port))
            while True:
                try:
                    client.do_handshake()
                    break
                except SSL.WantReadError:
                    pass
                for datagram in _drain(client):
                    sock.send(datagram)
                client.bio_write(await asyncio.wait_for(loop.sock_recv(sock, 65536), 10))
            for datagram in _drain(client):
                sock.send(datagram)

            def protect(data: bytes, received: bool = False) -> Any:
                if not received:
                    client.send(data)
                    return _drain(client)
                client.bio_write(data)
                messages = 0
                while True:
                    try:
                        client.recv(65536)
                        messages += 1
                    except SSL.WantReadError:
                        return messages

            await exchange(sock, protect)  # the session's own socket (its address)

    asyncio.run(main())


def _echo_sync(kind: str, rounds: int) -> None:
    """The blocking server (``dtlskit.sync.serve``): its I/O thread's turns are counted
    (``IOThread._turn``: read, feed, callbacks, replies); with the iterator style the handler
    thread's loop is counted too (wait, ``recv``, ``send``)."""
    from OpenSSL import SSL

    import dtlskit
    import dtlskit.sync
    from dtlskit.certs import create_pki
    from dtlskit.sync import channel as sync_channel

    original = sync_channel.IOThread._turn

    def turn(self: Any, wake: int) -> bool:
        # a C callback of its own per call (not counted()'s shared one: two threads count here)
        result: list[bool] = []
        _CALLBACK(lambda: result.append(original(self, wake)))()
        return result[0] if result else False

    sync_channel.IOThread._turn = turn  # type: ignore[method-assign]

    class Echo(dtlskit.SessionProtocol):
        def connection_made(self, channel: Any) -> None:
            self.channel = channel

        def message_received(self, data: bytes) -> None:
            self.channel.send_nowait(data)

    def iterate(channel: Any) -> None:
        def loop() -> None:
            for message in channel:
                channel.send(message)

        _CALLBACK(loop)()

    pki = create_pki(tempfile.mkdtemp())
    config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    handler: Any = Echo if kind == "callback" else iterate
    with dtlskit.sync.serve(handler, "127.0.0.1", 0, config=config) as server:
        port = server.sockets[0].getsockname()[1]
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE)
        ctx.set_cipher_list(dtlskit.DEFAULT_CIPHERS.encode())
        client = SSL.Connection(ctx, None)
        client.set_connect_state()
        client.set_ciphertext_mtu(1400)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(120)  # (valgrind runs the server some 50x slower)
        sock.connect(("127.0.0.1", port))
        while True:
            try:
                client.do_handshake()
                break
            except SSL.WantReadError:
                pass
            for datagram in _drain(client):
                sock.send(datagram)
            client.bio_write(sock.recv(65536))
        for datagram in _drain(client):
            sock.send(datagram)
        for _ in range(rounds):
            for _ in range(32):
                client.send(b"x" * 64)
                for datagram in _drain(client):
                    sock.send(datagram)
            got = 0
            while got < 32:
                client.bio_write(sock.recv(65536))
                while True:
                    try:
                        client.recv(65536)
                        got += 1
                    except SSL.WantReadError:
                        break
        client.shutdown()
        for datagram in _drain(client):
            sock.send(datagram)
        sock.close()


# -- the driver ----------------------------------------------------------------------------------

_CASES = {
    "handshake floor": ("handshakes", "floor"),
    "handshake dtlskit": ("handshakes", "dtlskit"),
    "echo plain UDP (user space)": ("echo", "udp"),
    "echo dtlskit callback": ("echo", "callback"),
    "echo dtlskit iterator (read side)": ("echo", "iterator"),
    "echo dtlskit blocking callback": ("echo-sync", "callback"),
    "echo dtlskit blocking iterator": ("echo-sync", "iterator"),
}


def _collected(case: tuple[str, str], size: int, native: bool) -> int:
    env = dict(os.environ)
    if not native:
        env["DTLSKIT_NATIVE"] = "0"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=closure_fcn",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--case",
        case[0],
        case[1],
        str(size),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return int(match.group(1))


def _cpu_time(rounds: int, per_round: int) -> None:
    """The handshake cases' server steps timed with ``time.process_time`` (no valgrind), the
    floor and dtlskit alternating in this one process: CPU time, not instructions."""
    global counted
    spent = [0.0]

    def timed(step: Callable[[], None]) -> None:
        started = time.process_time()
        step()
        spent[0] += time.process_time() - started

    counted = timed
    import dtlskit

    totals = {"floor": 0.0, "dtlskit": 0.0}
    for _ in range(rounds):
        for kind in totals:
            spent[0] = 0.0
            _handshakes(kind, per_round)
            totals[kind] += spent[0]
    floor, ours = (totals[k] / (rounds * per_round) * 1e6 for k in ("floor", "dtlskit"))
    print(
        f"server CPU per in-memory handshake (process_time, accelerator {dtlskit.ACCELERATOR}): "
        f"floor {floor:.0f} us, dtlskit {ours:.0f} us ({ours / floor:.2f}x the floor)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=60, help="handshakes in the long run")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of 32 echoes (long run)")
    parser.add_argument("--only", help="run only the cases whose label contains this text")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="no valgrind: time the handshake cases' server steps with process_time instead",
    )
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        what, kind, size = args.case
        run = {"handshakes": _handshakes, "echo": _echo, "echo-sync": _echo_sync}[what]
        run(kind, int(size))
        return 0
    if args.cpu_time:
        _cpu_time(rounds=5, per_round=max(20, args.handshakes))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    import dtlskit

    print(f"server instructions (callgrind), dtlskit accelerator installed: {dtlskit.ACCELERATOR}")
    floor = None
    for label, case in _CASES.items():
        long_size = args.handshakes if case[0] == "handshakes" else args.rounds
        short_size = max(1, long_size // 4)
        unit = 1 if case[0] == "handshakes" else 32
        if args.only and args.only not in label:
            continue
        paths = [True] if case[1] in ("floor", "udp") else [True, False]
        for native in paths:
            extra = (long_size - short_size) * unit
            spent = _collected(case, long_size, native) - _collected(case, short_size, native)
            per = spent / extra
            path = "" if case[1] in ("floor", "udp") else (", native" if native else ", python")
            what = "per handshake" if case[0] == "handshakes" else "per message"
            ratio = ""
            if case == ("handshakes", "floor"):
                floor = per
            elif case[0] == "handshakes" and floor:
                ratio = f"  ({per / floor:.2f}x the floor)"
            print(f"  {label}{path}: {per:,.0f} instructions {what}{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
