"""``dtlskit client``: send messages to an echo server and print the replies."""

from __future__ import annotations

import argparse
import os
import queue
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from .. import sync as dtlskit_sync
from .. import udp
from .._frontend.sockets import format_address
from ..config import DTLSConfiguration
from ..core.session import Session
from ..exceptions import (
    ConnectionClosedByPeer,
    DTLSError,
    DTLSTimeoutError,
)
from . import quic as quic_cli
from ._common import (
    DEFAULT_TIMEOUT,
    UsageError,
    add_transport_flags,
    add_verify_time_flag,
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
    if args.transport in ("tls", "tcp"):  # TLS over TCP (issue 10): cli/tls.py
        from .tls import run_client

        given = _client_messages(args.message, args.count, sys.stdin) if args.message else None
        return run_client(args, given or iter(()))
    messages = _client_messages(args.message, args.count, sys.stdin)
    quic_cli.check_flags(args)
    if args.transport == "quic":
        return quic_cli.client(args, messages)
    if args.transport == "udp":
        reject_tls_flags(
            args,
            (
                "ca",
                "cert",
                "key",
                "key_password",
                "server_name",
                "no_verify",
                "mtu",
                "psk",
                "alpn",
                "session_file",
                "verify_time",
                "new_port_after_lost_flights",
            ),
        )
        return _udp_client(args.host, args.port, messages, args.timeout)
    return _dtls_client(args, messages)


def lost_flights_value(text: str) -> int | str:
    """argparse type of ``--new-port-after-lost-flights``: a positive integer or ``none``."""
    if text.lower() == "none":
        return "none"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"takes a positive integer or none, not {text!r}"
        )
    return value


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


_QUEUE_SIZE = 256  # input lines and received messages waiting for the main thread


def _dtls_client(args: argparse.Namespace, messages: Iterator[bytes]) -> int:
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    if args.key_password and not args.cert:
        raise UsageError("--key-password needs --cert")
    _check_session_file(args.session_file)
    settings: dict[str, Any] = {
        "certfile": args.cert,
        "keyfile": args.key,
        "password": args.key_password,
    }
    if args.no_verify:
        settings.update(verify_mode=ssl.CERT_NONE, check_hostname=False)
    if args.mtu is not None:
        settings["mtu"] = args.mtu
    if args.recv_buffer_size is not None:
        settings["recv_buffer_size"] = args.recv_buffer_size
    if args.alpn:
        settings["alpn_protocols"] = args.alpn
    if args.psk:
        if len(args.psk) > 1:
            raise UsageError("a client uses one --psk IDENTITY:HEXKEY")
        ((identity, psk_key),) = psk_table(args.psk).items()
        settings["psk"] = (identity, psk_key)
    if args.verify_time is not None:
        settings["verify_time"] = args.verify_time
    if args.new_port_after_lost_flights is not None:
        lost = args.new_port_after_lost_flights
        settings["new_port_after_lost_flights"] = None if lost == "none" else lost
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
        if args.alpn:
            logger.info("ALPN protocol: %s", channel.alpn_protocol)
        _converse(channel, messages, args.timeout)
        stats = channel.statistics()
    logger.info(
        "closed: %d datagrams sent, %d received, %d retransmissions",
        stats.datagrams_sent,
        stats.datagrams_received,
        stats.retransmissions,
    )
    return 0


def _converse(channel: dtlskit_sync.Channel, messages: Iterator[bytes], timeout: float) -> None:
    """Send ``messages`` and print whatever the server sends, both at once (full duplex, like
    ``openssl s_client``): what the server sends first is printed at once, and a close_notify
    ends the conversation at once, even while the input is still open. At the end of the
    input, replies still owed (one per message sent: an echo server's) are awaited for up to
    ``timeout`` seconds before the session is closed.

    Two daemon threads feed one bounded queue (the input, and the channel's messages); this
    thread alone sends and prints, so the order of the output is the order of arrival.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_QUEUE_SIZE)

    def read_input() -> None:
        try:
            for message in messages:
                events.put(("send", message))
        except Exception as exc:  # an unreadable stdin: end the conversation with it
            events.put(("failed", exc))
            return
        events.put(("eof", None))

    def read_channel() -> None:
        try:
            while True:
                events.put(("message", channel.recv()))
        except DTLSError as exc:
            events.put(("ended", exc))

    for target, name in ((read_input, "input"), (read_channel, "channel")):
        threading.Thread(target=target, name=f"dtlskit-client-{name}", daemon=True).start()
    sent = replied = 0
    deadline: float | None = None
    while deadline is None or replied < sent:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            kind, value = events.get(timeout=wait)
        except queue.Empty:
            owed = sent - replied
            raise DTLSTimeoutError(
                f"no reply to {owed} message{'s' if owed != 1 else ''} within {timeout:g} s "
                "of the end of the input"
            ) from None
        if kind == "send":
            channel.send(value)
            sent += 1
        elif kind == "message":
            print_reply(value)
            replied += 1
        elif kind == "eof":
            deadline = time.monotonic() + timeout
            if replied < sent:
                logger.info(
                    "end of input: waiting up to %g s for %d reply(ies) still owed",
                    timeout,
                    sent - replied,
                )
        elif kind == "failed":
            raise value
        elif isinstance(value, ConnectionClosedByPeer):
            print("dtlskit client: the server closed the session (close_notify)", file=sys.stderr)
            return
        else:
            raise value


def _check_session_file(path: str | None) -> None:
    """Refuse, before any handshake, a --session-file the new session could not be saved to."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--session-file {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"--session-file {path} is a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--session-file {path}: the folder {folder} is not writable")


def _load_session(path: str | None) -> Session | None:
    """The session saved in ``path`` by an earlier run, or None (first run, or unreadable)."""
    if not path:
        return None
    if not os.path.exists(path):
        logger.info("no session saved in %s yet: a full handshake", path)
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
        help="send messages to a server and print what it sends (full duplex)",
        description="Connect to HOST PORT, send each --message (or else each line of stdin) "
        "and print every message the server sends as it arrives, like openssl s_client: what "
        "the server sends first is printed at once, and a close_notify from the server ends "
        "the client at once (exit 0). At the end of the input the client waits up to "
        "--timeout seconds for the replies still owed (one per message sent, as an echo "
        "server gives), then closes the session. On failure print one line naming the cause "
        "and exit 1.",
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
    client.add_argument("--key-password", metavar="PASS", help="password of an encrypted --key")
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
        "--alpn",
        action="append",
        metavar="PROTOCOL",
        help="offer this ALPN protocol (RFC 7301; repeatable, in order of preference)",
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
        help="seconds to wait for the handshake, and at the end of the input for the replies "
        f"still owed (default: {DEFAULT_TIMEOUT:g})",
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
    add_verify_time_flag(client)
    client.add_argument(
        "--new-port-after-lost-flights",
        type=lost_flights_value,
        metavar="N",
        help="after N flights in a row got no answer, start the handshake again from a new "
        "source port within the same --timeout, so that a load balancer picks a node again "
        "(config field new_port_after_lost_flights; default: 2; 'none' keeps one port)",
    )
    add_transport_flags(client)
    client.set_defaults(func=_cmd_client)
