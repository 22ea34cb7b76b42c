"""The ``dtlskit`` command: ``certs``, ``demo``, ``server`` and ``client``.

Each subcommand is one ``_cmd_*`` function taking the parsed arguments and returning the exit
status, plus one ``_add_*_parser`` block declaring its flags; :func:`build_parser` lists the
blocks. Errors are reported by :func:`main` as one line on stderr (``dtlskit: error: ...``)
naming the cause; ``--debug`` shows the traceback instead.

Exit status: 0 success, 1 failure (refused, timeout, certificate problem, ...), 2 usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from OpenSSL import SSL

from . import __version__, certs, udp
from . import asyncio as dtlskit_asyncio
from . import sync as dtlskit_sync
from ._accel import ACCELERATOR
from ._sockets import Address, format_address, probe_bind
from .config import DTLSConfiguration
from .core.connection import ConnectionStatistics
from .core.session import Session
from .exceptions import (
    CertificateVerificationError,
    ConfigurationError,
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    ConnectionLost,
    ConnectionRefused,
    DTLSError,
    DTLSTimeoutError,
    HandshakeFailure,
    HandshakeTimeout,
    TransportError,
    VerificationReason,
)

__all__ = ["build_parser", "describe_error", "main"]

logger = logging.getLogger("dtlskit.cli")

DEFAULT_PORT = 4433
DEFAULT_TIMEOUT = 10.0
_WILDCARDS = (None, "", "::", "0.0.0.0")


class UsageError(Exception):
    """Flags that contradict each other; reported like an argparse error (exit status 2)."""


# -- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dtlskit`` command line; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # The benchmark harness parses its own flags (`dtlskit bench --help` lists them).
        return _cmd_bench(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    _setup_logging(args)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        if args.debug:
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "certs_command", None))))
        print(f"dtlskit {command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"dtlskit: error: {describe_error(exc)}", file=sys.stderr)
        return 1


def describe_error(exc: BaseException) -> str:
    """One line naming the cause of a failure, in words, for the command line."""
    if isinstance(exc, CertificateVerificationError):
        reason = exc.reason
        hint = ""
        if reason is VerificationReason.UNKNOWN_ISSUER:
            hint = " (is --ca the CA that issued the server's certificate?)"
        elif reason in (
            VerificationReason.HOSTNAME_MISMATCH,
            VerificationReason.IP_ADDRESS_MISMATCH,
        ):
            hint = " (use --server-name with a name the certificate carries)"
        elif reason is VerificationReason.CERTIFICATE_REQUIRED:
            hint = " (the server wants a client certificate: give --cert and --key)"
        return f"certificate verification failed: {exc}{hint}"
    if isinstance(exc, HandshakeTimeout | DTLSTimeoutError):
        return f"timed out: {exc}"
    if isinstance(exc, HandshakeFailure):
        return f"handshake failed: {exc}"
    if isinstance(exc, ConnectionRefused):
        return f"connection refused: {exc.strerror or exc}"
    if isinstance(exc, ConnectionClosedByPeer):
        return f"the peer closed the session: {exc}"
    if isinstance(exc, ConnectionLost):
        return f"connection lost: {exc}"
    if isinstance(exc, ConfigurationError):
        return f"configuration error: {exc}"
    if isinstance(exc, TransportError):
        return f"network error: {exc.strerror or exc}"
    if isinstance(exc, DTLSError):
        return str(exc)
    if isinstance(exc, SSL.Error):  # should not escape dtlskit; say what OpenSSL said anyway
        items = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        reasons = [str(item[-1]) for item in items if isinstance(item, tuple) and item]
        return f"OpenSSL: {', '.join(reasons) or exc}"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for a traceback)"


def _setup_logging(args: argparse.Namespace) -> None:
    more = 10 * (2 if args.debug else args.verbose)
    level = max(logging.DEBUG, args.log_level - more)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )


def _out(text: str = "") -> None:
    """Print a line to stdout at once (a parent process may be waiting for it)."""
    print(text, flush=True)


def _with_keylog(config: DTLSConfiguration) -> DTLSConfiguration:
    """Honour SSLKEYLOGFILE (NSS key log, readable by Wireshark): debugging only. The library
    warns (logger ``dtlskit.security``, shown at the default verbosity) when it opens the file,
    and refuses a symbolic link or a file others may read."""
    path = os.environ.get("SSLKEYLOGFILE")
    if not path:
        return config
    return config.replace(keylog_file=path)


def _subject(cert: Any) -> str:
    """A certificate's subject, or a note that there was none."""
    if cert is None:
        return "(none)"
    return str(cert.subject.rfc4514_string()) or "(empty subject)"


# -- certs --------------------------------------------------------------------------------------


def _cmd_certs_init(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    hosts = [host.strip() for host in args.hosts.split(",") if host.strip()]
    if not hosts:
        raise UsageError("--hosts names no host")
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    names = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")
    existing = [name for name in names if (directory / name).exists()]
    if existing and not args.force:
        raise UsageError(
            f"{directory} already holds {', '.join(existing)}: choose another directory, "
            "or pass --force to replace them"
        )
    files = certs.create_pki(
        directory,
        key_type=args.key_type,
        rsa_bits=args.rsa_bits,
        hosts=hosts,
        days=args.days,
        password=args.password,
    )
    key = "EC P-256" if args.key_type == "ec" else f"RSA {args.rsa_bits}"
    password = " --key-password PASSWORD" if args.password else ""
    _out(f"wrote a CA, a server and a client certificate ({key}, {args.days} days) to {directory}:")
    _out("  " + "  ".join(names))
    _out(f"the server certificate is for {', '.join(hosts)}; try:")
    _out(f"  dtlskit server --cert {files.server_cert} --key {files.server_key}{password}")
    _out(f"  dtlskit client {hosts[0]} {DEFAULT_PORT} --ca {files.ca_cert}")
    return 0


def _cmd_certs_sign_csr(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    csr_path = Path(args.csr)
    try:
        csr_pem = csr_path.read_bytes()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read CSR ({exc.strerror})", str(csr_path)) from exc
    ca = (
        certs.load_certificate(args.ca_cert),
        certs.load_private_key(args.ca_key, args.ca_password),
    )
    cert = certs.sign_csr(csr_pem, ca, days=args.days, server=not args.client, client=args.client)
    pem = certs.certificate_pem(cert)
    if args.output is None:
        sys.stdout.buffer.write(pem)
        sys.stdout.flush()
        return 0
    Path(args.output).write_bytes(pem)
    kind = "client" if args.client else "server"
    _out(
        f"wrote {args.output}: {kind} certificate for {_subject(cert)}, valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )
    return 0


def _cmd_certs_show(args: argparse.Namespace) -> int:
    found = certs.load_certificates(args.file)
    now = datetime.now(timezone.utc)
    for index, cert in enumerate(found, 1):
        if len(found) > 1:
            _out(f"Certificate {index} of {len(found)}")
        _out(certs.describe_certificate(cert))
        if now < cert.not_valid_before_utc:
            status = "not yet valid"
        elif now > cert.not_valid_after_utc:
            status = "EXPIRED"
        else:
            days = round((cert.not_valid_after_utc - now).total_seconds() / 86400)
            status = f"valid, expires in {days} days"
        _out(f"Status:            {status}")
        if index < len(found):
            _out()
    return 0


def _add_certs_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    certs_parser = commands.add_parser(
        "certs",
        help="create, sign and inspect certificates",
        description="Create a small PKI, sign certificate requests, describe certificates.",
    )
    actions = certs_parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        parents=[common],
        help="write a CA, a server and a client certificate with their keys",
        description="Write ca.pem, ca.key, server.pem, server.key, client.pem and client.key "
        "to DIR (created if missing; keys readable by the owner only).",
    )
    init.add_argument("directory", metavar="DIR", help="directory to write the files to")
    init.add_argument(
        "--key-type", choices=("ec", "rsa"), default="ec", help="key algorithm (default: ec, P-256)"
    )
    init.add_argument(
        "--rsa-bits",
        type=int,
        choices=(2048, 3072, 4096),
        default=2048,
        help="RSA key size with --key-type rsa (default: 2048)",
    )
    init.add_argument(
        "--hosts",
        default="localhost,127.0.0.1,::1",
        help="comma-separated DNS names and IP addresses of the server certificate "
        "(default: localhost,127.0.0.1,::1)",
    )
    init.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    init.add_argument(
        "--password",
        help="encrypt the key files with this password (visible to other local users in the "
        "process list: prefer it for throwaway set-ups)",
    )
    init.add_argument("--force", action="store_true", help="replace files that already exist")
    init.set_defaults(func=_cmd_certs_init)

    sign = actions.add_parser(
        "sign-csr",
        parents=[common],
        help="issue a certificate for a certificate signing request",
        description="Issue a certificate for CSR (PEM), keeping its subject and "
        "subjectAltName, signed by the given CA.",
    )
    sign.add_argument("csr", metavar="CSR", help="PEM certificate signing request")
    sign.add_argument("--ca-cert", required=True, metavar="FILE", help="CA certificate (PEM)")
    sign.add_argument("--ca-key", required=True, metavar="FILE", help="CA private key (PEM)")
    sign.add_argument("--ca-password", metavar="PASS", help="password of an encrypted CA key")
    sign.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    sign.add_argument(
        "--client",
        action="store_true",
        help="issue a client certificate (clientAuth) instead of a server one (serverAuth)",
    )
    sign.add_argument(
        "-o", "--output", metavar="OUT", help="write the certificate here (default: stdout)"
    )
    sign.set_defaults(func=_cmd_certs_sign_csr)

    show = actions.add_parser(
        "show",
        parents=[common],
        help="describe the certificates in a file",
        description="Print subject, issuer, subjectAltNames, validity, key and SHA-256 "
        "fingerprint of every certificate in FILE (PEM or DER).",
    )
    show.add_argument("file", metavar="FILE", help="certificate file (PEM chain or DER)")
    show.set_defaults(func=_cmd_certs_show)


# -- demo ---------------------------------------------------------------------------------------

_DEMO_MESSAGES = (b"hello, DTLS", b"one datagram, one message", b"bye")


def _cmd_demo(args: argparse.Namespace) -> int:
    asyncio.run(_demo())
    return 0


async def _demo() -> None:
    with tempfile.TemporaryDirectory(prefix="dtlskit-demo-") as tmp:
        pki = certs.create_pki(tmp)
        _out(f"dtlskit {__version__} demo: a DTLS echo server and client on loopback")
        _out(f"made a throwaway CA, server and client certificate in {tmp}")
        server_config = _with_keylog(
            DTLSConfiguration.server(
                pki.server_cert,
                pki.server_key,
                cafile=pki.ca_cert,
                verify_mode=ssl.CERT_REQUIRED,
            )
        )
        client_config = _with_keylog(
            DTLSConfiguration.client(
                cafile=pki.ca_cert, certfile=pki.client_cert, keyfile=pki.client_key
            )
        )
        loop = asyncio.get_running_loop()
        seen_client: asyncio.Future[str] = loop.create_future()
        finished: asyncio.Future[tuple[ConnectionStatistics, bool]] = loop.create_future()

        async def echo(channel: dtlskit_asyncio.Channel) -> None:
            seen_client.set_result(_subject(channel.peer_certificate))
            closed_by_peer = False
            try:
                async for message in channel:
                    await channel.send(message)
                closed_by_peer = isinstance(await _end_of(channel), ConnectionClosedByPeer)
            finally:
                finished.set_result((channel.statistics(), closed_by_peer))

        async with dtlskit_asyncio.serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            _out(f"server  listening on 127.0.0.1:{port}")
            started = time.perf_counter()
            channel = await dtlskit_asyncio.connect(
                "127.0.0.1", port, config=client_config, timeout=DEFAULT_TIMEOUT
            )
            async with channel:
                elapsed = time.perf_counter() - started
                shake = channel.statistics().handshake_seconds
                _out(
                    f"client  handshake done in {1000 * (shake or elapsed):.1f} ms: "
                    f"{channel.version}, {channel.cipher}"
                    + (", resumed" if channel.session_reused else "")
                )
                _out(f"client  server certificate {_subject(channel.peer_certificate)} (verified)")
                client_subject = await asyncio.wait_for(seen_client, DEFAULT_TIMEOUT)
                _out(f"server  client certificate {client_subject} (verified)")
                for message in _DEMO_MESSAGES:
                    await channel.send(message)
                    reply = await asyncio.wait_for(channel.recv(), DEFAULT_TIMEOUT)
                    _out(f"client  sent {message!r}, echoed {reply!r}")
            server_stats, closed_by_peer = await asyncio.wait_for(finished, DEFAULT_TIMEOUT)
            totals = server.statistics()
        client_stats = channel.statistics()
        _print_demo_statistics(client_stats, server_stats, sum(totals.drops.values()))
        _out(
            f"        (and {totals.hello_verify_requests_sent} stateless cookie exchange: the "
            "server kept no state until the client proved its address)"
        )
        if closed_by_peer:
            _out("closed  client sent close_notify, server saw it; bye")
        else:
            _out("closed  the session ended without close_notify reaching the server")


async def _end_of(channel: dtlskit_asyncio.Channel) -> DTLSError | None:
    """After iteration stopped: the error that ended the session (recv raises it again)."""
    try:
        await channel.recv()
    except DTLSError as exc:
        return exc
    return None


def _print_demo_statistics(
    client: ConnectionStatistics, server: ConnectionStatistics, server_socket_drops: int
) -> None:
    rows = (
        ("datagrams sent", client.datagrams_sent, server.datagrams_sent),
        ("datagrams received", client.datagrams_received, server.datagrams_received),
        ("bytes sent", client.bytes_sent, server.bytes_sent),
        ("bytes received", client.bytes_received, server.bytes_received),
        ("retransmissions", client.retransmissions, server.retransmissions),
        ("drops", sum(client.drops.values()), sum(server.drops.values()) + server_socket_drops),
    )
    _out(f"stats   {'':<20}{'client':>8}{'server':>8}")
    for name, mine, theirs in rows:
        _out(f"        {name:<20}{mine:>8}{theirs:>8}")


def _add_demo_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run a DTLS echo server and client on loopback and show what happens",
        description="Make a throwaway CA in a temporary directory, start a DTLS server and a "
        "client on loopback (mutual certificate authentication), echo a few messages, print "
        "the handshake and the statistics of both sides, and close cleanly. Needs no files.",
    )
    demo.set_defaults(func=_cmd_demo)


# -- server -------------------------------------------------------------------------------------


def _cmd_server(args: argparse.Namespace) -> int:
    if args.transport in ("tls", "tcp"):  # TLS over TCP (issue 10): dtlskit/tls/_cli.py
        from .tls import _cli as tls_cli

        return tls_cli.run_server(
            args,
            server_config=_server_config,
            client_command=_client_command,
            out=_out,
            usage=UsageError,
        )
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.workers > 1 and args.port == 0:
        raise UsageError("--workers needs a fixed --port (with port 0 each worker gets its own)")
    if args.transport == "udp":
        _reject_tls_flags(args, ("cert", "key", "key_password", "ca", "mtu", "psk"))
        if args.require_client_cert:
            raise UsageError("--require-client-cert needs --transport dtls")
        if args.workers != 1:
            raise UsageError("--workers needs --transport dtls")
        return _serve_udp(args.host, args.port)
    config, client_hint = _server_config(args)
    if args.workers > 1:
        # Bind once here, before any fork: a port already taken is one error line, not one
        # traceback per worker; and the banner names what the workers will bind.
        where = ", ".join(format_address(a) for a in probe_bind(args.host, args.port))
        _out(
            f"dtlskit server: DTLS echo on {where} with {args.workers} worker processes "
            "(Ctrl-C to stop)"
        )
        if client_hint:
            _out(f"connect with:  {_client_command(args.host, args.port, client_hint)}")
        return dtlskit_asyncio.run_server(
            _echo_handler, args.host, args.port, config=config, workers=args.workers
        )
    asyncio.run(_serve_dtls(args.host, args.port, config, client_hint))
    return 0


def _server_config(args: argparse.Namespace) -> tuple[DTLSConfiguration, str]:
    """The server's configuration, and the client flags that trust it (dev PKI only)."""
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    hint = ""
    ca = args.ca
    psk = _psk_table(args.psk)
    cert: str | None
    key: str | None
    if args.cert:
        cert, key = args.cert, args.key
    elif psk and not args.require_client_cert:
        cert = key = None  # a PSK-only server needs no certificate
        hint = " ".join(f"--psk {value}" for value in args.psk)
    else:
        if args.key_password:
            raise UsageError("--key-password needs --cert and --key")
        pki = certs.dev_pki()
        cert, key = str(pki.server_cert), str(pki.server_key)
        hint = f"--ca {pki.ca_cert}"
        logger.info("no --cert given: using the development PKI in %s", pki.directory)
        if args.require_client_cert:
            ca = ca or str(pki.ca_cert)
            hint += f" --cert {pki.client_cert} --key {pki.client_key}"
    if args.require_client_cert and not ca:
        raise UsageError(
            "--require-client-cert needs --ca (the CA that issued client certificates)"
        )
    mode = None
    if ca:
        mode = ssl.CERT_REQUIRED if args.require_client_cert else ssl.CERT_OPTIONAL
    settings: dict[str, Any] = {"cafile": ca, "verify_mode": mode}
    if args.mtu is not None:
        settings["mtu"] = args.mtu
    if args.recv_buffer_size is not None:
        settings["recv_buffer_size"] = args.recv_buffer_size
    if psk:
        settings["psk_lookup"] = psk
    config = _with_keylog(DTLSConfiguration.server(cert, key, args.key_password, **settings))
    config.build_context(server=True)  # fail now, in one line, if a file cannot be loaded
    return config, hint


def _client_command(host: str | None, port: int, flags: str) -> str:
    target = "localhost" if host in _WILDCARDS else host
    return f"dtlskit client {target} {port} {flags}".rstrip()


async def _serve_dtls(host: str | None, port: int, config: DTLSConfiguration, hint: str) -> None:
    async with dtlskit_asyncio.serve(_echo_handler, host, port, config=config) as server:
        dtlskit_asyncio.install_signal_handlers(server)
        where = ", ".join(format_address(address) for address in server.addresses)
        bound = int(server.addresses[0][1])
        _out(f"dtlskit server: DTLS echo on {where} (Ctrl-C to stop)")
        if hint:
            _out(f"connect with:  {_client_command(host, bound, hint)}")
        await server.serve_forever()
        totals = server.statistics()
    logger.info(
        "stopped: %d handshakes completed, %d failed, drops %s",
        totals.handshakes_completed,
        totals.handshakes_failed,
        totals.drops or "none",
    )


async def _echo_handler(channel: dtlskit_asyncio.Channel) -> None:
    """Echo every message back unchanged; log the peer's arrival and how its session ended."""
    peer = format_address(channel.getpeername())
    client_cert = channel.peer_certificate
    logger.info(
        "%s connected: %s, %s%s",
        peer,
        channel.version,
        channel.cipher,
        f", client certificate {_subject(client_cert)}" if client_cert is not None else "",
    )
    echoed = 0
    try:
        while True:
            message = await channel.recv()
            await channel.send(message)
            echoed += 1
    except ConnectionClosedByPeer:
        logger.info("%s closed the session (%d message(s) echoed)", peer, echoed)
    except ConnectionClosedLocally:
        logger.info("%s: session closed by the server (%d message(s) echoed)", peer, echoed)
    except DTLSError as exc:
        logger.warning("%s: session ended: %s (%d message(s) echoed)", peer, exc, echoed)


def _serve_udp(host: str | None, port: int) -> int:
    seen: set[Address] = set()

    def on_datagram(address: Address, size: int) -> None:
        if address not in seen:
            if len(seen) >= 4096:  # bounded: forget, and log newcomers again
                seen.clear()
            seen.add(address)
            logger.info("%s sent its first datagram", format_address(address))
        logger.debug("%s: %d bytes echoed", format_address(address), size)

    with (
        udp.UDPEchoServer(host, port, on_datagram=on_datagram) as server,
        _on_signals(server.shutdown),
    ):
        where = ", ".join(format_address(address) for address in server.addresses)
        _out(f"dtlskit server: plain UDP echo on {where} (Ctrl-C to stop)")
        bound = int(server.addresses[0][1])
        _out(f"connect with:  {_client_command(host, bound, '--transport udp')}")
        server.serve_forever()
        stats = server.statistics
    logger.info(
        "stopped: %d datagrams echoed (%d bytes), %d send errors",
        stats.datagrams_sent,
        stats.bytes_sent,
        stats.send_errors,
    )
    return 0


@contextlib.contextmanager
def _on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` on SIGINT/SIGTERM while the block runs; restore the handlers after it."""

    def handle(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _port(text: str) -> int:
    """argparse type of a UDP port number: a usage error (exit status 2) outside 0..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {port}")
    return port


def _reject_tls_flags(args: argparse.Namespace, names: Iterable[str]) -> None:
    for name in names:
        if getattr(args, name, None):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} has no meaning with --transport udp")


def _add_transport_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=("dtls", "udp", "tls", "tcp"),
        default="dtls",
        help="dtls (default), or plain udp: the same echo without any security, for comparison; "
        "tls: TLS 1.2/1.3 over TCP with the same flags (the client is interactive like "
        "openssl s_client), or plain tcp",
    )


def _add_server_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    server = commands.add_parser(
        "server",
        parents=[common],
        help="run an echo server (every message is sent back unchanged)",
        description="Run a DTLS echo server. Without --cert it uses the development PKI "
        "(cached in ~/.cache/dtlskit/dev-pki) and prints the client command that trusts it. "
        "SIGINT/SIGTERM close every session with close_notify and exit 0.",
    )
    server.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: every interface, IPv4 and IPv6)",
    )
    server.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"UDP port (default: {DEFAULT_PORT})"
    )
    server.add_argument("--cert", metavar="FILE", help="server certificate chain (PEM)")
    server.add_argument(
        "--key", metavar="FILE", help="private key of --cert (default: read from --cert)"
    )
    server.add_argument("--key-password", metavar="PASS", help="password of an encrypted --key")
    server.add_argument(
        "--ca",
        metavar="FILE",
        help="CA certificates (PEM) that client certificates are verified against; "
        "clients without one are still accepted unless --require-client-cert",
    )
    server.add_argument(
        "--require-client-cert",
        action="store_true",
        help="refuse clients without a certificate issued by --ca (mutual authentication)",
    )
    server.add_argument(
        "--psk",
        action="append",
        metavar="IDENTITY:HEXKEY",
        help="accept clients presenting this pre-shared key (RFC 4279; repeatable); "
        "without --cert the server is PSK-only",
    )
    server.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N processes sharing the port with SO_REUSEPORT (needs a fixed --port)",
    )
    server.add_argument(
        "--mtu", type=int, metavar="N", help="largest datagram to send, 256..65507 (default: 1200)"
    )
    server.add_argument(
        "--recv-buffer-size",
        type=int,
        metavar="BYTES",
        help="socket receive buffer to ask the kernel for (default: 4194304; the kernel caps it "
        "at net.core.rmem_max). UDP has no flow control: what overflows it is dropped and "
        "counted",
    )
    _add_transport_flags(server)
    server.set_defaults(func=_cmd_server, log_level=logging.INFO)


# -- client -------------------------------------------------------------------------------------


def _cmd_client(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    if any(not message for message in args.message or ()):
        raise UsageError("--message must not be empty (DTLS sends no empty records)")
    if args.transport in ("tls", "tcp"):  # TLS over TCP (issue 10): dtlskit/tls/_cli.py
        from .tls import _cli as tls_cli

        return tls_cli.run_client(
            args,
            _client_messages(args.message, args.count, sys.stdin) if args.message else iter(()),
            keylog=_with_keylog,
            load_session=_load_session,
            psk_table=_psk_table,
            out=_out,
            usage=UsageError,
        )
    messages = _client_messages(args.message, args.count, sys.stdin)
    if args.transport == "udp":
        _reject_tls_flags(
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
        ((identity, psk_key),) = _psk_table(args.psk).items()
        settings["psk"] = (identity, psk_key)
    config = _with_keylog(DTLSConfiguration.client(args.ca, args.server_name, **settings))
    session = _load_session(args.session_file)
    started = time.perf_counter()
    with dtlskit_sync.connect(
        args.host, args.port, config=config, timeout=args.timeout, session=session
    ) as channel:
        if args.session_file:
            _out(f"session reused: {'yes' if channel.session_reused else 'no'}")
            if channel.session is not None:
                channel.session.save(args.session_file)
        logger.info(
            "connected to %s in %.1f ms: %s, %s, server certificate %s%s",
            format_address(channel.getpeername()),
            1000 * (time.perf_counter() - started),
            channel.version,
            channel.cipher,
            _subject(channel.peer_certificate),
            " (NOT verified: --no-verify)" if args.no_verify else "",
        )
        for message in messages:
            channel.send(message)
            _print_reply(channel.recv(timeout=args.timeout))
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


def _psk_table(values: list[str] | None) -> dict[str, bytes]:
    """``IDENTITY:HEXKEY`` flags as an identity -> key table."""
    table: dict[str, bytes] = {}
    for value in values or ():
        identity, sep, hex_key = value.rpartition(":")
        if not sep or not identity:
            raise UsageError(f"--psk takes IDENTITY:HEXKEY, not {value!r}")
        try:
            key = bytes.fromhex(hex_key)
        except ValueError:
            raise UsageError(f"--psk key for {identity!r} is not hexadecimal") from None
        if not key:
            raise UsageError(f"--psk key for {identity!r} is empty")
        table[identity] = key
    return table


def _udp_client(host: str, port: int, messages: Iterator[bytes], timeout: float) -> int:
    with udp.UDPClient(host, port) as client:
        logger.info("sending plain UDP to %s", format_address(client.peer))
        for message in messages:
            client.send(message)
            _print_reply(client.recv(timeout))
    return 0


def _print_reply(reply: bytes) -> None:
    sys.stdout.write(reply.decode("utf-8", "replace") + "\n")
    sys.stdout.flush()


def _add_client_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    client = commands.add_parser(
        "client",
        parents=[common],
        help="send messages to an echo server and print the replies",
        description="Connect to HOST PORT, send each --message (or else each line of stdin) "
        "and print each reply. On failure print one line naming the cause and exit 1.",
    )
    client.add_argument("host", metavar="HOST", help="server name or IP address")
    client.add_argument("port", metavar="PORT", type=_port, help="server UDP port")
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
    _add_transport_flags(client)
    client.set_defaults(func=_cmd_client)


# -- the parser ---------------------------------------------------------------------------------


# -- bench --------------------------------------------------------------------------------------


def _cmd_bench(argv: list[str]) -> int:
    # benchmarks/ of the repository, installed as the subpackage dtlskit.benchmarks.
    run = importlib.import_module("dtlskit.benchmarks.run")
    return int(run.main(argv))


def _add_bench_parser(commands: Any) -> None:
    commands.add_parser(
        "bench",
        help="measure server CPU per message and per handshake, round trips, memory per "
        "session and silent loss against ceilings and floors measured in the same run "
        "(see: dtlskit bench --help)",
        add_help=False,
    )


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("logging")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more; repeat for even more (-vv: debug logs of the library)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        help="log everything and show a traceback instead of a one-line error",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dtlskit`` command. A subcommand is one ``_add_*_parser``
    block here plus its ``_cmd_*`` function."""
    parser = argparse.ArgumentParser(
        prog="dtlskit",
        description="Secure sessions over UDP (DTLS 1.2): certificates, an echo server and "
        "client, and a self-contained demo. Start with: dtlskit demo",
        epilog="Environment: SSLKEYLOGFILE=PATH appends the session secrets (NSS key log "
        "format, for Wireshark) to PATH, created mode 0600 (a symbolic link or a file others "
        "can read is refused), with a warning on stderr; for debugging only. Exit status: 0 "
        "success, 1 failure "
        "(one line on stderr names the cause), 2 usage error, 130 interrupted.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"dtlskit {__version__} (accelerator: {ACCELERATOR})",
        help="show the version and which record path is active: native (the C extension) or "
        "python (DTLSKIT_NATIVE=0, or no compiler at install time), then exit",
    )
    parser.set_defaults(log_level=logging.WARNING)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    _add_demo_parser(commands, common)
    _add_server_parser(commands, common)
    _add_client_parser(commands, common)
    _add_certs_parser(commands, common)
    _add_bench_parser(commands)
    return parser
