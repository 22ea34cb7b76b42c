"""TLS over TCP: dtlskit's ``dtlskit.tls`` against asyncio's own TLS streams, same run.

    dtlskit bench ...                      (a table after the DTLS one; --skip-tls leaves it out)
    python -m dtlskit.benchmarks.tls [--seconds S]

Two echo servers, each in a process of its own pinned to CPU 0, on the default asyncio loop:

* ``dtlskit.tls``: ``dtlskit.tls.serve`` with a handler ``async for data in channel: await
  channel.send(data)`` (pyOpenSSL on memory BIOs, our engine);
* ``asyncio-ssl``: ``asyncio.start_server(..., ssl=ssl.SSLContext)`` with a handler
  ``while data := await reader.read(65536): writer.write(data); await writer.drain()``
  (the standard library's ``SSLProtocol``).

Both present the same certificate (EC P-256) and negotiate TLS 1.3 with the same client. The
load, pinned to CPU 1, is the same for both: the standard library's blocking TLS client,
:data:`CONNECTIONS` connections each keeping :data:`WINDOW` 64-byte messages in flight (echo),
then new connections one after another, each a full handshake plus one echoed byte
(handshakes). The figures: replies (or handshakes) per second of wall time, and the
**server's CPU time** (user + system, /proc/PID/stat) per message (or handshake) over the same
interval, which does not depend on how busy the load kept it. The servers are measured in
alternation, several rounds each, and each figure is the median of its rounds. Ratios:
dtlskit's rate over asyncio's, and asyncio's CPU per operation over dtlskit's (both > 1 when
dtlskit is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

if __package__ in (None, ""):  # run as a script: import this directory as the package it is
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"
    import benchmarks  # noqa: F401

from dtlskit.certs import PKIFiles, create_pki

from .common import BenchmarkError, Child, child_setup, cpu_seconds, progress, report_failure

__all__ = ["CONNECTIONS", "IMPLEMENTATIONS", "WINDOW", "main", "measure", "table"]

IMPLEMENTATIONS = ("dtlskit.tls", "asyncio-ssl")
CONNECTIONS = 4
WINDOW = 16
MESSAGE = b"m" * 64
SERVER_CPU = 0
LOAD_CPU = 1


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cpu})


# -- the servers (child processes) -------------------------------------------------------------


def _serve(conn: Connection, kind: str, cert: str, key: str) -> None:
    """Child: serve echo with ``kind`` on 127.0.0.1 until asked to stop."""
    child_setup(files=4096)
    try:
        _pin(SERVER_CPU)
        asyncio.run(_serve_async(conn, kind, cert, key))
    except BaseException:
        report_failure(conn)


async def _serve_async(conn: Connection, kind: str, cert: str, key: str) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    if kind == "dtlskit.tls":
        import dtlskit
        import dtlskit.tls

        async def echo(channel: dtlskit.tls.Channel) -> None:
            async for data in channel:
                await channel.send(data)

        config = dtlskit.DTLSConfiguration.server(cert, key)
        server: Any = await dtlskit.tls.serve(echo, "127.0.0.1", 0, config=config)
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

    def on_request() -> None:
        try:
            message = conn.recv()
        except EOFError:
            message = ("stop",)
        if message[0] == "stop" and not stop.done():
            stop.set_result(None)

    loop.add_reader(conn.fileno(), on_request)
    conn.send(("ready", port))
    await stop
    loop.remove_reader(conn.fileno())
    server.close()
    conn.send(("stopped",))


# -- the load (this process) -------------------------------------------------------------------


def _client_context(pki: PKIFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki.ca_cert))
    return context


def _connect(context: ssl.SSLContext, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(raw, server_hostname="localhost")


def _read_exactly(sock: ssl.SSLSocket, size: int) -> None:
    while size > 0:
        data = sock.recv(min(size, 65536))
        if not data:
            raise BenchmarkError("the server closed the connection")
        size -= len(data)


def _echo_load(pid: int, port: int, context: ssl.SSLContext, seconds: float) -> dict[str, float]:
    socks = [_connect(context, port) for _ in range(CONNECTIONS)]
    counts = [0] * CONNECTIONS
    measuring = threading.Event()
    done = threading.Event()
    errors: list[BaseException] = []

    def run(index: int) -> None:
        sock = socks[index]
        burst = MESSAGE * WINDOW
        try:
            while not done.is_set():
                sock.sendall(burst)
                _read_exactly(sock, len(burst))
                if measuring.is_set():
                    counts[index] += WINDOW
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    time.sleep(min(0.5, seconds / 4))  # warm-up, unmeasured
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    measuring.set()
    time.sleep(seconds)
    measuring.clear()
    cpu1, wall1 = cpu_seconds(pid), time.monotonic()
    replies = sum(counts)
    done.set()
    for thread in threads:
        thread.join(10)
    for sock in socks:
        sock.close()
    if errors:
        raise BenchmarkError(f"echo load failed: {errors[0]!r}")
    if replies == 0:
        raise BenchmarkError("no reply was measured")
    return {
        "messages_per_second": replies / (wall1 - wall0),
        "server_cpu_us_per_message": 1e6 * (cpu1 - cpu0) / replies,
        "replies": replies,
    }


def _handshake_load(
    pid: int, port: int, context: ssl.SSLContext, seconds: float
) -> dict[str, float]:
    def one() -> None:
        with _connect(context, port) as sock:
            sock.sendall(b"x")
            _read_exactly(sock, 1)

    warm_end = time.monotonic() + min(0.5, seconds / 4)
    while time.monotonic() < warm_end:
        one()
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    count = 0
    end = wall0 + seconds
    while time.monotonic() < end:
        one()
        count += 1
    cpu1, wall1 = cpu_seconds(pid), time.monotonic()
    return {
        "handshakes_per_second": count / (wall1 - wall0),
        "server_cpu_ms_per_handshake": 1e3 * (cpu1 - cpu0) / count,
        "handshakes": count,
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _one_round(kind: str, seconds: float, pki: PKIFiles, context: ssl.SSLContext) -> Any:
    with Child(
        f"tls server {kind}", _serve, kind, str(pki.server_cert), str(pki.server_key)
    ) as child:
        _, port = child.receive(30)
        return {
            "echo": _echo_load(child.pid, port, context, seconds),
            "handshakes": _handshake_load(child.pid, port, context, seconds),
        }


def measure(seconds: float, pki: PKIFiles, rounds: int = 3) -> dict[str, Any]:
    """Both implementations, echo and handshakes, and the ratios; a JSON-able document.

    The two servers are measured in alternation, ``rounds`` times each (A B A B ...), and each
    figure is the median of its rounds: what else runs on the machine then weighs on both
    alike."""
    samples: dict[str, list[Any]] = {kind: [] for kind in IMPLEMENTATIONS}
    errors: dict[str, str] = {}
    context = _client_context(pki)
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        _pin(LOAD_CPU)
        for index in range(rounds):
            for kind in IMPLEMENTATIONS:
                if kind in errors:
                    continue
                progress(f"tls: measuring {kind} (round {index + 1} of {rounds})")
                try:
                    samples[kind].append(_one_round(kind, seconds, pki, context))
                except (BenchmarkError, OSError, ssl.SSLError) as exc:
                    errors[kind] = str(exc)
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)
    rows: dict[str, Any] = {}
    for kind, runs in samples.items():
        if kind in errors or not runs:
            continue
        rows[kind] = {
            part: {name: _median([run[part][name] for run in runs]) for name in runs[0][part]}
            for part in ("echo", "handshakes")
        }
        rows[kind]["rounds"] = len(runs)
    document: dict[str, Any] = {"rows": rows, "errors": errors, "ratios": {}}
    if len(rows) == len(IMPLEMENTATIONS):
        ours, theirs = rows["dtlskit.tls"], rows["asyncio-ssl"]
        document["ratios"] = {
            "echo msgs/s": ours["echo"]["messages_per_second"]
            / theirs["echo"]["messages_per_second"],
            "echo CPU/msg (asyncio / dtlskit)": theirs["echo"]["server_cpu_us_per_message"]
            / ours["echo"]["server_cpu_us_per_message"],
            "handshakes/s": ours["handshakes"]["handshakes_per_second"]
            / theirs["handshakes"]["handshakes_per_second"],
            "CPU/handshake (asyncio / dtlskit)": theirs["handshakes"]["server_cpu_ms_per_handshake"]
            / ours["handshakes"]["server_cpu_ms_per_handshake"],
        }
    return document


def table(document: dict[str, Any]) -> str:
    """The TLS rows and ratios as text."""
    lines = [
        "",
        "TLS over TCP (64-byte echo, "
        f"{CONNECTIONS} connections x {WINDOW} in flight; new full handshakes, one at a time)",
        f"{'server':<14}{'msgs/s':>12}{'CPU us/msg':>12}{'hs/s':>10}{'CPU ms/hs':>11}",
    ]
    for kind in IMPLEMENTATIONS:
        row = document["rows"].get(kind)
        if row is None:
            lines.append(f"{kind:<14}  failed: {document['errors'].get(kind, '?')}")
            continue
        echo, hs = row["echo"], row["handshakes"]
        lines.append(
            f"{kind:<14}{echo['messages_per_second']:>12.0f}"
            f"{echo['server_cpu_us_per_message']:>12.1f}"
            f"{hs['handshakes_per_second']:>10.1f}{hs['server_cpu_ms_per_handshake']:>11.2f}"
        )
    for name, value in document["ratios"].items():
        lines.append(f"ratio dtlskit.tls vs asyncio-ssl, {name}: {value:.2f} (target >= 1)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the TLS comparison alone; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per figure")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds per server (median)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dtlskit-tls-bench-") as directory:
        document = measure(args.seconds, create_pki(directory), args.rounds)
    print(table(document))
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
