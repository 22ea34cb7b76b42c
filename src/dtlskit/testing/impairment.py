"""A seeded UDP impairment proxy on real sockets: drop, duplicate, reorder, delay, corrupt and a
size limit between real clients and a real server (the kernels here have no ``sch_netem``).

Theory of operation
-------------------
The proxy listens on one UDP socket (:attr:`ImpairmentProxy.address`). The first datagram from
a new client address gets that client its own upstream socket, connected to the server, so the
server sees one distinct source per client (optionally on distinct loopback IPs, see
``source_host``). Datagrams go client → front socket → impair → upstream socket → server, and
back the same way.

Every datagram, in either direction, meets the impairments in this order, each decided by one
seeded ``random.Random``: size limit (larger datagrams are dropped, as a path with a small MTU
would), drop, corrupt (one random byte flipped), duplicate (a second copy), delay (``delay`` plus
uniform ``jitter``), reorder (held back ``reorder_hold`` seconds, so later datagrams overtake it).
One thread runs the proxy: it reads what is ready, schedules each surviving copy on a heap by
due time and sends what is due. Counters in :attr:`ImpairmentProxy.counters` say what happened.

The decision stream is seeded, but which datagram meets which decision depends on arrival order,
which real concurrency does not fix: runs are comparable, not identical.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ImpairmentProxy"]

Address = tuple[Any, ...]

_MAX_CLIENTS = 8192
_MAX_DATAGRAM = 65535
_MAX_HELD = 100_000  # datagrams waiting on the heap; beyond, new ones are dropped (counted)
_READS_PER_WAKE = 64


class ImpairmentProxy:
    """A UDP proxy that impairs traffic in both directions. Use as a context manager."""

    def __init__(
        self,
        upstream: Address,
        *,
        host: str = "127.0.0.1",
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_hold: float = 0.02,
        delay: float = 0.0,
        jitter: float = 0.0,
        corrupt: float = 0.0,
        max_size: int | None = None,
        seed: int = 0,
        source_host: Callable[[int], str] | None = None,
    ) -> None:
        """``source_host(n)`` gives the local IP the n-th client's upstream socket binds to
        (default ``host``): spread clients over 127.0.0.0/8 so a server's per-address limits
        see many sources, as they would on a real network."""
        for name, p in (
            ("drop", drop),
            ("duplicate", duplicate),
            ("reorder", reorder),
            ("corrupt", corrupt),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {p!r}")
        self.upstream = upstream
        self.drop, self.duplicate, self.reorder, self.corrupt = drop, duplicate, reorder, corrupt
        self.reorder_hold, self.delay, self.jitter = reorder_hold, delay, jitter
        self.max_size = max_size
        self._random = random.Random(seed)
        self._source_host = source_host or (lambda _n: host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._family = family
        self._front = socket.socket(family, socket.SOCK_DGRAM)
        self._front.bind((host, 0))
        self._front.setblocking(False)
        self.address: Address = self._front.getsockname()[:2]
        self._upstream_of: dict[Address, socket.socket] = {}
        self._client_of: dict[int, Address] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._front, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._heap: list[tuple[float, int, socket.socket, bytes, Address | None]] = []
        self._order = itertools.count()
        self._closing = False
        self.counters: collections.Counter[str] = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="impairment-proxy", daemon=True)

    # -- lifetime -------------------------------------------------------------------------------

    def start(self) -> ImpairmentProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close every socket. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join()
        for sock in [self._front, *self._upstream_of.values(), self._wake_r, self._wake_w]:
            sock.close()
        self._selector.close()

    def __enter__(self) -> ImpairmentProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing:
            now = time.monotonic()
            wait = 0.5 if not self._heap else max(0.0, min(0.5, self._heap[0][0] - now))
            for key, _ in self._selector.select(wait):
                sock = key.fileobj
                if sock is self._wake_r:
                    return
                self._read(sock)  # type: ignore[arg-type]
            self._send_due(time.monotonic())

    def _read(self, sock: socket.socket) -> None:
        for _ in range(_READS_PER_WAKE):
            try:
                data, source = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable reported on a connected socket
                self.counters["socket_errors"] += 1
                continue
            if sock is self._front:
                upstream = self._upstream_for(source[:2])
                if upstream is None:
                    self.counters["too_many_clients"] += 1
                    continue
                self.counters["to_server"] += 1
                self._impair(data, upstream, None)
            else:
                client = self._client_of.get(sock.fileno())
                if client is None:
                    continue
                self.counters["to_client"] += 1
                self._impair(data, self._front, client)

    def _upstream_for(self, client: Address) -> socket.socket | None:
        upstream = self._upstream_of.get(client)
        if upstream is not None:
            return upstream
        if len(self._upstream_of) >= _MAX_CLIENTS:
            return None
        upstream = socket.socket(self._family, socket.SOCK_DGRAM)
        upstream.bind((self._source_host(len(self._upstream_of)), 0))
        upstream.connect(self.upstream)
        upstream.setblocking(False)
        self._upstream_of[client] = upstream
        self._client_of[upstream.fileno()] = client
        self._selector.register(upstream, selectors.EVENT_READ)
        return upstream

    def _impair(self, data: bytes, out: socket.socket, destination: Address | None) -> None:
        rng = self._random
        if self.max_size is not None and len(data) > self.max_size:
            self.counters["too_big"] += 1
            return
        if rng.random() < self.drop:
            self.counters["dropped"] += 1
            return
        if data and rng.random() < self.corrupt:
            flipped = bytearray(data)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            data = bytes(flipped)
            self.counters["corrupted"] += 1
        copies = 1
        if rng.random() < self.duplicate:
            copies = 2
            self.counters["duplicated"] += 1
        now = time.monotonic()
        for _ in range(copies):
            due = now + self.delay + (rng.uniform(0.0, self.jitter) if self.jitter else 0.0)
            if rng.random() < self.reorder:
                due += self.reorder_hold
                self.counters["reordered"] += 1
            if len(self._heap) >= _MAX_HELD:
                self.counters["held_overflow"] += 1
                continue
            heapq.heappush(self._heap, (due, next(self._order), out, data, destination))

    def _send_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, out, data, destination = heapq.heappop(self._heap)
            try:
                if destination is None:
                    out.send(data)
                else:
                    out.sendto(data, destination)
                self.counters["delivered"] += 1
            except OSError:
                self.counters["socket_errors"] += 1
