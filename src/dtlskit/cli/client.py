"""``dtlskit client``: send messages to an echo server and print the replies."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from .. import sync as dtlskit_sync
from .. import udp
from .._frontend.sockets import format_address
from ..config import DTLSConfiguration
from ..core.session import Session
from ..exceptions import (
    DTLSError,
)
from ._common import (
    DEFAULT_TIMEOUT,
    UsageError,
    add_transport_flags,
    logger,
    out,
    port_number,
    print_reply,
    psk_table,
    reject_tls_flags,
    subject,
    with_keylog,
)


def _cmd_client(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    if any(not message for message in args.message or ()):
        raise UsageError("--message must not be empty (DTLS sends no empty records)")
    messages = _client_messages(args.message, args.count, sys.stdin)
    if args.transport == "udp":
        reject_tls_flags(
            args, ("ca", "cert", "key", "server_name", "no_verify", "mtu", "psk", "session_file")
        )
        return _udp_client(args.host, args.port, messages, args.timeout)
    return _dtls_client(args, messages)


def _client_messages(given: list[str] | None, count: int, stdin: TextIO) -> Iterator[bytes]:
    """The --message values (each ``count`` times), or else each non-empty line of stdin."""
    if given:
        for message in given:
            for _ in range(count):
                yield message.encode()
        return
    if stdin.isatty():
        print("type a line to send it, Ctrl-D to end", file=sys.stderr, flush=True)
    for line in stdin:
        text = line.rstrip("\r\n")
        if text:  # an empty line has nothing to send (DTLS sends no empty records)
            yield text.encode()


def _dtls_client(args: argparse.Namespace, messages: Iterator[bytes]) -> int:
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    settings: dict[str, Any] = {"certfile": args.cert, "keyfile": args.key}
    if args.no_verify:
        settings.update(verify_mode=ssl.CERT_NONE, check_hostname=False)
    if args.mtu is not None:
        settings["mtu"] = args.mtu
    if args.recv_buffer_size is not None:
        settings["recv_buffer_size"] = args.recv_buffer_size
    if args.psk:
        if len(args.psk) > 1:
            raise UsageError("a client uses one --psk IDENTITY:HEXKEY")
        ((identity, psk_key),) = psk_table(args.psk).items()
        settings["psk"] = (identity, psk_key)
    config = with_keylog(DTLSConfiguration.client(args.ca, args.server_name, **settings))
    session = _load_session(args.session_file)
    started = time.perf_counter()
    with dtlskit_sync.connect(
        args.host, args.port, config=config, timeout=args.timeout, session=session
    ) as channel:
        if args.session_file:
            out(f"session reused: {'yes' if channel.session_reused else 'no'}")
            if channel.session is not None:
                channel.session.save(args.session_file)
        logger.info(
            "connected to %s in %.1f ms: %s, %s, server certificate %s%s",
            format_address(channel.getpeername()),
            1000 * (time.perf_counter() - started),
            channel.version,
            channel.cipher,
            subject(channel.peer_certificate),
            " (NOT verified: --no-verify)" if args.no_verify else "",
        )
        for message in messages:
            channel.send(message)
            print_reply(channel.recv(timeout=args.timeout))
        stats = channel.statistics()
    logger.info(
        "closed: %d datagrams sent, %d received, %d retransmissions",
        stats.datagrams_sent,
        stats.datagrams_received,
        stats.retransmissions,
    )
    return 0


def _load_session(path: str | None) -> Session | None:
    """The session saved in ``path`` by an earlier run, or None (first run, or unreadable)."""
    if not path or not os.path.exists(path):
        return None
    try:
        return Session.load(path)
    except (OSError, DTLSError, ValueError) as exc:
        logger.warning("ignoring --session-file %s: %s", path, exc)
        return None


def _udp_client(host: str, port: int, messages: Iterator[bytes], timeout: float) -> int:
    with udp.UDPClient(host, port) as client:
        logger.info("sending plain UDP to %s", format_address(client.peer))
        for message in messages:
            client.send(message)
            print_reply(client.recv(timeout))
    return 0


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    client = commands.add_parser(
        "client",
        parents=[common],
        help="send messages to an echo server and print the replies",
        description="Connect to HOST PORT, send each --message (or else each line of stdin) "
        "and print each reply. On failure print one line naming the cause and exit 1.",
    )
    client.add_argument("host", metavar="HOST", help="server name or IP address")
    client.add_argument("port", metavar="PORT", type=port_number, help="server UDP port")
    client.add_argument(
        "--ca",
        metavar="FILE",
        help="CA certificates (PEM) to verify the server with (default: the system's CAs)",
    )
    client.add_argument("--cert", metavar="FILE", help="client certificate chain (PEM)")
    client.add_argument(
        "--key", metavar="FILE", help="private key of --cert (default: read from --cert)"
    )
    client.add_argument(
        "--server-name",
        metavar="NAME",
        help="name to send in SNI and to check the server certificate against (default: HOST)",
    )
    client.add_argument(
        "--no-verify",
        action="store_true",
        help="do not verify the server certificate (INSECURE: anyone can pose as the server; "
        "a warning says so on stderr)",
    )
    client.add_argument(
        "--psk",
        action="append",
        metavar="IDENTITY:HEXKEY",
        help="authenticate with a pre-shared key instead of certificates (RFC 4279)",
    )
    client.add_argument(
        "--session-file",
        metavar="FILE",
        help="resume the session saved in FILE (if any), save the new one to FILE (mode 0600, "
        "atomically; a symbolic link is refused), and print whether it was reused",
    )
    client.add_argument(
        "--message",
        "-m",
        action="append",
        metavar="M",
        help="message to send (repeatable); without it, lines are read from stdin",
    )
    client.add_argument(
        "--count", type=int, default=1, metavar="N", help="send each --message N times"
    )
    client.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the handshake and for each reply (default: {DEFAULT_TIMEOUT:g})",
    )
    client.add_argument(
        "--mtu", type=int, metavar="N", help="largest datagram to send, 256..65507 (default: 1200)"
    )
    client.add_argument(
        "--recv-buffer-size",
        type=int,
        metavar="BYTES",
        help="socket receive buffer to ask the kernel for (default: 4194304; the kernel caps it "
        "at net.core.rmem_max). UDP has no flow control: what overflows it is dropped and "
        "counted",
    )
    add_transport_flags(client)
    client.set_defaults(func=_cmd_client)
