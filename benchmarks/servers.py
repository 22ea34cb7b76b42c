"""The servers under test, each run in a process of its own.

A server is named by a *flavour* and a *protocol*:

========  =============================================  =====================================
flavour   ``protocol="dtls"`` (measured)                 ``protocol="udp"`` (its ceiling)
========  =============================================  =====================================
asyncio   ``dtlskit.asyncio.serve`` on the default loop  an ``asyncio.DatagramProtocol`` echo
uvloop    the same on a uvloop loop                      the same on a uvloop loop
sync      ``dtlskit.sync.serve`` (thread per peer)       one thread: ``recvfrom``/``sendto``
========  =============================================  =====================================

Every DTLS server echoes each message back to its sender. The parent starts one with
:func:`start_server` and talks to it over a pipe: the child first sends ``("ready", port)``;
``("stats",)`` is answered with ``("stats", dict)``, ``("stop",)`` with ``("stopped", dict)``
just before the child exits (the dict: ``ServerStatistics`` fields, or datagram counts for UDP).
Running the server in its own process gives it a core of its own, keeps the load generator's
CPU out of its figures, and lets the parent read its resident memory from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import os
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

import dtlskit
import dtlskit.asyncio
import dtlskit.sync

from .common import HOST, Child, child_setup, report_failure

__all__ = ["FLAVOURS", "ServerSpec", "start_server", "uvloop_unavailable"]

FLAVOURS = ("asyncio", "uvloop", "sync")

_POLL = 0.2  # seconds a blocking server waits before looking at its stop flag again


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """What to run in the server process (picklable: it crosses to a spawned process)."""

    flavour: str
    """``"asyncio"``, ``"uvloop"`` or ``"sync"``."""
    protocol: str
    """``"dtls"`` (dtlskit) or ``"udp"`` (plain UDP echo, the ceiling)."""
    certfile: str = ""
    keyfile: str = ""
    socket_buffer: int | None = None
    """SO_RCVBUF and SO_SNDBUF of the listening socket, bytes; None keeps the system default."""

    def server_config(self) -> dtlskit.DTLSConfiguration:
        """The DTLS configuration: default limits (clients come from distinct addresses)."""
        return dtlskit.DTLSConfiguration.server(self.certfile, self.keyfile)

    @property
    def label(self) -> str:
        return f"{self.flavour} {'DTLS' if self.protocol == 'dtls' else 'plain UDP'} server"


def uvloop_unavailable() -> str | None:
    """Why uvloop cannot be used here, or None when it can."""
    try:
        importlib.import_module("uvloop")
    except ImportError as exc:
        return f"uvloop is not importable ({exc}); pip install uvloop to measure it"
    return None


def start_server(spec: ServerSpec, timeout: float = 30.0) -> tuple[Child, int]:
    """Spawn the server process; return it and the UDP port it listens on (at :data:`HOST`)."""
    child = Child(spec.label, server_main, spec)
    try:
        message = child.receive(timeout)
    except BaseException:
        child.end()
        raise
    return child, int(message[1])


def server_main(conn: Connection, spec: ServerSpec) -> None:
    """Entry point of the server process."""
    child_setup()
    try:
        if spec.flavour == "sync":
            _run_blocking(conn, spec)
        else:
            if spec.flavour == "uvloop":
                loop: asyncio.AbstractEventLoop = importlib.import_module("uvloop").new_event_loop()
            else:
                loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(_run_asyncio(conn, spec))
            finally:
                loop.close()
    except BaseException:
        report_failure(conn)
        raise


def _size_buffers(sock: socket.socket, size: int | None) -> None:
    if size is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _answer(conn: Connection, statistics: Callable[[], dict[str, Any]]) -> bool:
    """Answer one request from the parent; False when it asks us to stop (or has gone)."""
    try:
        message = conn.recv()
    except (EOFError, OSError):
        return False
    if message[0] == "stats":
        conn.send(("stats", statistics()))
        return True
    return bool(message[0] != "stop")


def _send_quietly(conn: Connection, message: tuple[Any, ...]) -> None:
    with contextlib.suppress(OSError):  # the parent may have gone: nothing to tell then
        conn.send(message)


# -- asyncio (default loop or uvloop) ----------------------------------------------------------


class _EchoProtocol(asyncio.DatagramProtocol):
    """The plain UDP echo: the least an asyncio server can do per datagram."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (CPython 3.11's selector transport does not subclass DatagramTransport: no isinstance)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.datagrams += 1
        if self.transport is not None:
            self.transport.sendto(data, addr)


async def _echo_async(channel: dtlskit.asyncio.Channel) -> None:
    async for message in channel:
        await channel.send(message)


async def _run_asyncio(conn: Connection, spec: ServerSpec) -> None:
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    server: dtlskit.asyncio.Server | None = None
    transport: asyncio.DatagramTransport | None = None
    statistics: Callable[[], dict[str, Any]]
    if spec.protocol == "dtls":
        server = await dtlskit.asyncio.serve(_echo_async, HOST, 0, config=spec.server_config())
        sock = server.sockets[0]
        running = server

        def statistics() -> dict[str, Any]:
            return dataclasses.asdict(running.statistics())

    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        transport, protocol = await loop.create_datagram_endpoint(_EchoProtocol, sock=sock)

        def statistics() -> dict[str, Any]:
            return {"datagrams_received": protocol.datagrams}

    _size_buffers(sock, spec.socket_buffer)

    def on_request() -> None:
        if not _answer(conn, statistics) and not stopped.done():
            stopped.set_result(None)

    loop.add_reader(conn.fileno(), on_request)
    conn.send(("ready", sock.getsockname()[1]))
    try:
        await stopped
    finally:
        loop.remove_reader(conn.fileno())
        final = statistics()
        if server is not None:
            server.close()
            await server.wait_closed()
        if transport is not None:
            transport.close()
    _send_quietly(conn, ("stopped", final))


# -- blocking ----------------------------------------------------------------------------------


def _echo_blocking(channel: dtlskit.sync.Channel) -> None:
    for message in channel:
        channel.send(message)


def _run_blocking(conn: Connection, spec: ServerSpec) -> None:
    if spec.protocol == "dtls":
        with dtlskit.sync.serve(_echo_blocking, HOST, 0, config=spec.server_config()) as server:
            sock = server.sockets[0]
            _size_buffers(sock, spec.socket_buffer)

            def statistics() -> dict[str, Any]:
                return dataclasses.asdict(server.statistics())

            conn.send(("ready", sock.getsockname()[1]))
            while _answer(conn, statistics):
                pass
            final = statistics()
        _send_quietly(conn, ("stopped", final))
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    _size_buffers(sock, spec.socket_buffer)
    sock.settimeout(_POLL)
    stop = threading.Event()
    count = [0, 0]  # datagrams received, replies that could not be sent

    def echo_forever() -> None:
        while not stop.is_set():
            try:
                data, address = sock.recvfrom(65536)
            except TimeoutError:
                continue
            count[0] += 1
            try:
                sock.sendto(data, address)
            except OSError:  # a full send buffer: the datagram is lost, as UDP allows
                count[1] += 1

    thread = threading.Thread(target=echo_forever, name="plain-udp-echo", daemon=True)
    thread.start()
    try:
        conn.send(("ready", sock.getsockname()[1]))
        while _answer(conn, lambda: {"datagrams_received": count[0], "send_failed": count[1]}):
            pass
    finally:
        stop.set()
        thread.join(5 * _POLL)
        sock.close()
    _send_quietly(conn, ("stopped", {"datagrams_received": count[0], "send_failed": count[1]}))
    if thread.is_alive():  # pragma: no cover - recvfrom has a timeout
        os._exit(1)
