"""Seed 002: OpenSSL's non-blocking QUIC echo server, in Python, around one select() loop.

OpenSSL's guide (ossl-guide-quic-server-non-block) builds a QUIC server that accepts only the
ALPNs ``http/1.0`` and ``hq-interop``, reads each stream the client opens until FIN, echoes it
on the same stream and concludes it (FIN). Its socket is non-blocking and it waits in select()
no longer than the connection's next timeout. Here the QUIC connection is aioquic's sans-I/O
one, under dtlskit's session layer (``dtlskit.quic.sansio``: bounds, errors); each wake-up is
the same three steps as the C loop:

1. feed it: every datagram read (``engine.receive_datagram``), or ``handle_timer(now)`` once a
   session's deadline (``get_timer()``) has passed;
2. serve streams: ``accept_stream()``, ``read_stream()`` until FIN, ``write_stream(..., end=True)``;
3. transmit ``datagrams_to_send(now)`` and sleep in select() until the earliest deadline.

Unlike the C demo it serves several clients at once (one engine routes datagrams by connection
ID). ``--connections N`` stops after N clients. Run with no arguments it serves one client: the
client example (``quic_echo_client.py``), started against it as a subprocess.

    python quic_echo_server.py --port 4433 --cert server.pem --key server.key
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
from dtlskit.quic.sansio import QuicServerEngine, QuicSession, StreamError, server_engine

ALPN = ("http/1.0", "hq-interop")
BUFFER = 8192  # the C demo's buffer: a longer stream is refused, as it fails there


def serve(sock: socket.socket, engine: QuicServerEngine, connections: int | None) -> None:
    reading: dict[QuicSession, dict[int, bytearray]] = {}
    served = 0
    print("Waiting for connection", flush=True)
    while connections is None or served < connections or engine.sessions:
        now = time.monotonic()
        deadlines = [t for t in (s.get_timer() for s in engine.sessions) if t is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        readable, _, _ = select.select([sock], [], [], timeout)
        now = time.monotonic()
        touched: set[QuicSession] = set()
        if readable:
            for _ in range(64):  # bounded: then look at timers again
                try:
                    data, address = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                session = engine.receive_datagram(data, address, now)
                if session is not None:
                    touched.add(session)
            for reply, address in engine.replies:  # version negotiation
                sock.sendto(reply, address)
            engine.replies.clear()
        for session in engine.sessions:
            timer = session.get_timer()
            if timer is not None and timer <= now:
                session.handle_timer(now)
                touched.add(session)
        for session in touched:
            if session.handshake_complete and session not in reading and not session.closed:
                reading[session] = {}
                print(f"Accepted new connection ({session.alpn_protocol})", flush=True)
            streams = reading.get(session)
            if streams is not None:
                echo_streams(session, streams)
            for datagram, address in session.datagrams_to_send(now):
                sock.sendto(datagram, address)
            if session.finished:
                engine.forget(session)
                if session in reading:
                    del reading[session]
                    served += 1
                    print(f"Connection closed: {session.error}", flush=True)
                else:
                    print(f"Handshake failed: {session.error}", flush=True)


def echo_streams(session: QuicSession, streams: dict[int, bytearray]) -> None:
    """Read every stream the client opened until FIN; echo it on the same stream with FIN."""
    while (stream_id := session.accept_stream()) is not None:
        streams[stream_id] = bytearray()
    for stream_id in list(streams):
        try:
            got = session.read_stream(stream_id)
        except StreamError as exc:
            print(f"stream {stream_id}: {exc}", flush=True)
            del streams[stream_id]
            continue
        except dtlskit.DTLSError:
            return  # the connection ended; the loop reports it
        if got is None:
            continue
        data, ended = got
        streams[stream_id] += data
        if ended:
            message = bytes(streams.pop(stream_id))
            session.write_stream(stream_id, message, end=True)
            session.forget_stream(stream_id)
            print(f"echoed {len(message)} bytes on stream {stream_id}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--cert", help="certificate chain (PEM); default: a throwaway PKI")
    parser.add_argument("--key")
    parser.add_argument("--connections", type=int, default=None, help="stop after N clients")
    args = parser.parse_args()
    demo = args.port is None
    with tempfile.TemporaryDirectory() as tmp:
        if args.cert:
            cert, key = args.cert, args.key
        else:
            pki = create_pki(Path(tmp))
            cert, key = str(pki.server_cert), str(pki.server_key)
        config = dtlskit.DTLSConfiguration.server(
            cert, key, alpn_protocols=ALPN, limits=dtlskit.Limits(max_queued_bytes=BUFFER)
        )
        engine = server_engine(config)
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((args.host, args.port or 0))
            sock.setblocking(False)
            port = sock.getsockname()[1]
            print(f"listening on {args.host} port {port} (ALPN {', '.join(ALPN)})", flush=True)
            if not demo:
                serve(sock, engine, args.connections)
                return 0
            client = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("quic_echo_client.py")),
                    args.host,
                    str(port),
                    "--cafile",
                    str(pki.ca_cert),
                    "--message",
                    "hello from the client",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            serve(sock, engine, 1)
            out, _ = client.communicate(timeout=30)
            print(f"client said: {out.strip()}")
            print("done: seed 002's echo served over QUIC")
            return client.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
