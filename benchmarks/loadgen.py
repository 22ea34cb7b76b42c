"""The Python load generator (the fallback of :mod:`.cload`): one process of its own, pinned to
CPU 1, driving a server with asyncio clients.

The parent starts it once (:func:`start_load`) and hands it jobs over the pipe
(``("job", spec)`` answered by ``("result", dict)``). Every client binds its own loopback
source address (:func:`~.common.source_address`), never reused within a run, so that the server's
per-address limits see a population of peers. The load always runs on the default asyncio loop,
whatever the server runs on, so that a server's figure and its ceiling share one load generator.

Jobs (``spec["job"]``):

``handshakes``
    ``concurrency`` clients at a time each open a DTLS session (cookie exchange and full
    handshake, certificate verified) and close it (close_notify), for ``seconds``.
``echo``
    ``clients`` clients (``protocol`` ``"dtls"`` or plain ``"udp"``) each keep ``window``
    messages of ``size`` bytes in flight: a reply (or a loss) lets the next message go. A message
    unanswered after ``loss_timeout`` seconds is counted lost and replaced, so a lost datagram
    never stalls the window: DTLS does not retransmit application data. Only replies received
    during the ``seconds`` after a ``warmup`` count; their round-trip times are kept.
``hold``
    Open ``sessions`` DTLS sessions and keep them; answer ``("held", dict)``, then wait (at most
    ``hold_timeout`` seconds) for ``("release",)``, close them all and answer ``("result", dict)``.

Echo results count ``socket_drops``: datagrams the kernel dropped at the server's or the
clients' sockets for want of receive-buffer room (/proc/net/udp). Each result also has the CPU
seconds the server process (``server_pid``), this process and the rest of the machine spent
during the measured interval, so a reader can tell which side was saturated and whether
something else was competing for the cores.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol, cast

import dtlskit
import dtlskit.asyncio
from dtlskit.exceptions import DTLSError

from .common import (
    HOST,
    WINDOW_STEP,
    Child,
    child_setup,
    cpu_seconds,
    machine_busy_seconds,
    percentile,
    report_failure,
    server_ticks,
    source_address,
    udp_drops,
    window_state,
)

__all__ = ["start_load"]

_MAX_FILES = 65_536  # one socket per held session, and a few more

HANDSHAKE_TIMEOUT = 10.0
"""Seconds one client handshake may take before it is counted as failed."""


def start_load(timeout: float = 30.0) -> Child:
    """Spawn the load-generating process and wait until it is ready."""
    child = Child("load generator", load_main)
    try:
        child.receive(timeout)
    except BaseException:
        child.end()
        raise
    return child


def load_main(conn: Connection) -> None:
    """Entry point of the load process: run jobs until asked to stop (or the parent is gone)."""
    child_setup(files=_MAX_FILES)
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})  # the servers run on CPU 0 (benchmarks/servers.py)
    state = _State(conn)
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "job":
            conn.send(("stopped",))
            return
        try:
            result = asyncio.run(_JOBS[message[1]["job"]](state, message[1]))
        except BaseException:
            report_failure(conn)
            continue
        conn.send(("result", result))


@dataclass
class _State:
    """What the load process keeps between jobs."""

    conn: Connection
    next_address: int = 0

    def address(self) -> str:
        """A loopback source address not used before in this run."""
        self.next_address += 1
        return source_address(self.next_address - 1)


class _Meter:
    """CPU seconds of the server, of this process and of everything else on the machine over
    an interval of wall time (a share of 1.0 is one core busy all the time)."""

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid
        self._start = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            cpu_seconds(self._pid),
            cpu_seconds(os.getpid()),
            machine_busy_seconds(),
        )

    def state(self, wanted: float, work: int, spec: dict[str, Any]) -> str:
        """The window rule (:func:`.common.window_state`) over this meter's interval so far."""
        elapsed = time.monotonic() - self._start[0]
        if elapsed < wanted:
            return "open"  # no /proc reading before the wall time has passed
        ticks = server_ticks(cpu_seconds(self._pid) - self._start[1])
        min_work, min_ticks = int(spec.get("min_work", 0)), int(spec.get("min_ticks", 0))
        return window_state(elapsed, wanted, work, min_work, ticks, min_ticks)

    def stop(self) -> dict[str, float]:
        wall, server, load, machine = (b - a for a, b in zip(self._start, self._now(), strict=True))
        other = max(0.0, machine - server - load)
        wall = max(wall, 1e-9)
        return {
            "wall_s": wall,
            "server_cpu_s": server,
            "server_ticks": server_ticks(server),
            "load_cpu_s": load,
            "other_cpu_s": other,
            "server_cpu_share": server / wall,
            "load_cpu_share": load / wall,
            "other_cpu_share": other / wall,
        }


def _client_config(spec: dict[str, Any]) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(cafile=spec["cafile"], server_hostname="localhost")


async def _connect(
    state: _State, spec: dict[str, Any], config: dtlskit.DTLSConfiguration
) -> dtlskit.asyncio.Channel:
    return await dtlskit.asyncio.connect(
        HOST,
        spec["port"],
        config=config,
        local_addr=(state.address(), 0),
        timeout=HANDSHAKE_TIMEOUT,
    )


async def _close(channel: dtlskit.asyncio.Channel) -> None:
    channel.close()
    await channel.wait_closed()


# -- handshakes --------------------------------------------------------------------------------


async def _handshakes(state: _State, spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    config = _client_config(spec)
    failures: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    meter = _Meter(spec["server_pid"])
    drops_before = udp_drops([(HOST, spec["port"])])
    window = "open"  # the window rule decides when new handshakes stop starting

    async def one_client_at_a_time() -> None:
        nonlocal window
        while window == "open":
            started = loop.time()
            try:
                channel = await _connect(state, spec, config)
            except DTLSError as exc:
                failures[type(exc).__name__] += 1
            else:
                latencies.append(loop.time() - started)
                await _close(channel)
            if window == "open":
                window = meter.state(spec["seconds"], len(latencies), spec)

    await asyncio.gather(*(one_client_at_a_time() for _ in range(spec["concurrency"])))
    usage = meter.stop()
    drops = udp_drops([(HOST, spec["port"])]) - drops_before
    latencies.sort()
    completed = len(latencies)
    return {
        "completed": completed,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "concurrency": spec["concurrency"],
        "server_socket_drops": drops,
        "per_s": completed / usage["wall_s"],
        "latency_p50_ms": 1000 * percentile(latencies, 0.5) if latencies else 0.0,
        "latency_p99_ms": 1000 * percentile(latencies, 0.99) if latencies else 0.0,
        "server_cpu_ms_per_op": 1000 * usage["server_cpu_s"] / completed if completed else 0.0,
        "starved": window == "starved",
        **usage,
    }


# -- echo --------------------------------------------------------------------------------------


class _Peer(Protocol):
    """What the echo load needs of a client: a dtlskit Channel, or :class:`_UdpPeer`."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...

    def close(self) -> None: ...

    def getsockname(self) -> Any: ...


class _UdpPeer(asyncio.DatagramProtocol):
    """A connected plain UDP socket with the send/recv shape of a Channel (same inbox design:
    a deque and one waiter), so the ceiling runs the very same load code."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._inbox: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (CPython 3.11's selector transport does not subclass DatagramTransport: no isinstance)
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._inbox.append(data)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def error_received(self, exc: Exception) -> None:
        pass  # a lost datagram: the echo load counts it as lost

    async def send(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.sendto(data)

    async def recv(self) -> bytes:
        while not self._inbox:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._inbox.popleft()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def getsockname(self) -> Any:
        return self._transport.get_extra_info("sockname") if self._transport else None


async def _open_udp(state: _State, spec: dict[str, Any]) -> _UdpPeer:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((state.address(), 0))
        _size(sock, spec.get("socket_buffer"))
        sock.connect((HOST, spec["port"]))
        sock.setblocking(False)
        _, peer = await loop.create_datagram_endpoint(_UdpPeer, sock=sock)
    except BaseException:
        sock.close()
        raise
    return peer


def _size(sock: socket.socket, size: int | None) -> None:
    if size is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


@dataclass
class _Tally:
    """Counts of all the echo clients of one job."""

    start: float
    end: float
    sent: int = 0
    replies: int = 0
    """Replies received in [start, end]."""
    lost: int = 0
    late: int = 0
    """Replies that came after their message was counted lost (or were not ours)."""
    rtts: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


async def _echo_client(peer: _Peer, spec: dict[str, Any], tally: _Tally) -> None:
    loop = asyncio.get_running_loop()
    padding = b"\x00" * (spec["size"] - 8)
    loss_timeout: float = spec["loss_timeout"]
    outstanding: dict[int, float] = {}
    sequence = 0

    async def send_next() -> None:
        nonlocal sequence
        sequence += 1
        outstanding[sequence] = loop.time()
        tally.sent += 1
        await peer.send(sequence.to_bytes(8, "big") + padding)

    async def receive_forever() -> None:
        while True:
            data = await peer.recv()
            now = loop.time()
            sent_at = outstanding.pop(int.from_bytes(data[:8], "big"), None)
            if sent_at is None:
                tally.late += 1
                continue
            if tally.start <= now <= tally.end:
                tally.replies += 1
                tally.rtts.append(now - sent_at)
            if now < tally.end:
                await send_next()

    receiver = loop.create_task(receive_forever())
    try:
        for _ in range(spec["window"]):
            await send_next()
        while not receiver.done():
            now = loop.time()
            give_up = tally.end + loss_timeout  # the window rule may carry tally.end on
            if now >= give_up or (now >= tally.end and not outstanding):
                break
            await asyncio.sleep(min(loss_timeout / 4, max(0.001, give_up - now)))
            now = loop.time()
            for number, sent_at in list(outstanding.items()):
                if now - sent_at > loss_timeout:
                    del outstanding[number]
                    tally.lost += 1
                    if now < tally.end:
                        await send_next()
    except DTLSError as exc:
        tally.errors[type(exc).__name__] += 1
    finally:
        receiver.cancel()
        for outcome in await asyncio.gather(receiver, return_exceptions=True):
            if isinstance(outcome, Exception):
                tally.errors[type(outcome).__name__] += 1
    tally.lost += len(outstanding)  # never answered by the deadline


async def _echo(state: _State, spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    peers: list[_Peer] = []
    try:
        if spec["protocol"] == "dtls":
            config = _client_config(spec)
            for _ in range(spec["clients"]):
                channel = await _connect(state, spec, config)
                peers.append(channel)
                if spec.get("socket_buffer") is not None:
                    channel.set_recv_buffer_size(spec["socket_buffer"])
                    channel.set_send_buffer_size(spec["socket_buffer"])
        else:
            for _ in range(spec["clients"]):
                peers.append(await _open_udp(state, spec))
        watched = [(HOST, spec["port"]), *(tuple(peer.getsockname()[:2]) for peer in peers)]
        drops_before = udp_drops(watched)
        start = loop.time() + spec["warmup"]
        tally = _Tally(start=start, end=start + spec["seconds"])
        usage: dict[str, float] = {}
        starved = False

        async def meter() -> None:
            nonlocal starved
            await asyncio.sleep(max(0.0, tally.start - loop.time()))
            running = _Meter(spec["server_pid"])
            await asyncio.sleep(max(0.0, tally.end - loop.time()))
            while (verdict := running.state(spec["seconds"], tally.replies, spec)) == "open":
                # The clients go on sending until then (two steps: never lapses between two).
                tally.end = loop.time() + 2 * WINDOW_STEP
                await asyncio.sleep(WINDOW_STEP)
            starved = verdict == "starved"
            tally.end = loop.time()
            usage.update(running.stop())

        await asyncio.gather(meter(), *(_echo_client(peer, spec, tally) for peer in peers))
        drops = udp_drops(watched) - drops_before
    finally:
        for peer in peers:
            peer.close()
        await asyncio.sleep(0.05)  # let close_notify go out and the transports close
    tally.rtts.sort()
    rtts = tally.rtts
    return {
        "size": spec["size"],
        "clients": spec["clients"],
        "window": spec["window"],
        "msgs_per_s": tally.replies / usage["wall_s"] if usage else 0.0,
        "starved": starved,
        "server_cpu_us_per_op": (
            1e6 * usage["server_cpu_s"] / tally.replies if tally.replies and usage else 0.0
        ),
        "replies": tally.replies,
        "sent": tally.sent,
        "lost": tally.lost,
        "late": tally.late,
        "errors": dict(tally.errors),
        "socket_drops": drops,
        "rtt_p50_ms": 1000 * percentile(rtts, 0.5) if rtts else 0.0,
        "rtt_p99_ms": 1000 * percentile(rtts, 0.99) if rtts else 0.0,
        **usage,
    }


# -- hold --------------------------------------------------------------------------------------


async def _hold(state: _State, spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    config = _client_config(spec)
    channels: list[dtlskit.asyncio.Channel] = []
    failures: collections.Counter[str] = collections.Counter()
    wanted: int = spec["sessions"]
    started = loop.time()
    budget = [wanted]

    async def open_some() -> None:
        while budget[0] > 0:
            budget[0] -= 1
            try:
                channels.append(await _connect(state, spec, config))
            except DTLSError as exc:
                failures[type(exc).__name__] += 1

    try:
        await asyncio.gather(*(open_some() for _ in range(spec["concurrency"])))
        held = {
            "established": len(channels),
            "failed": sum(failures.values()),
            "failures": dict(failures),
            "seconds_to_establish": loop.time() - started,
        }
        state.conn.send(("held", held))
        released = await loop.run_in_executor(None, state.conn.poll, spec["hold_timeout"])
        if released:
            state.conn.recv()  # ("release",)
    finally:
        for channel in channels:
            channel.close()
        await asyncio.gather(*(channel.wait_closed() for channel in channels))
    if not released:
        raise TimeoutError(f"no release within {spec['hold_timeout']} s")
    return held


_JOBS: dict[str, Callable[[_State, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "handshakes": _handshakes,
    "echo": _echo,
    "hold": _hold,
}
