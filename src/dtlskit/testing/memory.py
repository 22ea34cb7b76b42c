"""An in-memory DTLS client and server, with a hand-advanced clock and a seeded lossy network.

:class:`MemoryPair` wires a client :class:`~dtlskit.core.DTLSConnection` to a
:class:`~dtlskit.core.ServerEngine` through a :class:`FakeNetwork` that can drop, duplicate,
reorder, corrupt or inspect datagrams. Nothing sleeps: :meth:`MemoryPair.run` delivers datagrams
and advances the :class:`Clock` to the next engine deadline until the handshake (or whatever
``until`` says) is done.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import DTLSConfiguration
from ..core import events as ev
from ..core.connection import DTLSConnection, State
from ..core.server import ServerEngine

__all__ = ["Clock", "Datagram", "FakeNetwork", "MemoryPair"]

CLIENT_ADDRESS = ("127.0.0.1", 40000)
SERVER_ADDRESS = ("127.0.0.1", 4433)


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        """Move forward and return the new time."""
        self.now += seconds
        return self.now

    def __call__(self) -> float:
        return self.now


@dataclass
class Datagram:
    """One datagram in flight on the fake network."""

    data: bytes
    source: tuple[Any, ...]
    destination: tuple[Any, ...]
    to_server: bool


Filter = Callable[[Datagram], list[Datagram]]


@dataclass
class FakeNetwork:
    """A seeded, lossy datagram network between two endpoints.

    ``drop``, ``duplicate`` and ``reorder`` are probabilities per datagram. ``filters`` run first
    and may return zero, one or several datagrams in place of each (scripted loss, tampering).
    Every datagram offered is appended to ``log`` before any impairment.
    """

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int = 0
    filters: list[Filter] = field(default_factory=list)
    log: list[Datagram] = field(default_factory=list)
    queue: list[Datagram] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def send(self, datagram: Datagram) -> None:
        """Offer a datagram to the network."""
        self.log.append(datagram)
        batch = [datagram]
        for impairment in self.filters:
            batch = [out for item in batch for out in impairment(item)]
        for item in batch:
            if self._random.random() < self.drop:
                continue
            copies = 2 if self._random.random() < self.duplicate else 1
            for _ in range(copies):
                if self.queue and self._random.random() < self.reorder:
                    self.queue.insert(self._random.randrange(len(self.queue)), item)
                else:
                    self.queue.append(item)

    def pop(self) -> Datagram | None:
        """The next datagram to deliver, or None."""
        return self.queue.pop(0) if self.queue else None


class MemoryPair:
    """A client engine and a server demultiplexer joined by a :class:`FakeNetwork`."""

    def __init__(
        self,
        server_config: DTLSConfiguration,
        client_config: DTLSConfiguration,
        *,
        network: FakeNetwork | None = None,
        clock: Clock | None = None,
        client_address: tuple[Any, ...] = CLIENT_ADDRESS,
        server_address: tuple[Any, ...] = SERVER_ADDRESS,
        server: ServerEngine | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.network = network or FakeNetwork()
        self.server = server or ServerEngine(server_config)
        self.client = DTLSConnection(client_config, server=False, peer_address=server_address)
        self.client_address = client_address
        self.server_address = server_address
        self.client_events: list[ev.Event] = []
        self.server_events: list[ev.Event] = []
        self.server_connection: DTLSConnection | None = None

    # -- driving ----------------------------------------------------------------------------

    def start(self) -> None:
        """Client sends its first flight."""
        self.client.connect(self.clock.now)
        self.pump()

    def pump(self) -> None:
        """Move every engine's output onto the network and collect events."""
        for data in self.client.datagrams_to_send(self.clock.now):
            self.network.send(Datagram(data, self.client_address, self.server_address, True))
        for data, address in self.server.datagrams_to_send(self.clock.now):
            self.network.send(Datagram(data, self.server_address, address, False))
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        while (item := self.server.next_event()) is not None:
            _, conn, event = item
            if isinstance(event, ev.HandshakeCompleted):
                self.server_connection = conn
            self.server_events.append(event)

    def deliver_one(self) -> bool:
        """Deliver the next datagram in flight; False when none is."""
        datagram = self.network.pop()
        if datagram is None:
            return False
        if datagram.to_server:
            self.server.receive_datagram(datagram.data, datagram.source, self.clock.now)
        else:
            self.client.receive_datagram(datagram.data, self.clock.now)
        self.pump()
        return True

    def next_deadline(self) -> float | None:
        """The earliest timer of either side."""
        deadlines = [d for d in (self.client.get_timer(), self.server.get_timer()) if d is not None]
        return min(deadlines) if deadlines else None

    def fire_timers(self) -> bool:
        """Advance the clock to the next deadline and run the timers; False if none is set."""
        deadline = self.next_deadline()
        if deadline is None:
            return False
        self.clock.now = max(self.clock.now, deadline)
        self.client.handle_timer(self.clock.now)
        self.server.handle_timer(self.clock.now)
        self.pump()
        return True

    def run(self, until: Callable[[], bool] | None = None, max_steps: int = 10_000) -> bool:
        """Deliver datagrams and fire timers until ``until()`` (default: handshake done on both
        sides, or either side failed) or nothing is left to do. Returns ``until()``."""
        done = until or self.settled
        for _ in range(max_steps):
            if done():
                return True
            if self.deliver_one():
                continue
            if not self.fire_timers():
                break
        return done()

    def settled(self) -> bool:
        """Both sides established, or the client ended."""
        client_done = self.client.state in (State.ESTABLISHED, State.CLOSED, State.TERMINATED)
        return client_done and (
            self.client.state is not State.ESTABLISHED or self.server_connection is not None
        )

    def handshake(self) -> bool:
        """Start and run to completion; True if both sides are established."""
        self.start()
        self.run()
        return self.client.state is State.ESTABLISHED and self.server_connection is not None

    def client_messages(self) -> list[bytes]:
        """Messages the client received so far."""
        return [e.data for e in self.client_events if isinstance(e, ev.MessageReceived)]

    def server_messages(self) -> list[bytes]:
        """Messages the server side received so far."""
        return [e.data for e in self.server_events if isinstance(e, ev.MessageReceived)]
