"""RELIABILITY scenario 8: a ClientHello flood from many source addresses against a live server.

The server runs in a process of its own (``tests/asyncio/server_process.py --mode signals``:
asyncio ``serve`` with the default configuration), so its RSS is its own. A second process, the
flooder (this module's :func:`main`), sends ``DTLSKIT_FLOOD_COUNT``
(default 100,000) real ClientHellos, captured from a client engine, each with fresh random bytes,
each from a UDP socket bound to a new address in 127.0.0.0/8 (127.1.0.0 onwards: loopback needs
no setup for that) — more distinct sources than the server could ever keep state for.

The flooder is closed-loop: at most ``WINDOW`` ClientHellos are unanswered at any time, so it
floods as fast as the server can process, not faster. The socket buffer in front of the server
then never overflows: every ClientHello reaches the engine (asserted), instead of the kernel
discarding the flood (and the legitimate clients' datagrams) before the server sees it. It keeps
flooding until it has sent the count *and* the legitimate clients are done, so they run during
the flood by construction (and their handshake times are checked to lie inside it, on the shared
CLOCK_MONOTONIC). A hard deadline bounds it.

Run with ``-s`` to see the figures (datagrams, HelloVerifyRequests, bytes out per byte in,
RSS, legitimate handshake times).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dtlskit
from dtlskit.asyncio import connect
from dtlskit.certs import PKIFiles
from dtlskit.core import DTLSConnection
from tests.helpers import WAIT
from tests.peers import Peer, running

ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = ROOT / "tests" / "asyncio" / "server_process.py"

FLOOD_COUNT = int(os.environ.get("DTLSKIT_FLOOD_COUNT", "100000"))
LEGIT_CLIENTS = 12
LEGIT_CONCURRENCY = 4
WINDOW = 128  # unanswered ClientHellos at once: well inside the server's 208 KiB socket buffer
ANSWER_TIMEOUT = 1.0  # a ClientHello unanswered this long counts as unanswered
FLOOD_DEADLINE = 90.0  # the flooder stops by then whatever happens
RSS_LIMIT_KIB = 5 * 1024
FIRST_FLOOD_ADDRESS = 0x7F010000  # 127.1.0.0; legitimate clients use 127.0.0.1

CLIENT_HELLO_RANDOM = 13 + 12 + 2  # record header, handshake header, client_version


# -- the flooder (a process of its own) ---------------------------------------------------------


def flood_address(index: int, addresses: int) -> str:
    return socket.inet_ntoa((FIRST_FLOOD_ADDRESS + index % addresses).to_bytes(4, "big"))


def run_flooder(
    hello: bytes, port: int, count: int, addresses: int, window: int, deadline: float
) -> dict[str, Any]:
    """Send ``count`` ClientHellos (more while stdin has not said ``stop``), each from a new
    socket bound to the next of ``addresses`` source addresses; read each HelloVerifyRequest."""
    poller = select.epoll()
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.EPOLLIN)
    waiting: dict[int, socket.socket] = {}
    order: collections.deque[tuple[float, socket.socket]] = collections.deque()
    hello_buffer = bytearray(hello)
    target = ("127.0.0.1", port)
    totals = collections.Counter[str]()
    stop = announced = False
    used: set[int] = set()  # indexes of the source addresses used
    started = time.monotonic()
    end_by = started + deadline

    def forget(sock: socket.socket) -> None:
        poller.unregister(sock.fileno())
        del waiting[sock.fileno()]
        sock.close()

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def sending() -> bool:
        return not (stop and totals["sent"] >= count)

    while time.monotonic() < end_by and (waiting or sending()):
        while sending() and len(waiting) < window:
            index = totals["attempts"] % addresses
            totals["attempts"] += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((flood_address(index, addresses), 0))
            hello_buffer[CLIENT_HELLO_RANDOM : CLIENT_HELLO_RANDOM + 32] = os.urandom(32)
            try:
                sock.sendto(hello_buffer, target)
            except OSError:  # non-blocking: a full buffer is counted, never waited for
                totals["send_errors"] += 1
                sock.close()
                continue
            totals["sent"] += 1
            totals["bytes_sent"] += len(hello_buffer)
            used.add(index)
            poller.register(sock.fileno(), select.EPOLLIN)
            waiting[sock.fileno()] = sock
            order.append((time.monotonic(), sock))
            if not announced and totals["sent"] >= window:
                announced = True
                say(f"FLOODING {started!r}")
        events = poller.poll(0)
        if not events:
            # Sleep, not epoll_wait: the server's replies then need no wake-up, which on a VM
            # costs more than the reply itself.
            time.sleep(0.0002)
        for fd, _ in events:
            if fd == stdin:
                line = sys.stdin.readline().strip()
                if line == "mark":  # the legitimate clients start
                    totals["sent_at_mark"] = totals["sent"]
                elif line == "stop" or not line:  # they are done (or the test went away)
                    totals["sent_at_stop"] = totals["sent"]
                    stop = True
                    poller.unregister(stdin)
                continue
            sock = waiting[fd]
            try:
                reply = sock.recv(2048)
            except OSError:
                totals["receive_errors"] += 1
            else:
                # A HelloVerifyRequest: handshake record (22), handshake type 3.
                is_hvr = len(reply) > 13 and reply[0] == 22 and reply[13] == 3
                totals["hello_verify_requests" if is_hvr else "other_replies"] += 1
                totals["bytes_answered"] += len(reply)
            forget(sock)
        now = time.monotonic()
        while order and (order[0][1].fileno() == -1 or now - order[0][0] > ANSWER_TIMEOUT):
            _, sock = order.popleft()
            if sock.fileno() != -1:
                totals["unanswered"] += 1
                forget(sock)
    for sock in list(waiting.values()):
        totals["unanswered"] += 1
        forget(sock)
    poller.close()
    result: dict[str, Any] = dict(totals)
    result.update(
        started=started,
        ended=time.monotonic(),
        distinct_addresses=len(used),
        stopped_by_deadline=time.monotonic() >= end_by,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="ClientHello flooder for tests/test_flood.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hello", required=True, help="ClientHello datagram, hex")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--addresses", type=int, required=True)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--deadline", type=float, default=FLOOD_DEADLINE)
    args = parser.parse_args()
    result = run_flooder(
        bytes.fromhex(args.hello),
        args.port,
        args.count,
        args.addresses,
        args.window,
        args.deadline,
    )
    sys.stdout.write("DONE " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# -- helpers of the test ------------------------------------------------------------------------


def next_line(peer: Peer, prefix: str, timeout: float = WAIT) -> str:
    """The next line (not one seen before) starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"{' '.join(peer.argv)[:80]} printed no new {prefix!r} line; output:\n"
                + "\n".join(peer.seen)
            )
        try:
            line = peer.lines.get(timeout=min(remaining, 0.2))
        except queue.Empty:
            if peer.process.poll() is not None and peer.lines.empty():
                raise AssertionError(
                    f"{' '.join(peer.argv)[:80]} exited ({peer.process.returncode}); output:\n"
                    + "\n".join(peer.seen)
                ) from None
            continue
        peer.seen.append(line)
        if line.startswith(prefix):
            return line


def vm_rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS:")


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def server_stats(server: Peer) -> dict[str, Any]:
    server.write(b"stats\n")
    stats: dict[str, Any] = json.loads(next_line(server, "STATS ")[len("STATS ") :])
    return stats


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped at the UDP socket(s) bound to 127.0.0.1:``port``."""
    wanted = f"0100007F:{port:04X}"
    drops: int | None = None
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == wanted:
                drops = (drops or 0) + int(fields[-1])
    assert drops is not None, f"no UDP socket on 127.0.0.1:{port} in /proc/net/udp"
    return drops


def client_hello(client_config: dtlskit.DTLSConfiguration) -> bytes:
    """A real first ClientHello (no cookie), from a client engine."""
    engine = DTLSConnection(client_config, server=False)
    engine.connect(0.0)
    (hello,) = engine.datagrams_to_send()
    assert hello[0] == 22 and hello[13] == 1  # handshake record, ClientHello
    session_id = hello[CLIENT_HELLO_RANDOM + 32]
    assert hello[CLIENT_HELLO_RANDOM + 32 + 1 + session_id] == 0  # no cookie yet
    return bytes(hello)


class RssSampler(threading.Thread):
    """Samples a process's VmRSS until stopped; keeps the largest value."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = vm_rss_kib(pid)
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.1):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, vm_rss_kib(self.pid))
                self.samples += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(WAIT)


async def legit_client(
    index: int, port: int, config: dtlskit.DTLSConfiguration
) -> tuple[float, float, float]:
    """Handshake, echo, close; (handshake start, handshake end, echo end) monotonic times."""
    started = time.monotonic()
    async with connect("127.0.0.1", port, config=config, timeout=30) as channel:
        connected = time.monotonic()
        message = f"legitimate client {index}".encode()
        await channel.send(message)
        assert await asyncio.wait_for(channel.recv(), WAIT) == message
        return started, connected, time.monotonic()


async def legit_clients(
    port: int, config: dtlskit.DTLSConfiguration
) -> list[tuple[float, float, float]]:
    results: list[tuple[float, float, float]] = []
    for first in range(0, LEGIT_CLIENTS, LEGIT_CONCURRENCY):
        wave = range(first, min(first + LEGIT_CONCURRENCY, LEGIT_CLIENTS))
        results += await asyncio.gather(*(legit_client(i, port, config) for i in wave))
    return results


def stop_server(server: Peer) -> tuple[int, dict[str, Any]]:
    """SIGTERM by PID; the exit code and the statistics it printed on the way out."""
    os.kill(server.process.pid, signal.SIGTERM)
    try:
        code = server.process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        raise AssertionError("server ignored SIGTERM:\n" + "\n".join(server.seen)) from None
    closed = next_line(server, "CLOSED ")
    return code, json.loads(closed[len("CLOSED ") :])


# -- the test -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_client_hello_flood_allocates_nothing_and_legitimate_clients_connect(
    pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    assert FLOOD_COUNT >= WINDOW, "DTLSKIT_FLOOD_COUNT must be at least the flood window"
    hello = client_hello(client_config)
    server_argv = [
        sys.executable,
        str(SERVER_SCRIPT),
        "--mode=signals",
        f"--cert={pki.server_cert}",
        f"--key={pki.server_key}",
    ]
    with running(server_argv) as server:
        _, pid_text, port_text = next_line(server, "READY ").split()
        pid, port = int(pid_text), int(port_text)
        assert pid == server.process.pid
        rss_start = vm_rss_kib(pid)
        # One handshake first: OpenSSL and asyncio allocate some things on first use only.
        warm_up = asyncio.run(asyncio.wait_for(legit_client(-1, port, client_config), 60))
        rss_before = vm_rss_kib(pid)
        drops_before = kernel_drops(port)

        flooder_argv = [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from tests.test_flood import main; sys.exit(main())",
            f"--port={port}",
            f"--hello={hello.hex()}",
            f"--count={FLOOD_COUNT}",
            f"--addresses={FLOOD_COUNT}",
        ]
        with running(flooder_argv) as flooder:
            flood_started = float(next_line(flooder, "FLOODING ").split()[1])
            sampler = RssSampler(pid)
            sampler.start()
            try:
                flooder.write(b"mark\n")
                legit = asyncio.run(asyncio.wait_for(legit_clients(port, client_config), 90))
                flooder.write(b"stop\n")
                done = json.loads(next_line(flooder, "DONE ", FLOOD_DEADLINE + WAIT)[5:])
            finally:
                sampler.stop()
            assert flooder.process.wait(timeout=WAIT) == 0

        # Legitimate sessions are closed: wait (bounded) until the server has forgotten them.
        deadline = time.monotonic() + WAIT
        while (stats := server_stats(server))["sessions"] and time.monotonic() < deadline:
            time.sleep(0.1)
        rss_after = vm_rss_kib(pid)
        peak_hwm = status_kib(pid, "VmHWM:")
        socket_drops = kernel_drops(port) - drops_before
        code, closed = stop_server(server)

    legit_handshakes = [connected - started for started, connected, _ in legit]
    # ClientHellos the flooder sent between hearing "mark" and "stop": while the legitimate
    # clients ran (give or take the time a line takes through a pipe).
    alongside = done.get("sent_at_stop", 0) - done.get("sent_at_mark", 0)
    ratio = stats["bytes_sent_unvalidated"] / max(1, stats["bytes_received_unvalidated"])
    print(
        "\nscenario 8 (ClientHello flood):"
        f"\n  flood: {done['sent']} ClientHellos sent from {done['distinct_addresses']} source "
        f"addresses in {done['ended'] - done['started']:.1f} s "
        f"({done['sent'] / (done['ended'] - done['started']):.0f}/s), "
        f"{done.get('hello_verify_requests', 0)} HelloVerifyRequests received back, "
        f"{done.get('unanswered', 0)} unanswered, {done.get('send_errors', 0)} send errors, "
        f"{socket_drops} dropped by the kernel at the server's socket"
        f"\n  server: {stats['datagrams_received']} datagrams received, "
        f"{stats['hello_verify_requests_sent']} HelloVerifyRequests sent, "
        f"associations created {stats['associations_created']}, drops {stats['drops']}"
        f"\n  toward unvalidated addresses: {stats['bytes_sent_unvalidated']} bytes sent for "
        f"{stats['bytes_received_unvalidated']} received ({ratio:.3f} byte per byte)"
        f"\n  server RSS: {rss_start} KiB at start, {rss_before} KiB after warm-up, peak "
        f"{sampler.peak} KiB during the flood ({sampler.samples} samples), {rss_after} KiB "
        f"after (growth {rss_after - rss_before} KiB; VmHWM {peak_hwm} KiB)"
        f"\n  legitimate clients: {len(legit)} during the flood ({alongside} flood "
        "ClientHellos sent meanwhile), handshake times (s): "
        + ", ".join(f"{t:.3f}" for t in sorted(legit_handshakes))
        + f"; warm-up handshake {warm_up[1] - warm_up[0]:.3f} s"
    )

    # The flood happened, and reached the server's engine (not only its socket buffer).
    assert done["sent"] >= FLOOD_COUNT
    assert not done["stopped_by_deadline"]
    assert done["distinct_addresses"] == FLOOD_COUNT
    assert done.get("hello_verify_requests", 0) >= 0.95 * done["sent"]
    assert stats["datagrams_received"] >= done["sent"] - done.get("unanswered", 0)
    assert stats["hello_verify_requests_sent"] >= done.get("hello_verify_requests", 0)
    # No state from the flood: the only associations are the legitimate clients'.
    assert stats["associations_created"] == len(legit) + 1
    assert stats["handshakes_completed"] == len(legit) + 1
    assert stats["sessions"] == 0 and stats["half_open"] == 0
    # Never more bytes toward an address that has not proven itself than it sent.
    assert stats["bytes_sent_unvalidated"] <= stats["bytes_received_unvalidated"]
    # Legitimate clients completed during the flood.
    assert len(legit) == LEGIT_CLIENTS
    assert "sent_at_mark" in done and "sent_at_stop" in done
    assert alongside > 0
    for started, connected, echoed in legit:
        assert flood_started <= started < connected <= echoed <= done["ended"]
    # Memory: bounded, not proportional to the flood.
    assert sampler.peak - rss_before < RSS_LIMIT_KIB
    assert rss_after - rss_before < RSS_LIMIT_KIB
    # A clean exit on SIGTERM.
    assert code == 0
    assert closed["associations_created"] == stats["associations_created"]


if __name__ == "__main__":
    sys.exit(main())
