"""``dtlskit demo``: a server and a client on loopback with a throw-away PKI, no files needed."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from typing import Any

from .. import __version__, certs
from .. import asyncio as dtlskit_asyncio
from ..config import DTLSConfiguration
from ..core.connection import ConnectionStatistics
from ..exceptions import (
    ConnectionClosedByPeer,
    DTLSError,
)
from ._common import (
    DEFAULT_TIMEOUT,
    out,
    subject,
    with_keylog,
)

_DEMO_MESSAGES = (b"hello, DTLS", b"one datagram, one message", b"bye")


def _cmd_demo(args: argparse.Namespace) -> int:
    asyncio.run(_demo())
    return 0


async def _demo() -> None:
    with tempfile.TemporaryDirectory(prefix="dtlskit-demo-") as tmp:
        pki = certs.create_pki(tmp)
        out(f"dtlskit {__version__} demo: a DTLS echo server and client on loopback")
        out(f"made a throwaway CA, server and client certificate in {tmp}")
        server_config = with_keylog(
            DTLSConfiguration.server(
                pki.server_cert,
                pki.server_key,
                cafile=pki.ca_cert,
                verify_mode=ssl.CERT_REQUIRED,
            )
        )
        client_config = with_keylog(
            DTLSConfiguration.client(
                cafile=pki.ca_cert, certfile=pki.client_cert, keyfile=pki.client_key
            )
        )
        loop = asyncio.get_running_loop()
        seen_client: asyncio.Future[str] = loop.create_future()
        finished: asyncio.Future[tuple[ConnectionStatistics, bool]] = loop.create_future()

        async def echo(channel: dtlskit_asyncio.Channel) -> None:
            seen_client.set_result(subject(channel.peer_certificate))
            closed_by_peer = False
            try:
                async for message in channel:
                    await channel.send(message)
                closed_by_peer = isinstance(await _end_of(channel), ConnectionClosedByPeer)
            finally:
                finished.set_result((channel.statistics(), closed_by_peer))

        async with dtlskit_asyncio.serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            out(f"server  listening on 127.0.0.1:{port}")
            started = time.perf_counter()
            channel = await dtlskit_asyncio.connect(
                "127.0.0.1", port, config=client_config, timeout=DEFAULT_TIMEOUT
            )
            async with channel:
                elapsed = time.perf_counter() - started
                shake = channel.statistics().handshake_seconds
                out(
                    f"client  handshake done in {1000 * (shake or elapsed):.1f} ms: "
                    f"{channel.version}, {channel.cipher}"
                    + (", resumed" if channel.session_reused else "")
                )
                out(f"client  server certificate {subject(channel.peer_certificate)} (verified)")
                client_subject = await asyncio.wait_for(seen_client, DEFAULT_TIMEOUT)
                out(f"server  client certificate {client_subject} (verified)")
                for message in _DEMO_MESSAGES:
                    await channel.send(message)
                    reply = await asyncio.wait_for(channel.recv(), DEFAULT_TIMEOUT)
                    out(f"client  sent {message!r}, echoed {reply!r}")
            server_stats, closed_by_peer = await asyncio.wait_for(finished, DEFAULT_TIMEOUT)
            totals = server.statistics()
        client_stats = channel.statistics()
        _print_demo_statistics(client_stats, server_stats, sum(totals.drops.values()))
        out(
            f"        (and {totals.hello_verify_requests_sent} stateless cookie exchange: the "
            "server kept no state until the client proved its address)"
        )
        if closed_by_peer:
            out("closed  client sent close_notify, server saw it; bye")
        else:
            out("closed  the session ended without close_notify reaching the server")


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
    out(f"stats   {'':<20}{'client':>8}{'server':>8}")
    for name, mine, theirs in rows:
        out(f"        {name:<20}{mine:>8}{theirs:>8}")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run a DTLS echo server and client on loopback and show what happens",
        description="Make a throwaway CA in a temporary directory, start a DTLS server and a "
        "client on loopback (mutual certificate authentication), echo a few messages, print "
        "the handshake and the statistics of both sides, and close cleanly. Needs no files.",
    )
    demo.set_defaults(func=_cmd_demo)
