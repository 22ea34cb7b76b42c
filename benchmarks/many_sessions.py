"""Many sessions on one asyncio server: memory per established idle session, and an echo round
across all of them (issue 15: hibernated sessions, ``Limits.hibernate_after``).

    python -m benchmarks.many_sessions [--sessions 100000] [--echo-seconds 60]
        [--hibernate-after 0 | --no-hibernation] [--cipher PSK-AES128-GCM-SHA256] [--json F]
    dtlskit bench ... (the "many sessions" row; --many-sessions N, 2,000 with --quick)

Two processes besides this one, each pinned to its own core (as the other benchmarks):

* the **server**: ``dtlskit.asyncio.serve`` with the callback handler style (a
  :class:`dtlskit.SessionProtocol` echoing with ``send_nowait``: no task per session), PSK
  (``--cipher``), ``Limits(hibernate_after=...)``, no idle timeout. It answers ``rss`` and
  ``stats`` over its pipe.
* the **load**: Python client engines (:class:`dtlskit.core.DTLSConnection`, PSK), which
  hibernate too (``hibernate_after=0``), so 100,000 of them fit in a few hundred MiB. Sessions
  come from distinct (source address, port) pairs: a few dozen UDP sockets bound to the
  wildcard address, each sending from many 127.x.y.z addresses with ``IP_PKTINFO``
  (``sendmsg``), and telling replies apart by their destination address (``recvmsg``). Up to
  ``--concurrency`` handshakes are in flight; a lost datagram is retransmitted by the engine's
  own timers.

Figures: resident set size of the server after a warm-up of ``--warmup-sessions`` sessions,
after all sessions are established, and once they have idled ``--idle-seconds`` (32 s: past
the rest period, after which a hibernated session drops its AEAD objects, 10 s, and the window
in which a server keeps its final flight for a peer that may repeat its own,
``handshake_timeout``, 30 s); KiB per session = (idle RSS - warm RSS) / new sessions.
Then the echo round: every session sends one 64-byte message, paced evenly over
``--echo-seconds``, and waits for its echo (after the round, until no echo came for 5 s); a
message never echoed is lost. The server's CPU time over the round (``/proc/PID/stat``) per
echoed message is reported too: those messages wake sessions that idled past the rest period.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import json
import os
import selectors
import socket
import struct
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"
    import benchmarks  # noqa: F401

from .common import (
    HOST,
    BenchmarkError,
    Child,
    child_setup,
    cpu_seconds,
    progress,
    report_failure,
    rss_kib,
    udp_drops,
)

__all__ = ["ManySettings", "main", "measure"]

IDENTITY = "many"
KEY = bytes(range(16))
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not name it
_PER_SOCKET = 2000  # source addresses per client socket (each (address, port) is one session)
_SETTLE = 1.0
_BURST = 64  # echo messages sent back to back at most, then replies are read
_QUIET = 5.0  # after the echo round, wait for replies until none came for this long
_GRACE = 120.0  # ... but no longer than this
SERVER_CPU, LOAD_CPU = 0, 1


@dataclasses.dataclass(frozen=True)
class ManySettings:
    sessions: int = 100_000
    warmup_sessions: int = 500
    echo_seconds: float = 60.0
    hibernate_after: float | None = 0.0
    cipher: str = "PSK-AES128-GCM-SHA256"
    concurrency: int = 256
    size: int = 64
    idle_seconds: float = 32.0
    """How long the sessions idle before the idle figure (see the module docstring)."""


def _pin(cpu: int) -> None:
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _source(index: int) -> str:
    """The ``index``-th source address of a client socket: 127.200.0.1 onward (254 per /24;
    ``index`` < 65,024)."""
    host, low = divmod(index, 254)
    return f"127.200.{host}.{low + 1}"


# -- the server -----------------------------------------------------------------------------


def server_main(conn: Connection, settings: ManySettings) -> None:
    child_setup()
    _pin(SERVER_CPU)
    try:
        asyncio.run(_serve(conn, settings))
    except Exception:
        report_failure(conn)


async def _serve(conn: Connection, settings: ManySettings) -> None:
    import dtlskit
    from dtlskit.asyncio import serve

    class Echo(dtlskit.SessionProtocol):
        __slots__ = ("channel",)

        def connection_made(self, channel: Any) -> None:
            self.channel = channel

        def message_received(self, data: bytes) -> None:
            self.channel.send_nowait(data)

    room = settings.sessions + settings.warmup_sessions + 1024
    limits = dtlskit.Limits(
        max_sessions=room,
        max_sessions_per_address=room,
        max_half_open=4096,
        max_half_open_per_address=4096,
        idle_timeout=None,
        hibernate_after=settings.hibernate_after,
    )
    config = dtlskit.DTLSConfiguration.server(
        psk_lookup={IDENTITY: KEY}, ciphers=settings.cipher, limits=limits
    )
    server = await serve(Echo, HOST, 0, config=config)
    sock = server.sockets[0]
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    pauses: list[float] = [0.0, 0.0, 0]  # longest full collection, their total, their number
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pause = time.perf_counter() - started[0]
            pauses[0] = max(pauses[0], pause)
            pauses[1] += pause
            pauses[2] += 1

    gc.callbacks.append(on_gc)

    def statistics() -> dict[str, Any]:
        figures = dataclasses.asdict(server.statistics())
        figures["gc_full_collections"] = pauses[2]
        figures["gc_longest_pause_s"] = pauses[0]
        figures["gc_pauses_s"] = pauses[1]
        engines = [endpoint.engine for endpoint in server._endpoints]
        sessions = [c for engine in engines for c in engine.connections.values()]
        figures["hibernated"] = sum(1 for c in sessions if c.hibernated)
        return figures

    def on_request() -> None:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            if not done.done():
                done.set_result(None)
            return
        if request[0] == "rss":
            conn.send(("rss", rss_kib(os.getpid())))
        elif request[0] == "stats":
            conn.send(("stats", statistics()))
        elif request[0] == "stop":
            conn.send(("stopped", statistics()))
            if not done.done():
                done.set_result(None)

    loop.add_reader(conn.fileno(), on_request)
    conn.send(("ready", server.addresses[0][1], {"pid": os.getpid()}))
    try:
        await done
    finally:
        loop.remove_reader(conn.fileno())
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 30)


# -- the load -------------------------------------------------------------------------------


class _Load:
    """Client engines on a few wildcard-bound sockets, each session its own source address."""

    def __init__(self, port: int, settings: ManySettings) -> None:
        import dtlskit

        self.settings = settings
        self.server = (HOST, port)
        self.config = dtlskit.DTLSConfiguration.client(
            psk=(IDENTITY, KEY),
            ciphers=settings.cipher,
            limits=dtlskit.Limits(hibernate_after=0),
        )
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self.engines: list[Any] = []  # by session index
        self.route: dict[tuple[bytes, int], int] = {}  # (source address, socket) -> index
        self.ancillary: list[list[tuple[int, int, bytes]]] = []
        self.replies = 0
        self.errors = 0

    def _socket(self, index: int) -> int:
        number = index // _PER_SOCKET
        while len(self.sockets) <= number:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", 0))
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, len(self.sockets))
            self.sockets.append(sock)
        return number

    def _new(self) -> int:
        from dtlskit.core import DTLSConnection

        index = len(self.engines)
        number = self._socket(index)
        address = _source(index % _PER_SOCKET)
        packed = socket.inet_aton(address)
        engine = DTLSConnection(self.config, server=False, peer_address=self.server)
        self.engines.append(engine)
        self.route[(packed, number)] = index
        self.ancillary.append(
            [(socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("=i4s4s", 0, packed, bytes(4)))]
        )
        return index

    def _send(self, index: int, datagram: bytes) -> None:
        sock = self.sockets[index // _PER_SOCKET]
        try:
            sock.sendmsg([datagram], self.ancillary[index], 0, self.server)
        except OSError:
            self.errors += 1

    def _flush(self, index: int, now: float) -> None:
        engine = self.engines[index]
        for datagram in engine.datagrams_to_send(now):
            self._send(index, datagram)
        while (event := engine.next_event()) is not None:
            if type(event).__name__ == "MessageReceived":
                self.replies += 1

    def _read(self, timeout: float) -> list[int]:
        """Feed what arrived within ``timeout``; the indices of the sessions fed."""
        fed: list[int] = []
        now = time.monotonic()
        for key, _ in self.selector.select(timeout):
            sock, number = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            for _ in range(256):  # bounded per wake-up
                try:
                    data, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(12))
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self.errors += 1
                    break
                destination = next(
                    (c[8:12] for level, kind, c in ancillary if kind == _IP_PKTINFO), None
                )
                index = self.route.get((destination or b"", number))
                if index is None:
                    self.errors += 1
                    continue
                self.engines[index].receive_datagram(data, now)
                self._flush(index, now)
                fed.append(index)
        return fed

    def handshakes(self, count: int, limit: float) -> dict[str, Any]:
        """Establish ``count`` more sessions (bounded by ``limit`` seconds)."""
        started = time.monotonic()
        target = len(self.engines) + count
        waiting = collections.deque(range(count))
        inflight: set[int] = set()
        completed = failed = 0
        last_timers = started
        while (waiting or inflight) and time.monotonic() - started < limit:
            now = time.monotonic()
            while waiting and len(inflight) < self.settings.concurrency:
                waiting.popleft()
                index = self._new()
                self.engines[index].connect(now)
                self._flush(index, now)
                inflight.add(index)
            for index in self._read(0.01):
                if index in inflight:
                    state = self.engines[index].state.value
                    if state == "established":
                        inflight.discard(index)
                        completed += 1
                    elif state in ("closed", "terminated"):
                        inflight.discard(index)
                        failed += 1
            now = time.monotonic()
            if now - last_timers > 0.05:
                last_timers = now
                for index in list(inflight):
                    engine = self.engines[index]
                    timer = engine.get_timer()
                    if timer is not None and now >= timer:
                        engine.handle_timer(now)
                        self._flush(index, now)
                        if engine.state.value in ("closed", "terminated"):
                            inflight.discard(index)
                            failed += 1
        failed += len(inflight) + len(waiting)
        return {
            "wanted": count,
            "completed": completed,
            "failed": failed,
            "sessions": target,
            "seconds": time.monotonic() - started,
            "hibernated": sum(1 for e in self.engines if e.hibernated),
        }

    def echo(self, seconds: float, size: int) -> dict[str, Any]:
        """One message per established session, paced over ``seconds``; wait for the echoes."""
        alive = [i for i, e in enumerate(self.engines) if e.state.value == "established"]
        replies_before = self.replies
        started = time.monotonic()
        sent = 0
        payload = b"m" * size
        while sent < len(alive):
            due = min(len(alive), int((time.monotonic() - started) / seconds * len(alive)) + 1)
            due = min(due, sent + _BURST)  # a load that fell behind catches up gently
            while sent < due:
                index = alive[sent]
                record = self.engines[index].seal(payload)
                if record is not None:
                    self._send(index, record)
                else:
                    self._flush(index, time.monotonic())
                sent += 1
            self._read(0.002)
        sent_at = last = time.monotonic()
        count = self.replies
        while self.replies - replies_before < sent and time.monotonic() - sent_at < _GRACE:
            self._read(0.05)
            if self.replies != count:
                count, last = self.replies, time.monotonic()
            elif time.monotonic() - last > _QUIET:
                break
        replies = self.replies - replies_before
        return {
            "sessions": len(alive),
            "sent": sent,
            "replies": replies,
            "lost": sent - replies,
            "seconds": sent_at - started,
            "seconds_to_last_reply": last - started,
            "errors": self.errors,
            "kernel_drops": udp_drops(("0.0.0.0", s.getsockname()[1]) for s in self.sockets),
        }


def load_main(conn: Connection, port: int, settings: ManySettings) -> None:
    child_setup(files=4096)
    _pin(LOAD_CPU)
    try:
        load = _Load(port, settings)
        conn.send(("ready",))
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            if request[0] == "handshakes":
                conn.send(("handshakes", load.handshakes(request[1], request[2])))
            elif request[0] == "echo":
                conn.send(("echo", load.echo(request[1], request[2])))
            elif request[0] == "rss":
                conn.send(("rss", rss_kib(os.getpid())))
            elif request[0] == "stop":
                conn.send(("stopped",))
                return
    except Exception:
        report_failure(conn)


# -- the measurement ------------------------------------------------------------------------


def measure(settings: ManySettings) -> dict[str, Any]:
    """Run the many-sessions figure; raises :class:`BenchmarkError` when a step fails."""
    server = Child("many-sessions server", server_main, settings)
    load: Child | None = None
    try:
        _, port, info = server.receive(60)
        load = Child("many-sessions load", load_main, port, settings)
        load.receive(60)
        progress(f"many sessions: warm-up, {settings.warmup_sessions} sessions")
        warm = load.request(("handshakes", settings.warmup_sessions, 600.0), 700)[1]
        time.sleep(_SETTLE)
        rss_warm = server.request(("rss",), 60)[1]
        progress(f"many sessions: {settings.sessions} sessions")
        held = load.request(("handshakes", settings.sessions, 3600.0), 3700)[1]
        time.sleep(_SETTLE)
        rss_held = server.request(("rss",), 60)[1]
        progress(f"many sessions: idle for {settings.idle_seconds:g} s")
        time.sleep(settings.idle_seconds)
        rss_idle = server.request(("rss",), 60)[1]
        stats_idle = server.request(("stats",), 120)[1]
        load_rss = load.request(("rss",), 60)[1]
        progress(f"many sessions: echo round over {settings.echo_seconds:g} s")
        cpu_before = cpu_seconds(server.pid)
        echo = load.request(("echo", settings.echo_seconds, settings.size), 3600)[1]
        cpu_after = cpu_seconds(server.pid)
        rss_echo = server.request(("rss",), 60)[1]
        stats_after = server.request(("stats",), 120)[1]
    finally:
        if load is not None:
            load.end()
        server.end()
    new_sessions = int(held["completed"])
    if new_sessions < 1:
        raise BenchmarkError(f"no session could be established: {held}")
    return {
        "settings": dataclasses.asdict(settings),
        "server_pid": info.get("pid"),
        "warmup": warm,
        "handshakes": held,
        "sessions_held": int(stats_idle["sessions"]),
        "sessions_hibernated": int(stats_idle["hibernated"]),
        "rss_warm_kib": rss_warm,
        "rss_held_kib": rss_held,
        "rss_idle_kib": rss_idle,
        "kib_per_session_held": (rss_held - rss_warm) / new_sessions,
        "kib_per_session_idle": (rss_idle - rss_warm) / new_sessions,
        "rss_after_echo_kib": rss_echo,
        "kib_per_session_after_echo": (rss_echo - rss_warm) / new_sessions,
        "load_rss_kib": load_rss,
        "echo": echo,
        "echo_server_cpu_us_per_message": (cpu_after - cpu_before) / max(1, echo["replies"]) * 1e6,
        "server_statistics_after_echo": {
            k: stats_after.get(k)
            for k in (
                "sessions",
                "hibernated",
                "drops",
                "handshakes_completed",
                "kernel_drops",
                "gc_full_collections",
                "gc_longest_pause_s",
                "gc_pauses_s",
            )
        },
    }


def echo_cost(
    rounds: int = 3, seconds: float = 4.0, size: int = 64, accelerator: str = "on"
) -> dict[str, Any]:
    """Server CPU per echoed message on hibernated sessions against the same server keeping
    OpenSSL's objects, in alternating rounds of one run (the asyncio callback server of
    :mod:`.servers`, certificates, the C load generator: 4 sessions x 8 in flight)."""
    import tempfile

    from dtlskit.certs import create_pki

    from .cload import open_load
    from .servers import ServerSpec, start_server

    costs: dict[str, list[float]] = {"ssl": [], "hibernated": []}
    with tempfile.TemporaryDirectory(prefix="dtlskit-many-") as directory:
        pki = create_pki(directory)
        load = open_load("auto", str(pki.ca_cert))
        try:
            for _ in range(rounds):
                for name, after in (("ssl", None), ("hibernated", 0.0)):
                    spec = ServerSpec(
                        "dtlskit",
                        "asyncio",
                        style="callback",
                        certfile=str(pki.server_cert),
                        keyfile=str(pki.server_key),
                        socket_buffer=1 << 20,
                        hibernate_after=after,
                        accelerator=accelerator,
                    )
                    child, port, _ = start_server(spec)
                    try:
                        figures = load.echo(
                            protocol="dtls",
                            port=port,
                            server_pid=child.pid,
                            sessions=4,
                            window=8,
                            size=size,
                            warmup=0.5,
                            seconds=seconds,
                            loss_timeout=1.0,
                            socket_buffer=1 << 20,
                        )
                    finally:
                        child.end()
                    progress(f"echo cost: {name}: {figures['server_cpu_us_per_op']:.2f} us/msg")
                    costs[name].append(float(figures["server_cpu_us_per_op"]))
        finally:
            load.close()
    ssl, hibernated = sorted(costs["ssl"]), sorted(costs["hibernated"])
    median_ssl, median_hibernated = ssl[len(ssl) // 2], hibernated[len(hibernated) // 2]
    return {
        "rounds": rounds,
        "seconds": seconds,
        "size": size,
        "ssl_us_per_message": costs["ssl"],
        "hibernated_us_per_message": costs["hibernated"],
        "median_ratio": median_hibernated / median_ssl,
        "load_generator": load.kind,
        "accelerator": accelerator,
    }


def summary(result: dict[str, Any]) -> str:
    echo = result["echo"]
    return (
        f"{result['sessions_held']} sessions held ({result['sessions_hibernated']} hibernated), "
        f"{result['kib_per_session_idle']:.2f} KiB per idle session "
        f"({result['kib_per_session_held']:.2f} just after the handshakes); echo round over "
        f"{echo['seconds']:.0f} s: {echo['replies']}/{echo['sent']} echoed, {echo['lost']} lost, "
        f"{result['echo_server_cpu_us_per_message']:.1f} us server CPU per message"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.many_sessions", description=__doc__)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--warmup-sessions", type=int, default=500)
    parser.add_argument("--echo-seconds", type=float, default=60.0)
    parser.add_argument("--hibernate-after", type=float, default=0.0)
    parser.add_argument("--no-hibernation", action="store_true")
    parser.add_argument("--cipher", default="PSK-AES128-GCM-SHA256")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--idle-seconds", type=float, default=32.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--echo-cost",
        type=int,
        metavar="ROUNDS",
        help="instead: server CPU per echoed message, hibernated vs SSL objects, in ROUNDS "
        "alternating rounds of one run",
    )
    parser.add_argument(
        "--accelerator",
        choices=("on", "off"),
        default="on",
        help="with --echo-cost: the servers' accelerator switch (off: DTLSKIT_NATIVE=0)",
    )
    args = parser.parse_args(argv)
    if args.echo_cost:
        cost = echo_cost(args.echo_cost, accelerator=args.accelerator)
        print(
            f"echo cost, {cost['size']} B, accelerator {cost['accelerator']}: SSL objects "
            f"{cost['ssl_us_per_message']} us/msg, "
            f"hibernated {cost['hibernated_us_per_message']} us/msg; median ratio "
            f"{cost['median_ratio']:.2f}"
        )
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(cost, handle, indent=2)
        return 0
    settings = ManySettings(
        sessions=args.sessions,
        warmup_sessions=args.warmup_sessions,
        echo_seconds=args.echo_seconds,
        hibernate_after=None if args.no_hibernation else args.hibernate_after,
        cipher=args.cipher,
        concurrency=args.concurrency,
        idle_seconds=args.idle_seconds,
    )
    try:
        result = measure(settings)
    except BenchmarkError as exc:
        print(f"many sessions: FAILED: {exc}", file=sys.stderr)
        return 1
    print(summary(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0 if result["echo"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
