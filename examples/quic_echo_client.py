"""Seed 002's client: send one message on a QUIC stream with FIN, print the echo.

The counterpart of ``quic_echo_server.py`` (OpenSSL's quic-client-non-block): a non-blocking
socket, one select() loop bounded by the connection's next timeout, dtlskit's sans-I/O QUIC
session (``dtlskit.quic.sansio``). Once the handshake completes it opens a bidirectional
stream, writes the message and concludes it (FIN), reads the answer on the same stream until
FIN, prints it and closes the connection (CONNECTION_CLOSE, code 0).

    python quic_echo_client.py HOST PORT --cafile ca.pem [--alpn http/1.0] [--message TEXT]

Run with no arguments it starts ``quic_echo_server.py`` (one connection) with a throwaway PKI
and talks to it. The blocking and asyncio APIs do the same in one call:
``dtlskit.sync.quic.connect(...).request(message)``.
"""

from __future__ import annotations

import argparse
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dtlskit
from dtlskit.certs import create_pki
from dtlskit.quic.sansio import client_session

DEADLINE = 20.0  # seconds for the whole exchange: every wait in an example is bounded


def exchange(host: str, port: int, cafile: str | None, alpn: list[str], message: bytes) -> bytes:
    config = dtlskit.DTLSConfiguration.client(
        cafile=cafile, server_hostname="localhost", alpn_protocols=alpn
    )
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        start = time.monotonic()
        session = client_session(config, server_name=host, now=start)
        session.connect(address, start)
        stream_id: int | None = None
        answer = bytearray()
        while time.monotonic() - start < DEADLINE:
            now = time.monotonic()
            for datagram, to in session.datagrams_to_send(now):
                sock.sendto(datagram, to)
            timer = session.get_timer()
            timeout = max(0.0, timer - now) if timer is not None else None
            readable, _, _ = select.select([sock], [], [], timeout)
            now = time.monotonic()
            if readable:
                for _ in range(64):
                    try:
                        data, sender = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    session.receive_datagram(data, sender, now)
            timer = session.get_timer()
            if timer is not None and timer <= now:
                session.handle_timer(now)
            session.check_open()  # raises the reason once the connection has ended
            if not session.handshake_complete:
                continue
            if stream_id is None:
                print(f"connected ({session.alpn_protocol}); sending {message!r}", flush=True)
                stream_id = session.open_stream()
                session.write_stream(stream_id, message, end=True)
                continue
            got = session.read_stream(stream_id)
            if got is not None:
                answer += got[0]
                if got[1]:
                    session.close(0, "done")
                    for datagram, to in session.datagrams_to_send(time.monotonic()):
                        sock.sendto(datagram, to)
                    return bytes(answer)
        raise dtlskit.DTLSTimeoutError(f"no echo within {DEADLINE:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("host", nargs="?")
    parser.add_argument("port", nargs="?", type=int)
    parser.add_argument("--cafile", help="CA that issued the server's certificate")
    parser.add_argument("--alpn", action="append", help="ALPN to offer (default: http/1.0)")
    parser.add_argument("--message", default="GET /\r\n", help="what to send")
    args = parser.parse_args()
    alpn = args.alpn or ["http/1.0"]
    if args.host is not None:
        try:
            echo = exchange(args.host, args.port, args.cafile, alpn, args.message.encode())
        except dtlskit.DTLSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"echo: {echo.decode(errors='replace')!r}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(Path(tmp))
        server = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("quic_echo_server.py")),
                "--port", "0", "--connections", "1",
                "--cert", str(pki.server_cert), "--key", str(pki.server_key),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            banner = server.stdout.readline()  # "listening on 127.0.0.1 port N (...)"
            port = int(banner.split(" port ")[1].split()[0])
            echo = exchange("127.0.0.1", port, str(pki.ca_cert), alpn, b"hello, seed 002")
            print(f"echo: {echo.decode()!r}")
            out, _ = server.communicate(timeout=30)
            print("server said: " + " | ".join((banner + out).split("\n")).strip(" |"))
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    print("done: one message echoed on one QUIC stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
