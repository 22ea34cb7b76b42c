"""``dtlskit server``: a DTLS (or plain UDP) echo server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from datetime import datetime, timezone
from typing import Any

from .. import asyncio as dtlskit_asyncio
from .. import certs, udp
from .._frontend.sockets import Address, format_address, probe_bind
from ..config import DTLSConfiguration
from ..exceptions import (
    ConnectionClosedByPeer,
    ConnectionClosedLocally,
    DTLSError,
)
from . import quic as quic_cli
from ._common import (
    DEFAULT_PORT,
    UsageError,
    add_transport_flags,
    add_verify_time_flag,
    client_command,
    logger,
    on_signals,
    out,
    port_number,
    psk_table,
    reject_tls_flags,
    subject,
    with_keylog,
)


def _cmd_server(args: argparse.Namespace) -> int:
    if args.transport in ("tls", "tcp"):  # TLS over TCP (issue 10): cli/tls.py
        from .tls import run_server

        return run_server(args)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.workers > 1 and args.port == 0:
        raise UsageError("--workers needs a fixed --port (with port 0 each worker gets its own)")
    quic_cli.check_flags(args)
    if args.transport == "quic":
        return quic_cli.serve(args)
    if args.transport == "udp":
        reject_tls_flags(
            args, ("cert", "key", "key_password", "ca", "mtu", "psk", "alpn", "verify_time")
        )
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
        out(
            f"dtlskit server: DTLS echo on {where} with {args.workers} worker processes "
            "(Ctrl-C to stop)"
        )
        if client_hint:
            out(f"connect with:  {client_command(args.host, args.port, client_hint)}")
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
    psk = psk_table(args.psk)
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
    if args.alpn:
        settings["alpn_protocols"] = args.alpn
    if args.verify_time is not None:
        settings["verify_time"] = args.verify_time
    config = with_keylog(DTLSConfiguration.server(cert, key, args.key_password, **settings))
    config.build_context(server=True)  # fail now, in one line, if a file cannot be loaded
    if cert is not None:
        _warn_if_outside_validity(cert)
    return config, hint


def _warn_if_outside_validity(path: str) -> None:
    """Warn when the server's own certificate is expired or not yet valid: every client that
    verifies it will refuse the handshake (``certificate expired`` / ``not yet valid``)."""
    try:
        cert = certs.load_certificates(path)[0]
    except (DTLSError, OSError, ValueError, IndexError):  # loaded above; cannot happen
        return
    now = datetime.now(timezone.utc)
    if cert.not_valid_after_utc < now:
        logger.warning(
            "the server certificate %s expired on %s: clients that verify it will refuse the "
            "handshake (certificate has expired)",
            path,
            cert.not_valid_after_utc.isoformat(timespec="seconds"),
        )
    elif cert.not_valid_before_utc > now:
        logger.warning(
            "the server certificate %s is not valid before %s: clients that verify it will "
            "refuse the handshake until then (certificate is not yet valid)",
            path,
            cert.not_valid_before_utc.isoformat(timespec="seconds"),
        )


async def _serve_dtls(host: str | None, port: int, config: DTLSConfiguration, hint: str) -> None:
    async with dtlskit_asyncio.serve(_echo_handler, host, port, config=config) as server:
        dtlskit_asyncio.install_signal_handlers(server)
        where = ", ".join(format_address(address) for address in server.addresses)
        bound = int(server.addresses[0][1])
        out(f"dtlskit server: DTLS echo on {where} (Ctrl-C to stop)")
        if hint:
            out(f"connect with:  {client_command(host, bound, hint)}")
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
        f", client certificate {subject(client_cert)}" if client_cert is not None else "",
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
        on_signals(server.shutdown),
    ):
        where = ", ".join(format_address(address) for address in server.addresses)
        out(f"dtlskit server: plain UDP echo on {where} (Ctrl-C to stop)")
        bound = int(server.addresses[0][1])
        out(f"connect with:  {client_command(host, bound, '--transport udp')}")
        server.serve_forever()
        stats = server.statistics
    logger.info(
        "stopped: %d datagrams echoed (%d bytes), %d send errors",
        stats.datagrams_sent,
        stats.bytes_sent,
        stats.send_errors,
    )
    return 0


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
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
        "--port", type=port_number, default=DEFAULT_PORT, help=f"UDP port (default: {DEFAULT_PORT})"
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
        "--alpn",
        action="append",
        metavar="PROTOCOL",
        help="accept this ALPN protocol (RFC 7301; repeatable, in order of preference); a "
        "client offering none of them is refused (alert no_application_protocol)",
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
    add_verify_time_flag(server)
    add_transport_flags(server)
    server.set_defaults(func=_cmd_server, log_level=logging.INFO)
