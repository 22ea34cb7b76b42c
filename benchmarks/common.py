"""Helpers shared by the benchmark modules: child processes, /proc readings, addresses, quantiles.

Every process a benchmark starts is a :class:`Child`: a ``multiprocessing`` *spawn* process
(a fresh interpreter, no inherited threads or event loop) with one duplex pipe. It answers
requests on the pipe; :meth:`Child.end` asks it to stop, then ends it by its PID if it does
not. A child whose parent disappears sees the pipe close (``EOFError``) and exits by itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "HOST",
    "WINDOW_LIMIT",
    "WINDOW_STEP",
    "BenchmarkError",
    "Child",
    "child_setup",
    "cpu_seconds",
    "machine_busy_seconds",
    "percentile",
    "progress",
    "report_failure",
    "rss_kib",
    "server_ticks",
    "source_address",
    "starved_message",
    "udp_drops",
    "window_state",
]

HOST = "127.0.0.1"
"""Where every server listens. Clients bind other loopback addresses (see source_address)."""

Message = tuple[Any, ...]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_START = time.monotonic()


WINDOW_LIMIT = 10.0
"""A measured window lasts at most this many times the seconds asked (see window_state)."""
WINDOW_STEP = 0.01
"""How far an unfinished window is carried on at a time (seconds; one clock tick)."""


def window_state(
    elapsed: float, wanted: float, work: int, min_work: int, ticks: int, min_ticks: int
) -> str:
    """The window rule of every measured interval: ``"open"``, ``"done"`` or ``"starved"``.

    A window ends once ``wanted`` seconds of wall time have passed (``elapsed``) AND it saw at
    least ``min_work`` units of work (echo replies, completed handshakes) AND at least
    ``min_ticks`` clock ticks of the server's CPU time (/proc counts in ticks of 10 ms; under
    load half a second may hold no reply and no tick for a server that gets a few per cent of a
    core). Short of either it stays open, up to :data:`WINDOW_LIMIT` x ``wanted``; a window that
    reaches that limit still short is ``"starved"`` and its figure is reported as failed. The C
    load generator (``window_state`` in :file:`cload.c`) applies the same rule."""
    if elapsed < wanted:
        return "open"
    if work >= min_work and ticks >= min_ticks:
        return "done"
    if elapsed >= WINDOW_LIMIT * wanted:
        return "starved"
    return "open"


def starved_message(
    what: str, wall: float, work: str, ticks: int, min_work: int, min_ticks: int
) -> str:
    """Why a starved window's figure failed: what it saw, what it needed, the machine's load."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{what}: the machine is too loaded to measure (load average {load}), or the load "
        f"generator too slow for this server: the window ran {wall:.1f} s and saw {work} (at "
        f"least {min_work} wanted) and {ticks} clock ticks of server CPU time (at least "
        f"{min_ticks} wanted); measure on a quieter machine or with more --seconds"
    )


def server_ticks(cpu_s: float) -> int:
    """``cpu_s`` seconds of CPU time (as :func:`cpu_seconds` reads them) in whole clock ticks."""
    return round(cpu_s * _CLOCK_TICKS)


class BenchmarkError(Exception):
    """A benchmark step could not be measured (a child failed or did not answer in time)."""


def progress(message: str) -> None:
    """One line of progress on standard error, stamped with the seconds since start."""
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def source_address(index: int) -> str:
    """The ``index``-th client source address: 127.1.0.1, 127.1.0.2, ... (254 per /24).

    Each benchmark client binds its own loopback address so that the server's per-address
    limits (HelloVerifyRequests per second, sessions per address) see a population of peers,
    as they would on a real network, and never the one address 127.0.0.1.
    """
    if index < 0:
        raise ValueError("index must be >= 0")
    host, low = divmod(index, 254)
    middle, high = host % 256, 1 + (host // 256) % 254
    return f"127.{high}.{middle}.{low + 1}"


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending sequence (``fraction`` in [0, 1])."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil, at least the first value
    return float(ordered[min(len(ordered), int(rank)) - 1])


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchmarkError(f"/proc/{pid}/status has no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)


def udp_drops(addresses: Iterable[tuple[str, int]]) -> int:
    """Datagrams the kernel dropped on arrival (a full receive buffer) at the IPv4 UDP sockets
    bound to ``addresses``, summed (the ``drops`` column of /proc/net/udp).

    The kernel writes /proc/net/udp a page at a time and finds where it stopped by counting
    lines, so while other processes open and close sockets a line can be skipped. The file is
    read twice, and again (up to five passes) while an address is missing; the counters only
    grow, so the largest reading of each socket (by inode) is kept."""
    wanted = {(_hex_ipv4(host), port) for host, port in addresses}
    found: set[tuple[str, int]] = set()
    drops: dict[str, int] = {}  # by socket inode: workers share one address (SO_REUSEPORT)
    for attempt in range(5):
        with open("/proc/net/udp") as handle:
            next(handle)  # the header
            for line in handle:
                fields = line.split()
                host, _, port = fields[1].partition(":")
                key = (host, int(port, 16))
                if key in wanted:
                    found.add(key)
                    inode = fields[9]
                    drops[inode] = max(drops.get(inode, 0), int(fields[-1]))
        if found == wanted and attempt >= 1:  # two passes at least: workers share an address
            break
    return sum(drops.values())


def _hex_ipv4(host: str) -> str:
    """127.0.0.1 as /proc/net/udp writes it on a little-endian host: 0100007F."""
    packed = socket.inet_aton(host)
    if sys.byteorder == "little":
        packed = packed[::-1]
    return packed.hex().upper()


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores; /proc/stat, not idle/iowait)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10])  # guest time is already counted in user time
    return (sum(fields) - idle - guest) / _CLOCK_TICKS


def child_setup(files: int = 0) -> None:
    """First thing in a child: leave SIGINT to the parent (which ends its children itself) and
    allow at least ``files`` open file descriptors (raising the soft limit toward the hard)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if files:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < files:
            wanted = files if hard == resource.RLIM_INFINITY else min(files, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def report_failure(conn: Connection) -> None:
    """In a child: send the current exception's traceback to the parent, if it still listens."""
    with contextlib.suppress(OSError, ValueError):
        conn.send(("error", traceback.format_exc()))


class Child:
    """A spawned process running ``target(conn, *args)`` and answering on the pipe ``conn``
    (with ``environment`` added to its environment variables).

    Protocol: the child sends one message when it is ready, then answers each request with one
    message; a message ``("error", text)`` means the child failed (``text`` is its traceback).
    """

    def __init__(
        self,
        name: str,
        target: Callable[..., None],
        *args: Any,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=target, args=(child_end, *args), name=name, daemon=True
        )
        # A spawned child copies os.environ when it starts: set ``environment`` just for that.
        saved = {key: os.environ.get(key) for key in environment or {}}
        os.environ.update(environment or {})
        try:
            self._process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        child_end.close()

    @property
    def pid(self) -> int:
        """The child's process id."""
        pid = self._process.pid
        if pid is None:  # pragma: no cover - set by start()
            raise BenchmarkError(f"{self.name} has no process id")
        return pid

    def receive(self, timeout: float) -> Message:
        """The child's next message; raises :class:`BenchmarkError` after ``timeout`` seconds,
        if the child failed, or if it exited."""
        try:
            ready = self._conn.poll(timeout)
            if not ready:
                raise BenchmarkError(f"{self.name} did not answer within {timeout:g} s")
            message: Message = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._process.join(1.0)
            raise BenchmarkError(
                f"{self.name} exited unexpectedly (exit code {self._process.exitcode})"
            ) from exc
        if message and message[0] == "error":
            raise BenchmarkError(f"{self.name} failed:\n{message[1]}")
        return message

    def request(self, message: Message, timeout: float) -> Message:
        """Send ``message`` and return the answer (see :meth:`receive`)."""
        try:
            self._conn.send(message)
        except OSError as exc:
            raise BenchmarkError(f"{self.name} is gone: {exc}") from exc
        return self.receive(timeout)

    def end(self, timeout: float = 15.0) -> Message | None:
        """Ask the child to stop and return its last message (None if it had none to give);
        past ``timeout`` seconds, end it by its PID (SIGTERM, then SIGKILL). Idempotent."""
        answer: Message | None = None
        if self._process.is_alive():
            try:
                answer = self.request(("stop",), timeout)
            except BenchmarkError as exc:
                progress(f"warning: {exc}")
        self._conn.close()  # a child still waiting for a request now sees EOF and exits
        self._process.join(timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self._process.is_alive():
                break
            progress(f"warning: ending {self.name} (pid {self.pid}) with {sig.name}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            self._process.join(5.0)
        return answer

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end()
