"""The asyncio front end against DTLS peers nobody here wrote: OpenSSL's and GnuTLS's tools."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import dtlskit
from dtlskit.asyncio import Channel, connect, serve
from dtlskit.certs import PKIFiles
from tests.helpers import WAIT
from tests.peers import (
    Peer,
    gnutls_cli,
    gnutls_serv,
    needs_gnutls,
    needs_openssl,
    openssl_s_client,
    openssl_s_server,
    running,
    serving,
)

pytestmark = pytest.mark.interop


async def wait_line(peer: Peer, text: str) -> str:
    """Wait (in a thread, so the event loop keeps serving) for a line of the peer's output."""
    return await asyncio.to_thread(peer.wait_for, text, WAIT)


# -- our client, their server -------------------------------------------------------------------


@needs_openssl
def test_client_against_openssl_s_server(
    pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    def argv(port: int) -> list[str]:
        return openssl_s_server(port, str(pki.server_cert), str(pki.server_key))

    with serving(argv, ready="ACCEPT") as (peer, port):

        async def main() -> None:
            async with connect("127.0.0.1", port, config=client_config) as channel:
                assert channel.version == "DTLSv1.2"
                peer.write(b"line from openssl s_server\n")
                received = await asyncio.wait_for(channel.recv(), WAIT)
                assert received == b"line from openssl s_server\n"
                await channel.send(b"line from dtlskit asyncio\n")
                await wait_line(peer, "line from dtlskit asyncio")

        asyncio.run(asyncio.wait_for(main(), 30))


@needs_gnutls
def test_client_against_gnutls_serv_echo(
    pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    def argv(port: int) -> list[str]:
        return gnutls_serv(port, str(pki.server_cert), str(pki.server_key))

    with serving(argv, ready="listening on IPv4") as (peer, port):

        async def main() -> None:
            async with connect("127.0.0.1", port, config=client_config) as channel:
                assert channel.version == "DTLSv1.2"
                # gnutls-serv's echo mode cuts messages at about 255 bytes: stay below that.
                for message in (b"first message\n", b"second, longer message " * 8 + b"\n"):
                    await channel.send(message)
                    assert await asyncio.wait_for(channel.recv(), WAIT) == message
            await wait_line(peer, "first message")

        asyncio.run(asyncio.wait_for(main(), 30))


# -- their client, our server -------------------------------------------------------------------


def _run_foreign_client(
    server_config: dtlskit.DTLSConfiguration, argv_for_port: Callable[[int], list[str]], ready: str
) -> None:
    received: list[bytes] = []

    async def recording_echo(channel: Channel) -> None:
        async for message in channel:
            received.append(message)
            # A prefix the foreign client never typed: its output proves the reply arrived.
            await channel.send(b"echoed by dtlskit: " + message)

    async def main() -> None:
        async with serve(recording_echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            with running(argv_for_port(port)) as peer:
                await wait_line(peer, ready)
                peer.write(b"hello from the foreign client\n")
                await wait_line(peer, "echoed by dtlskit: hello from the foreign client")
            assert received == [b"hello from the foreign client\n"]
            assert server.statistics().handshakes_completed == 1

    asyncio.run(asyncio.wait_for(main(), 30))


@needs_openssl
def test_openssl_s_client_against_our_server(
    pki: PKIFiles, server_config: dtlskit.DTLSConfiguration
) -> None:
    def argv(port: int) -> list[str]:
        return openssl_s_client(
            port,
            "-CAfile",
            str(pki.ca_cert),
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
        )

    _run_foreign_client(server_config, argv, "Verify return code: 0 (ok)")


@needs_gnutls
def test_gnutls_cli_against_our_server(
    pki: PKIFiles, server_config: dtlskit.DTLSConfiguration
) -> None:
    def argv(port: int) -> list[str]:
        return gnutls_cli(port, "--x509cafile", str(pki.ca_cert), "--verify-hostname=localhost")

    _run_foreign_client(server_config, argv, "Handshake was completed")
