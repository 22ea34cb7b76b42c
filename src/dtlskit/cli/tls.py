"""``dtlskit server|client --transport tls`` (and ``tcp``, plain TCP for comparison).

The ``server`` and ``client`` commands hand ``--transport tls|tcp`` to :func:`run_server` /
:func:`run_client`, which build on the same helpers, so the TLS commands speak the DTLS
commands' flags where they apply:
``--cert --key --key-password --ca --require-client-cert --psk --verify-time`` (server), ``--ca
--cert --key --server-name --no-verify --psk --session-file --verify-time --message --count
--timeout`` (client). DTLS-only flags (``--mtu``, ``--workers``, ``--recv-buffer-size``,
``--new-port-after-lost-flights``) are refused with a usage error.

The client is interactive like ``openssl s_client``: what arrives is printed as it arrives (a
reader thread), each line typed is sent with its newline; at the end of input it waits for the
echo of what it sent (at most ``--timeout`` seconds of silence), then closes with close_notify.
With ``--message`` it sends each message and prints the same number of bytes read back (an
echo server's answer), as the DTLS client does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._frontend.sockets import format_address
from ..config import DTLSConfiguration
from ..exceptions import ConnectionClosedByPeer, DTLSError, DTLSTimeoutError, TransportError
from ..tls import Channel, serve
from ..tls._common import bind_tcp_sockets, connect_error
from ._common import UsageError, client_command, out, psk_table, with_keylog

__all__ = ["run_client", "run_server"]

logger = logging.getLogger("dtlskit.cli")

_DTLS_ONLY = ("mtu", "recv_buffer_size", "new_port_after_lost_flights")


def _refuse_dtls_flags(args: argparse.Namespace) -> None:
    for name in _DTLS_ONLY:
        if getattr(args, name, None) is not None:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} has no meaning with --transport {args.transport}")
    if getattr(args, "workers", 1) != 1:
        raise UsageError(f"--workers needs --transport dtls, not {args.transport}")


# -- server ---------------------------------------------------------------------------------------


def run_server(args: argparse.Namespace) -> int:
    """``dtlskit server --transport tls|tcp``: an echo server until SIGINT/SIGTERM."""
    from .server import _server_config

    _refuse_dtls_flags(args)
    if args.transport == "tcp":
        for name in ("cert", "key", "key_password", "ca", "psk", "verify_time"):
            if getattr(args, name, None):
                raise UsageError(f"--{name.replace('_', '-')} has no meaning with --transport tcp")
        if args.require_client_cert:
            raise UsageError("--require-client-cert needs --transport tls")
        asyncio.run(_serve_tcp(args.host, args.port))
        return 0
    config, hint = _server_config(args)
    config.build_context(True, tls=True)  # fail now, in one line, if a file cannot be loaded
    flags = f"--transport tls {hint}".strip()
    asyncio.run(_serve_tls(args.host, args.port, config, flags))
    return 0


def _install_stop(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop_on, signum, stop)


def _stop_on(signum: int, stop: Callable[[], None]) -> None:
    logger.info("received %s: stopping", signal.Signals(signum).name)
    stop()


async def _serve_tls(host: str | None, port: int, config: DTLSConfiguration, flags: str) -> None:
    async with serve(_echo, host, port, config=config) as server:
        _install_stop(server.close)
        where = ", ".join(format_address(address) for address in server.addresses)
        out(f"dtlskit server: TLS echo over TCP on {where} (Ctrl-C to stop)")
        out(f"connect with:  {client_command(host, server.port, flags)}")
        await server.serve_forever()
        stats = server.statistics()
    logger.info(
        "stopped: %d handshakes completed, %d failed, refused %s",
        stats.handshakes_completed,
        stats.handshakes_failed,
        stats.refused or "none",
    )


async def _echo(channel: Channel) -> None:
    peer = format_address(channel.getpeername())
    cert = channel.peer_certificate
    logger.info(
        "%s connected: %s, %s%s",
        peer,
        channel.version,
        channel.cipher,
        f", client certificate {cert.subject.rfc4514_string()}" if cert is not None else "",
    )
    echoed = 0
    try:
        async for data in channel:
            await channel.send(data)
            echoed += len(data)
        logger.info("%s closed the connection (%d bytes echoed)", peer, echoed)
    except DTLSError as exc:
        logger.warning("%s: connection ended: %s (%d bytes echoed)", peer, exc, echoed)


async def _serve_tcp(host: str | None, port: int) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = format_address(writer.get_extra_info("peername"))
        logger.info("%s connected (plain TCP)", peer)
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        logger.info("%s closed the connection", peer)

    servers = [
        await asyncio.start_server(echo, sock=sock)
        for sock in bind_tcp_sockets(host, port, False, 128)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def stop() -> None:
            if not done.done():
                done.set_result(None)

        _install_stop(stop)
        sockets = [s for server in servers for s in server.sockets]
        where = ", ".join(format_address(s.getsockname()) for s in sockets)
        bound = int(sockets[0].getsockname()[1])
        out(f"dtlskit server: plain TCP echo on {where} (Ctrl-C to stop)")
        out(f"connect with:  {client_command(host, bound, '--transport tcp')}")
        await done


# -- client ---------------------------------------------------------------------------------------


class _TCP:
    """A plain TCP connection with the few channel calls the client uses."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise connect_error(exc, host, port) from exc
        self._sock.settimeout(None)

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv(self, timeout: float | None = None) -> bytes:
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(65536)
        except TimeoutError as exc:
            raise DTLSTimeoutError("no data") from exc
        if not data:
            raise ConnectionClosedByPeer("the server closed the TCP connection")
        return data

    def read_exactly(self, n: int, timeout: float | None = None) -> bytes:
        data = b""
        while len(data) < n:
            data += self.recv(timeout)
        return data

    def close(self) -> None:
        self._sock.close()


def run_client(args: argparse.Namespace, messages: Iterator[bytes]) -> int:
    """``dtlskit client --transport tls|tcp``."""
    _refuse_dtls_flags(args)
    connection: Any
    if args.transport == "tcp":
        tls_only = ("ca", "cert", "key", "server_name", "no_verify", "psk", "session_file")
        for name in (*tls_only, "verify_time"):
            if getattr(args, name, None):
                raise UsageError(f"--{name.replace('_', '-')} has no meaning with --transport tcp")
        connection = _TCP(args.host, args.port, args.timeout)
        logger.info("connected to %s:%s over plain TCP", args.host, args.port)
    else:
        connection = _tls_connect(args)
    try:
        if args.message:
            for message in messages:
                connection.send(message)
                reply = connection.read_exactly(len(message), timeout=args.timeout)
                sys.stdout.write(reply.decode("utf-8", "replace") + "\n")
                sys.stdout.flush()
        else:
            _interactive(connection, args.timeout)
    finally:
        connection.close()
    return 0


def _tls_connect(args: argparse.Namespace) -> Any:
    from ..sync import tls
    from .client import _load_session

    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    settings: dict[str, Any] = {"certfile": args.cert, "keyfile": args.key}
    if args.no_verify:
        settings.update(verify_mode=ssl.CERT_NONE, check_hostname=False)
    if args.psk:
        if len(args.psk) > 1:
            raise UsageError("a client uses one --psk IDENTITY:HEXKEY")
        ((identity, key),) = psk_table(args.psk).items()
        settings["psk"] = (identity, key)
    if args.verify_time is not None:
        settings["verify_time"] = args.verify_time
    config = with_keylog(DTLSConfiguration.client(args.ca, args.server_name, **settings))
    session = _load_session(args.session_file)
    started = time.perf_counter()
    channel = tls.connect(
        args.host, args.port, config=config, timeout=args.timeout, session=session
    )
    logger.info(
        "connected to %s in %.1f ms: %s, %s, server certificate %s%s",
        format_address(channel.getpeername()),
        1000 * (time.perf_counter() - started),
        channel.version,
        channel.cipher,
        channel.peer_certificate.subject.rfc4514_string()
        if channel.peer_certificate is not None
        else "none (PSK)",
        " (NOT verified: --no-verify)" if args.no_verify else "",
    )
    if args.session_file:
        out(f"session reused: {'yes' if channel.session_reused else 'no'}")
        _SessionSaver(channel, args.session_file).start()
    return channel


class _SessionSaver:
    """Save the newest session when the client ends (TLS 1.3 tickets come after the
    handshake, with the first data)."""

    def __init__(self, channel: Any, path: str) -> None:
        self.channel, self.path = channel, path

    def start(self) -> None:
        original = self.channel.close

        def close() -> None:
            session = self.channel.session
            if session is not None:
                session.save(self.path)
            original()

        self.channel.close = close


def _interactive(connection: Any, timeout: float) -> None:
    """s_client style: print what arrives as it arrives; send stdin lines; at the end of
    input wait for the echo of what was sent (bounded by ``timeout`` seconds of silence).
    When the server closes, stop at once (stdin is read by a daemon thread)."""
    state = {"sent": 0, "received": 0, "eof": False}
    lock = threading.Condition()
    ended: list[BaseException] = []

    def reader() -> None:
        while True:
            try:
                data = connection.recv(timeout=None)
            except BaseException as exc:  # the end of the connection, whatever it was
                with lock:
                    ended.append(exc)
                    lock.notify_all()
                return
            sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()
            with lock:
                state["received"] += len(data)
                lock.notify_all()

    def writer() -> None:
        try:
            for line in sys.stdin:
                data = line.encode()
                connection.send(data)
                with lock:
                    state["sent"] += len(data)
        except DTLSError:
            pass  # the connection ended: the reader reports why
        with lock:
            state["eof"] = True
            lock.notify_all()

    if sys.stdin.isatty():
        print("type lines to send them, Ctrl-D to end", file=sys.stderr, flush=True)
    for target, name in ((reader, "reader"), (writer, "writer")):
        threading.Thread(target=target, name=f"dtlskit-client-{name}", daemon=True).start()
    with lock:
        while not ended and not state["eof"]:
            lock.wait()
        while not ended and state["received"] < state["sent"]:
            before = state["received"]
            lock.wait(timeout)
            if state["received"] == before and not ended:
                break  # silence for `timeout` seconds: the server does not echo
        error = ended[0] if ended else None
    if error is not None and not isinstance(error, ConnectionClosedByPeer):
        if isinstance(error, DTLSError):
            raise error
        raise TransportError(0, f"the connection failed: {error}")
