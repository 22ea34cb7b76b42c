"""TLS over TCP: server instructions per new handshake and per echoed record, counted by
callgrind, for ``dtlskit.tls`` and asyncio's own TLS streams (the servers of
``benchmarks/tls.py``).

CPU time on a shared machine moves with whatever else runs; instruction counts do not. The
server runs under ``valgrind --tool=callgrind`` (user space only: the kernel's share of a
system call is not counted); the load is the standard library's blocking TLS client in this
process. Each figure is the difference between a short and a long run divided by the extra
operations, so start-up, imports and warm-up cancel out:

* ``hs``: new connections one after another, each a full TLS 1.3 handshake plus one echoed
  byte (``--handshakes``: the long run's count; the short one makes a quarter);
* ``echo``: 4 connections, each round one 1,024-byte burst (16 x 64-byte messages, one TLS
  record) per connection, echoed; per record (``--rounds``: the long run's count).

    python benchmarks/tls_instructions.py [--handshakes 20] [--rounds 200]

dtlskit is measured with the accelerator as installed; run it again with ``DTLSKIT_NATIVE=0``
for the pure-Python path. A benchmark, not a test: it prints figures and asserts nothing.
Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
from typing import Any

KINDS = ("dtlskit.tls", "asyncio-ssl")
BURST = b"m" * 64 * 16
CONNECTIONS = 4


async def _serve(kind: str, cert: str, key: str) -> None:
    """Child (under callgrind): an echo server; prints its port, stops when stdin closes."""
    loop = asyncio.get_running_loop()
    server: Any
    if kind == "dtlskit.tls":
        import dtlskit
        import dtlskit.tls

        async def echo(channel: dtlskit.tls.Channel) -> None:
            async for data in channel:
                await channel.send(data)

        config = dtlskit.DTLSConfiguration.server(cert, key)
        server = await dtlskit.tls.serve(echo, "127.0.0.1", 0, config=config)
        port = server.port
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context, backlog=512)
        port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    stop = loop.create_future()

    def on_stdin() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(0, on_stdin)
    await stop
    server.close()


def _read_exactly(sock: ssl.SSLSocket, size: int) -> None:
    while size > 0:
        data = sock.recv(min(size, 65536))
        if not data:
            raise RuntimeError("the server closed the connection")
        size -= len(data)


def _instructions(kind: str, part: str, count: int, pki: Any, directory: str) -> int:
    """Instructions the server executed serving ``count`` operations (and starting)."""
    out = os.path.join(directory, f"callgrind.{kind}.{part}.{count}")
    argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        os.path.abspath(__file__),
        "--serve",
        kind,
        str(pki.server_cert),
        str(pki.server_key),
    ]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki.ca_cert))

    def connect(port: int) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=300)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return context.wrap_socket(raw, server_hostname="localhost")

    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        port = int(child.stdout.readline())
        if part == "hs":
            for _ in range(count):
                with connect(port) as sock:
                    sock.sendall(b"x")
                    _read_exactly(sock, 1)
        else:
            socks = [connect(port) for _ in range(CONNECTIONS)]
            for _ in range(count + 1):  # one warm-up round
                for sock in socks:
                    sock.sendall(BURST)
                for sock in socks:
                    _read_exactly(sock, len(BURST))
            for sock in socks:
                sock.close()
        child.stdin.close()
        child.wait(600)
    with open(out) as handle:
        match = re.search(r"^(?:totals|summary):\s+(\d+)", handle.read(), re.M)
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    """Print instructions per handshake and per echoed record for both servers."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve"]:
        asyncio.run(_serve(args[1], args[2], args[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=20, help="long run's handshakes")
    parser.add_argument("--rounds", type=int, default=200, help="long run's echo rounds")
    options = parser.parse_args(args)
    if __package__ in (None, ""):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dtlskit import ACCELERATOR
    from dtlskit.certs import create_pki

    with tempfile.TemporaryDirectory(prefix="dtlskit-tls-callgrind-") as directory:
        pki = create_pki(directory)
        print(f"dtlskit accelerator: {ACCELERATOR}")
        for part, long, unit, per in (
            ("hs", options.handshakes, "handshake", 1),
            ("echo", options.rounds, "echoed record (16 x 64 bytes)", CONNECTIONS),
        ):
            short = max(1, long // 4)
            for kind in KINDS:
                extra = _instructions(kind, part, long, pki, directory) - _instructions(
                    kind, part, short, pki, directory
                )
                print(
                    f"{kind:<12} {extra / ((long - short) * per):>12,.0f} instructions per {unit}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
