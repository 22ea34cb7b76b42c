"""The servers under test and their ceilings and floors, each in a process of its own.

A server is a :class:`ServerSpec`: a *kind* and, for most kinds, a *loop*:

=============  =====================================================================  ==========
kind           what runs                                                               loops
=============  =====================================================================  ==========
``udp``        plain UDP echo through an ``asyncio.DatagramProtocol``                  asyncio,
                                                                                       uvloop
``udp-drain``  plain UDP echo, a reader draining up to 64 datagrams per wake-up        asyncio
``udp-block``  plain UDP echo, one thread in a ``recvfrom``/``sendto`` loop            sync
``pyopenssl``  the floor: a minimal DTLS server on pyOpenSSL, no cookies, one          sync
               ``recvfrom`` loop, a dict of ``SSL.Connection`` by address
``mbedtls``    python-mbedtls (Cython over mbed TLS), the same shape, its own cookies   sync
``trio``       trio's ``DTLSEndpoint`` (cookies), a task per peer                      trio
``dtlskit``    ``dtlskit.asyncio.serve`` / ``dtlskit.sync.serve``, echoing each         asyncio,
               message; ``style`` picks the handler style (:data:`STYLES`) and          uvloop,
               ``accelerator="off"`` sets ``DTLSKIT_NATIVE=0`` in the server process    sync
=============  =====================================================================  ==========

Every server echoes each message to its sender. Each process pins itself to :data:`SERVER_CPU`
(when the machine has more than one core) before it serves, so that its CPU time is one core's
and the load generator (pinned to the other core) never competes with it.

The parent starts one with :func:`start_server` and talks to it over a pipe: the child first
sends ``("ready", port, info)`` (``info``: the accelerator in use, the CPUs it runs on);
``("stats",)`` is answered with ``("stats", dict)``, ``("stop",)`` with ``("stopped", dict)``
just before the child exits (the dict: ``ServerStatistics`` fields, or datagram counts).
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

from .common import HOST, Child, child_setup, report_failure

__all__ = [
    "KINDS",
    "SERVER_CPU",
    "STYLES",
    "ServerSpec",
    "accelerator",
    "mbedtls_unavailable",
    "start_server",
    "trio_unavailable",
    "uvloop_unavailable",
]

SERVER_CPU = 0
"""The core every server process is pinned to (the load generator gets the others)."""

KINDS = ("udp", "udp-drain", "udp-block", "pyopenssl", "mbedtls", "trio", "dtlskit")

STYLES: tuple[str, ...] = ("iterator", "callback")
"""dtlskit handler styles measured: ``iterator`` is ``async for message in channel`` (asyncio)
or ``for message in channel`` (blocking); ``callback`` is a :class:`dtlskit.SessionProtocol`
whose ``message_received`` answers with ``channel.send_nowait`` (no task or thread switch)."""

DRAIN_BATCH = 64
"""Datagrams the ``udp-drain`` reader takes per wake-up at most."""

_ACCELERATOR_ENV = "DTLSKIT_NATIVE"


def accelerator() -> str:
    """The accelerator dtlskit uses in this process (``"python"`` when it names none)."""
    import dtlskit

    return str(getattr(dtlskit, "ACCELERATOR", "python"))


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """What to run in the server process (picklable: it crosses to a spawned process)."""

    kind: str
    loop: str = "sync"
    """``"asyncio"``, ``"uvloop"``, ``"sync"`` or ``"trio"``."""
    style: str = "iterator"
    """dtlskit handler style (see :data:`STYLES`)."""
    accelerator: str = "on"
    """``"on"``: dtlskit as installed; ``"off"``: ``DTLSKIT_NATIVE=0`` in the server process."""
    certfile: str = ""
    keyfile: str = ""
    socket_buffer: int | None = None
    """SO_RCVBUF and SO_SNDBUF of the listening socket, bytes; None keeps the system default."""
    max_sessions: int = 20_000
    """dtlskit's Limits.max_sessions (room for the memory figure's sessions)."""
    hibernate_after: float | None = None
    """dtlskit's Limits.hibernate_after (None: sessions keep OpenSSL's object)."""

    @property
    def label(self) -> str:
        if self.kind == "dtlskit":
            hibernated = "" if self.hibernate_after is None else " hibernated"
            return (
                f"dtlskit {self.loop} {self.style} accelerator-{self.accelerator}{hibernated} "
                "server"
            )
        return f"{self.kind} {self.loop} server"

    def environment(self) -> dict[str, str]:
        """Environment variables the server process needs."""
        return {_ACCELERATOR_ENV: "0"} if self.accelerator == "off" else {}


def uvloop_unavailable() -> str | None:
    """Why uvloop cannot be used here, or None when it can."""
    try:
        importlib.import_module("uvloop")
    except ImportError as exc:
        return f"uvloop is not importable ({exc}); pip install 'dtlskit[bench]' to measure it"
    return None


def trio_unavailable() -> str | None:
    """Why trio's DTLSEndpoint cannot be measured here, or None when it can."""
    try:
        trio = importlib.import_module("trio")
    except ImportError as exc:
        return f"trio is not importable ({exc}); pip install 'dtlskit[bench]' to measure it"
    if not hasattr(trio, "DTLSEndpoint"):
        return "this trio has no DTLSEndpoint"
    return None


def start_server(spec: ServerSpec, timeout: float = 30.0) -> tuple[Child, int, dict[str, Any]]:
    """Spawn the server process; return it, its UDP port (at :data:`HOST`) and its info."""
    child = Child(spec.label, server_main, spec, environment=spec.environment())
    try:
        message = child.receive(timeout)
    except BaseException:
        child.end()
        raise
    return child, int(message[1]), dict(message[2])


def _pin() -> list[int]:
    """Pin this process to SERVER_CPU when there is another core for the load; the CPUs."""
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {SERVER_CPU})
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def server_main(conn: Connection, spec: ServerSpec) -> None:
    """Entry point of the server process."""
    child_setup(files=1024)
    info = {
        "cpus": _pin(),
        "accelerator": accelerator() if spec.kind == "dtlskit" else "-",
        _ACCELERATOR_ENV: os.environ.get(_ACCELERATOR_ENV),
    }
    try:
        if spec.kind == "trio":
            importlib.import_module("trio").run(_run_trio, conn, spec, info)
        elif spec.loop == "sync":
            _BLOCKING[spec.kind](conn, spec, info)
        else:
            if spec.loop == "uvloop":
                loop: asyncio.AbstractEventLoop = importlib.import_module("uvloop").new_event_loop()
            else:
                loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(_run_asyncio(conn, spec, info))
            finally:
                loop.close()
    except BaseException:
        report_failure(conn)
        raise


def _size_buffers(sock: socket.socket, size: int | None) -> None:
    if size is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _bound_socket(spec: ServerSpec) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    _size_buffers(sock, spec.socket_buffer)
    return sock


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


def _dtlskit_config(spec: ServerSpec) -> Any:
    import dtlskit

    limits = dtlskit.Limits(max_sessions=spec.max_sessions, hibernate_after=spec.hibernate_after)
    return dtlskit.DTLSConfiguration.server(spec.certfile, spec.keyfile, limits=limits)


# -- asyncio (default loop or uvloop) ----------------------------------------------------------


class _EchoProtocol(asyncio.DatagramProtocol):
    """The plain UDP echo: the least an asyncio protocol can do per datagram."""

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


def _drain_echo(sock: socket.socket, count: list[int]) -> Callable[[], None]:
    """A reader callback: echo up to DRAIN_BATCH datagrams, then give the loop back."""
    recvfrom, sendto = sock.recvfrom, sock.sendto

    def on_readable() -> None:
        for _ in range(DRAIN_BATCH):
            try:
                data, address = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            count[0] += 1
            try:
                sendto(data, address)
            except OSError:  # a full send buffer: the datagram is lost, as UDP allows
                count[1] += 1

    return on_readable


async def _echo_async(channel: Any) -> None:
    async for message in channel:
        await channel.send(message)


def _echo_protocol() -> Any:
    import dtlskit

    class EchoProtocol(dtlskit.SessionProtocol):
        channel: Any = None

        def connection_made(self, channel: Any) -> None:
            self.channel = channel

        def message_received(self, data: bytes) -> None:
            self.channel.send_nowait(data)

    return EchoProtocol


_DTLSKIT_STYLES: dict[tuple[str, str], Callable[..., Any]] = {
    ("asyncio", "iterator"): _echo_async,
    ("asyncio", "callback"): _echo_protocol,
    ("sync", "callback"): _echo_protocol,
}
"""(front end, style) -> the handler given to serve()."""


async def _run_asyncio(conn: Connection, spec: ServerSpec, info: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    closers: list[Callable[[], Any]] = []
    statistics: Callable[[], dict[str, Any]]
    if spec.kind == "dtlskit":
        import dtlskit.asyncio

        handler = _DTLSKIT_STYLES[("asyncio", spec.style)]
        if spec.style == "callback":
            handler = handler()
        server = await dtlskit.asyncio.serve(handler, HOST, 0, config=_dtlskit_config(spec))
        sock = server.sockets[0]
        _size_buffers(sock, spec.socket_buffer)

        def statistics() -> dict[str, Any]:
            return dataclasses.asdict(server.statistics())

        async def close_server() -> None:
            server.close()
            await server.wait_closed()

        closers.append(close_server)
    elif spec.kind == "udp":
        sock = _bound_socket(spec)
        transport, protocol = await loop.create_datagram_endpoint(_EchoProtocol, sock=sock)
        closers.append(transport.close)

        def statistics() -> dict[str, Any]:
            return {"datagrams_received": protocol.datagrams}

    elif spec.kind == "udp-drain":
        sock = _bound_socket(spec)
        sock.setblocking(False)
        count = [0, 0]
        loop.add_reader(sock.fileno(), _drain_echo(sock, count))
        closers += [lambda: loop.remove_reader(sock.fileno()), sock.close]

        def statistics() -> dict[str, Any]:
            return {"datagrams_received": count[0], "send_failed": count[1]}

    else:
        raise ValueError(f"no {spec.kind} server on an asyncio loop")

    def on_request() -> None:
        if not _answer(conn, statistics) and not stopped.done():
            stopped.set_result(None)

    loop.add_reader(conn.fileno(), on_request)
    conn.send(("ready", sock.getsockname()[1], info))
    try:
        await stopped
    finally:
        loop.remove_reader(conn.fileno())
        final = statistics()
        for close in closers:
            outcome = close()
            if asyncio.iscoroutine(outcome):
                await outcome
    _send_quietly(conn, ("stopped", final))


# -- blocking ----------------------------------------------------------------------------------


def _echo_blocking(channel: Any) -> None:
    for message in channel:
        channel.send(message)


_DTLSKIT_STYLES[("sync", "iterator")] = _echo_blocking


def _run_dtlskit_blocking(conn: Connection, spec: ServerSpec, info: dict[str, Any]) -> None:
    import dtlskit.sync

    handler = _DTLSKIT_STYLES[("sync", spec.style)]
    if spec.style == "callback":
        handler = handler()
    with dtlskit.sync.serve(handler, HOST, 0, config=_dtlskit_config(spec)) as server:
        sock = server.sockets[0]
        _size_buffers(sock, spec.socket_buffer)

        def statistics() -> dict[str, Any]:
            return dataclasses.asdict(server.statistics())

        conn.send(("ready", sock.getsockname()[1], info))
        while _answer(conn, statistics):
            pass
        final = statistics()
    _send_quietly(conn, ("stopped", final))


def _serve_in_thread(
    conn: Connection,
    sock: socket.socket,
    info: dict[str, Any],
    serve: Callable[[threading.Event], None],
    statistics: Callable[[], dict[str, Any]],
) -> None:
    """Run ``serve(stop)`` (a blocking loop on ``sock``) in a thread; answer the parent here.
    To stop, set the flag and wake the loop with an empty datagram."""
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(stop,), name="benchmark-server", daemon=True)
    thread.start()
    try:
        conn.send(("ready", sock.getsockname()[1], info))
        while _answer(conn, statistics):
            pass
    finally:
        stop.set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", sock.getsockname())
        thread.join(5.0)
    _send_quietly(conn, ("stopped", statistics()))
    sock.close()
    if thread.is_alive():  # pragma: no cover - the empty datagram wakes recvfrom
        os._exit(1)


def _run_udp_blocking(conn: Connection, spec: ServerSpec, info: dict[str, Any]) -> None:
    sock = _bound_socket(spec)
    count = [0, 0]  # datagrams received, replies that could not be sent

    def echo_forever(stop: threading.Event) -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while not stop.is_set():
            data, address = recvfrom(65536)
            count[0] += 1
            try:
                sendto(data, address)
            except OSError:  # a full send buffer: the datagram is lost, as UDP allows
                count[1] += 1

    _serve_in_thread(
        conn,
        sock,
        info,
        echo_forever,
        lambda: {"datagrams_received": count[0], "send_failed": count[1]},
    )


def _minimal_context(spec: ServerSpec) -> Any:
    """The floor's SSL context: what dtlskit configures OpenSSL with (DTLS 1.2, its cipher
    list, no compression, released buffers), and nothing else: no cookies, no callbacks."""
    from OpenSSL import SSL

    import dtlskit

    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(0xFEFD)  # DTLS 1.2
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(dtlskit.DEFAULT_CIPHERS.encode())
    ctx.use_certificate_chain_file(spec.certfile)
    ctx.use_privatekey_file(spec.keyfile)
    return ctx


def _run_pyopenssl(conn: Connection, spec: ServerSpec, info: dict[str, Any]) -> None:
    """The floor: the least a Python DTLS server on pyOpenSSL does per datagram."""
    from OpenSSL import SSL

    sock = _bound_socket(spec)
    ctx = _minimal_context(spec)
    peers: dict[Any, Any] = {}
    handshaking: set[Any] = set()
    count = {"datagrams_received": 0, "handshakes_completed": 0, "errors": 0, "closed": 0}

    def echo_forever(stop: threading.Event) -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        want_read = SSL.WantReadError
        while not stop.is_set():
            data, address = recvfrom(65536)
            if not data:
                continue
            count["datagrams_received"] += 1
            peer = peers.get(address)
            if peer is None:
                peer = SSL.Connection(ctx)
                peer.set_accept_state()
                peer.set_ciphertext_mtu(1400)
                peers[address] = peer
                handshaking.add(address)
            try:
                peer.bio_write(data)
                if address in handshaking:
                    try:
                        peer.do_handshake()
                        handshaking.discard(address)
                        count["handshakes_completed"] += 1
                    except want_read:
                        pass
                if address not in handshaking:
                    while True:
                        try:
                            peer.send(peer.recv(65536))
                        except want_read:
                            break
                while True:
                    try:
                        sendto(peer.bio_read(65536), address)
                    except want_read:
                        break
            except SSL.ZeroReturnError:  # close_notify: forget the peer
                count["closed"] += 1
                peers.pop(address, None)
                handshaking.discard(address)
            except (SSL.Error, OSError):
                count["errors"] += 1
                peers.pop(address, None)
                handshaking.discard(address)

    _serve_in_thread(conn, sock, info, echo_forever, lambda: {**count, "sessions": len(peers)})


def _run_mbedtls(conn: Connection, spec: ServerSpec, info: dict[str, Any]) -> None:
    """python-mbedtls (Cython over mbed TLS), the same shape as the floor: one ``recvfrom``
    loop, a wrapped buffer per address, mbed TLS's own cookie exchange."""
    from mbedtls import pk, tls, x509  # type: ignore[import-not-found]
    from mbedtls.exceptions import TLSError  # type: ignore[import-not-found]

    sock = _bound_socket(spec)
    key = pk.ECC.from_file(spec.keyfile)
    chain = tuple(x509.CRT.from_PEM(part) for part in _pem_blocks(spec.certfile))
    config = tls.DTLSConfiguration(
        certificate_chain=(chain, key),
        validate_certificates=False,
        lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
        # the suite every other row negotiates with the same client (mbed TLS prefers ChaCha20)
        ciphers=("TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",),
    )
    context = tls.ServerContext(config)
    peers: dict[Any, Any] = {}
    established: set[Any] = set()
    count = {"datagrams_received": 0, "handshakes_completed": 0, "hello_verify": 0, "errors": 0}
    done = tls.HandshakeStep.HANDSHAKE_OVER

    def new_peer(address: Any) -> Any:
        peer = context.wrap_buffers()
        peer.setcookieparam(f"{address[0]}:{address[1]}".encode())
        peers[address] = peer
        return peer

    def echo_forever(stop: threading.Event) -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        want_read, want_write = tls.WantReadError, tls.WantWriteError

        def flush(peer: Any, address: Any) -> None:
            outgoing = peer.peek_outgoing(65536)
            if outgoing:
                peer.consume_outgoing(len(outgoing))
                sendto(outgoing, address)

        while not stop.is_set():
            data, address = recvfrom(65536)
            if not data:
                continue
            count["datagrams_received"] += 1
            peer = peers.get(address) or new_peer(address)
            try:
                peer.receive_from_network(data)
                if address not in established:
                    for _ in range(64):  # one handshake step per call, a few dozen at most
                        try:
                            peer.do_handshake()
                        except want_write:
                            flush(peer, address)
                            continue
                        except want_read:
                            break
                        except tls.HelloVerifyRequest:
                            count["hello_verify"] += 1
                            flush(peer, address)
                            new_peer(address)  # mbed TLS needs a fresh context after it
                            break
                        if peer._handshake_state == done:
                            break
                    if peer._handshake_state == done:
                        established.add(address)
                        count["handshakes_completed"] += 1
                else:
                    while True:
                        try:
                            message = peer.read(65536)
                        except want_read:
                            break
                        if not message:
                            break
                        peer.write(message)
                        flush(peer, address)
                flush(peer, address)
            except (TLSError, OSError, ValueError):  # close_notify too: forget the peer
                count["errors"] += 1
                peers.pop(address, None)
                established.discard(address)

    _serve_in_thread(conn, sock, info, echo_forever, lambda: {**count, "sessions": len(peers)})


def _pem_blocks(path: str) -> list[str]:
    from pathlib import Path

    text = Path(path).read_text()
    end = "-----END CERTIFICATE-----"
    return [block + end + "\n" for block in text.split(end) if "BEGIN CERTIFICATE" in block]


def mbedtls_unavailable() -> str | None:
    """Why python-mbedtls cannot be measured here, or None when it can."""
    try:
        importlib.import_module("mbedtls.tls")
    except ImportError as exc:
        return f"python-mbedtls is not importable ({exc}); pip install python-mbedtls to measure it"
    return None


_BLOCKING: dict[str, Callable[[Connection, ServerSpec, dict[str, Any]], None]] = {
    "dtlskit": _run_dtlskit_blocking,
    "udp-block": _run_udp_blocking,
    "pyopenssl": _run_pyopenssl,
    "mbedtls": _run_mbedtls,
}


# -- trio ----------------------------------------------------------------------------------------


async def _run_trio(conn: Connection, spec: ServerSpec, info: dict[str, Any]) -> None:
    import trio
    from OpenSSL import SSL

    ctx = _minimal_context(spec)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    _size_buffers(cast(socket.socket, sock), spec.socket_buffer)
    count = {"sessions_served": 0, "messages": 0, "errors": 0}

    async def echo(channel: Any) -> None:
        count["sessions_served"] += 1
        try:
            await channel.do_handshake()
            while True:
                data = await channel.receive()
                count["messages"] += 1
                await channel.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, SSL.Error):
            count["errors"] += 1

    def statistics() -> dict[str, Any]:
        return dict(count)

    with trio.DTLSEndpoint(sock) as endpoint:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.serve, ctx, echo)
            conn.send(("ready", sock.getsockname()[1], info))
            while True:
                await trio.lowlevel.wait_readable(conn.fileno())
                if not _answer(conn, statistics):
                    break
            nursery.cancel_scope.cancel()
    _send_quietly(conn, ("stopped", statistics()))
