"""``dtlskit server|client --transport quic``: seed 002's echo over QUIC (``--alpn``, repeatable).

The server reads each stream a client opens until FIN and echoes it on the same stream with
FIN (OpenSSL's QUIC echo server); the client sends each message on its own stream with FIN and
prints the answer read from that stream. Flags QUIC cannot honour are usage errors saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
from collections.abc import Iterator
from typing import Any

from .. import certs
from .._frontend.sockets import format_address
from ..config import DTLSConfiguration
from ..exceptions import ConnectionClosedByPeer, ConnectionClosedLocally, DTLSError
from ._common import UsageError, client_command, logger, out, print_reply, with_keylog

#: seed 002's ALPNs: what the server accepts without --alpn; the client offers the first
DEFAULT_ALPN = ("hq-interop", "http/1.0")


def check_flags(args: argparse.Namespace) -> None:
    """QUIC refuses what aioquic cannot do (``--alpn`` is shared with DTLS)."""
    if args.transport != "quic":
        return
    refused = {
        "psk": "QUIC (aioquic) has no external pre-shared keys",
        "require_client_cert": "aioquic servers cannot request client certificates",
        "session_file": "QUIC session tickets are not saved to files",
        "ca": "aioquic servers cannot verify client certificates",
    }
    for name, why in refused.items():
        if name == "ca" and not hasattr(args, "require_client_cert"):
            continue  # the client's --ca is the CA it trusts: fine
        if getattr(args, name, None):
            raise UsageError(f"--{name.replace('_', '-')} with --transport quic: {why}")
    if getattr(args, "workers", 1) != 1:
        raise UsageError("--workers needs --transport dtls")
    unhonoured = {
        "verify_time": "aioquic checks certificate dates against the system clock",
        "new_port_after_lost_flights": "QUIC's handshake keeps its source port",
    }
    for name, why in unhonoured.items():
        if getattr(args, name, None) is not None:
            raise UsageError(f"--{name.replace('_', '-')} with --transport quic: {why}")


def serve(args: argparse.Namespace) -> int:
    check_flags(args)
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    hint = ""
    if args.cert:
        cert, key = args.cert, args.key
    else:
        if args.key_password:
            raise UsageError("--key-password needs --cert and --key")
        pki = certs.dev_pki()
        cert, key = str(pki.server_cert), str(pki.server_key)
        hint = f"--ca {pki.ca_cert}"
        logger.info("no --cert given: using the development PKI in %s", pki.directory)
    settings: dict[str, Any] = {"alpn_protocols": args.alpn or DEFAULT_ALPN}
    if args.mtu is not None:
        settings["mtu"] = args.mtu
    if args.recv_buffer_size is not None:
        settings["recv_buffer_size"] = args.recv_buffer_size
    config = with_keylog(DTLSConfiguration.server(cert, key, args.key_password, **settings))
    asyncio.run(_serve(args.host, args.port, config, hint))
    return 0


async def _serve(host: str | None, port: int, config: DTLSConfiguration, hint: str) -> None:
    from .. import quic

    async with quic.serve(_echo_streams, host, port, config=config) as server:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.close)
        where = ", ".join(format_address(address) for address in server.addresses)
        alpn = ", ".join(config.alpn_protocols)
        out(f"dtlskit server: QUIC echo on {where}, ALPN {alpn} (Ctrl-C to stop)")
        bound = int(server.addresses[0][1])
        offer = f"--transport quic --alpn {config.alpn_protocols[0]}"
        out(f"connect with:  {client_command(host, bound, f'{hint} {offer}'.strip())}")
        try:
            await server.serve_forever()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        totals = server.statistics()
    logger.info("stopped: drops %s", dict(totals.drops) or "none")


async def _echo_streams(channel: Any) -> None:
    """Each stream the client opens, read to FIN, echoed on the same stream with FIN."""
    from ..quic import StreamError

    peer = format_address(channel.getpeername())
    logger.info("%s connected over QUIC, ALPN %s", peer, channel.alpn_protocol)
    echoed = 0
    try:
        while True:
            stream = await channel.accept_stream()
            try:
                await stream.write(await stream.read(), end=True)
                echoed += 1
            except StreamError as exc:
                logger.warning("%s: %s", peer, exc)
    except (ConnectionClosedByPeer, ConnectionClosedLocally):
        logger.info("%s closed the connection (%d stream(s) echoed)", peer, echoed)
    except DTLSError as exc:
        logger.warning("%s: connection ended: %s (%d stream(s) echoed)", peer, exc, echoed)


def client(args: argparse.Namespace, messages: Iterator[bytes]) -> int:
    from ..sync import quic

    check_flags(args)
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    settings: dict[str, Any] = {
        "certfile": args.cert,
        "keyfile": args.key,
        "alpn_protocols": args.alpn or DEFAULT_ALPN[:1],
    }
    if args.no_verify:
        settings.update(verify_mode=ssl.CERT_NONE, check_hostname=False)
    if args.mtu is not None:
        settings["mtu"] = args.mtu
    if args.recv_buffer_size is not None:
        settings["recv_buffer_size"] = args.recv_buffer_size
    config = with_keylog(DTLSConfiguration.client(args.ca, args.server_name, **settings))
    with quic.connect(args.host, args.port, config=config, timeout=args.timeout) as channel:
        logger.info(
            "connected over QUIC to %s, ALPN %s%s",
            format_address(channel.getpeername()),
            channel.alpn_protocol,
            " (server certificate NOT verified: --no-verify)" if args.no_verify else "",
        )
        for message in messages:
            print_reply(channel.request(message, timeout=args.timeout))
        with contextlib.suppress(DTLSError):
            stats = channel.statistics()
            logger.info(
                "closing: %d datagrams sent, %d received", stats.datagrams_sent,
                stats.datagrams_received,
            )
    return 0
