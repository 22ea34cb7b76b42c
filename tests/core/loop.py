"""A minimal blocking socket loop that drives one engine over real UDP, for engine-level interop
tests that must not depend on the asyncio or blocking front ends.

Every wake-up is the engine contract's three steps: feed, drain events, transmit and re-arm.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any

from dtlskit.core import DTLSConnection, ServerEngine
from dtlskit.core import events as ev


class ClientLoop:
    """Drives a client engine over a connected UDP socket."""

    def __init__(self, engine: DTLSConnection, address: tuple[Any, ...]) -> None:
        family = socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
        self.engine = engine
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.connect(address)
        self.events: list[ev.Event] = []

    def close(self) -> None:
        self.sock.close()

    def _transmit(self) -> None:
        for datagram in self.engine.datagrams_to_send(time.monotonic()):
            self.sock.send(datagram)
        while (event := self.engine.next_event()) is not None:
            self.events.append(event)

    def connect(self, timeout: float = 10.0) -> None:
        self.engine.connect(time.monotonic())
        self._transmit()
        self.run_until(
            lambda: any(
                isinstance(e, ev.HandshakeCompleted | ev.ConnectionTerminated) for e in self.events
            ),
            timeout,
        )

    def send(self, data: bytes) -> None:
        self.engine.send(data)
        self._transmit()

    def messages(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, ev.MessageReceived)]

    def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            timer = self.engine.get_timer()
            wait = deadline - now if timer is None else max(0.0, min(timer - now, deadline - now))
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                try:
                    data = self.sock.recv(65535)
                except ConnectionRefusedError:
                    continue
                self.engine.receive_datagram(data, time.monotonic())
            timer = self.engine.get_timer()
            if timer is not None and time.monotonic() >= timer:
                self.engine.handle_timer(time.monotonic())
            self._transmit()
        return True


class ServerLoop:
    """Drives a ServerEngine over a bound UDP socket; echoes every message it receives."""

    def __init__(self, engine: ServerEngine, host: str = "127.0.0.1", echo: bool = True) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.engine = engine
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = int(self.sock.getsockname()[1])
        self.echo = echo
        self.events: list[tuple[Any, DTLSConnection, ev.Event]] = []

    def close(self) -> None:
        self.sock.close()

    def _transmit(self) -> None:
        while (item := self.engine.next_event()) is not None:
            self.events.append(item)
            _, conn, event = item
            if self.echo and isinstance(event, ev.MessageReceived):
                conn.send(event.data)
        for datagram, address in self.engine.datagrams_to_send(time.monotonic()):
            self.sock.sendto(datagram, address)

    def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            timer = self.engine.get_timer()
            wait = (
                min(0.05, deadline - now)
                if timer is None
                else max(0.0, min(timer - now, deadline - now, 0.05))
            )
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                data, address = self.sock.recvfrom(65535)
                self.engine.receive_datagram(data, address, time.monotonic())
            timer = self.engine.get_timer()
            if timer is not None and time.monotonic() >= timer:
                self.engine.handle_timer(time.monotonic())
            self._transmit()
        return True
