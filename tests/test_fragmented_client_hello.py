"""ClientHellos that do not fit in one datagram, from real peers (issue 8, defect 4).

Before the fix our server dropped them as ``malformed_client_hello`` and such clients could never
connect: ``openssl s_client -dtls1_2 -mtu 256`` (which works against ``openssl s_server`` and
``gnutls-serv``), and a resumption ClientHello carrying a large ticket — after mutual
authentication with an RSA client certificate the ticket holds that certificate, and the
ClientHello outgrows the MTU — from our own client and from ``gnutls-cli --resume``.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

import dtlskit
from dtlskit import sync
from dtlskit.asyncio import Channel, connect, serve
from dtlskit.certs import PKIFiles, create_pki
from tests.helpers import WAIT
from tests.peers import gnutls_cli, needs_gnutls, needs_openssl, openssl_s_client, running

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    return create_pki(tmp_path_factory.mktemp("rsa-pki"), key_type="rsa")


def mutual_server(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, verify_mode=ssl.CERT_REQUIRED, cafile=pki.ca_cert
    )


def mutual_client(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert,
        server_hostname="localhost",
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )


async def echo(channel: Channel) -> None:
    async for message in channel:
        await channel.send(b"echoed by dtlskit: " + message)


def sync_echo(channel: sync.Channel) -> None:
    for message in channel:
        channel.send(b"echoed by dtlskit: " + message)


def small_mtu_s_client(pki: PKIFiles, port: int) -> list[str]:
    return openssl_s_client(
        port,
        "-mtu",
        "256",
        "-CAfile",
        str(pki.ca_cert),
        "-verify_hostname",
        "localhost",
        "-verify_return_error",
        # A client certificate makes its later flight fragment too.
        "-cert",
        str(pki.client_cert),
        "-key",
        str(pki.client_key),
    )


def talk_to(argv: list[str]) -> None:
    """Run a foreign client: wait for its verified handshake, echo one line through us."""
    with running(argv) as peer:
        peer.wait_for("Verify return code: 0 (ok)", WAIT)
        peer.write(b"hello\n")
        peer.wait_for("echoed by dtlskit: hello", WAIT)


def assert_fragmented_hello_was_seen(stats: Any, first_fragmented: bool = True) -> None:
    # When the first, cookie-less ClientHello came in fragments, the later ones were dropped
    # statelessly and the first answered; the cookie-carrying one was reassembled.
    if first_fragmented:
        assert stats.drops.get("unvalidated_client_hello_fragment", 0) >= 1, stats
    assert "malformed_client_hello" not in stats.drops, stats
    assert stats.handshakes_failed == 0, stats


@needs_openssl
def test_openssl_s_client_with_mtu_256_connects_asyncio(rsa_pki: PKIFiles) -> None:
    async def main() -> Any:
        async with serve(echo, "127.0.0.1", 0, config=mutual_server(rsa_pki)) as server:
            port = server.addresses[0][1]
            await asyncio.to_thread(talk_to, small_mtu_s_client(rsa_pki, port))
            return server.statistics()

    stats = asyncio.run(asyncio.wait_for(main(), 60))
    assert stats.handshakes_completed == 1
    # s_client's first ClientHello (205 bytes) fits; the one with the cookie does not.
    assert_fragmented_hello_was_seen(stats, first_fragmented=False)


@needs_openssl
def test_openssl_s_client_with_mtu_256_connects_sync(rsa_pki: PKIFiles) -> None:
    with sync.serve(sync_echo, "127.0.0.1", 0, config=mutual_server(rsa_pki)) as server:
        port = server.addresses[0][1]
        talk_to(small_mtu_s_client(rsa_pki, port))
        stats = server.statistics()
    assert stats.handshakes_completed == 1
    # s_client's first ClientHello (205 bytes) fits; the one with the cookie does not.
    assert_fragmented_hello_was_seen(stats, first_fragmented=False)


def test_our_client_resumes_after_rsa_mutual_auth_asyncio(rsa_pki: PKIFiles) -> None:
    async def round_trip(port: int, session: Any) -> tuple[Any, bool]:
        config = mutual_client(rsa_pki)
        async with connect("127.0.0.1", port, config=config, session=session, timeout=WAIT) as ch:
            await ch.send(b"ping")
            assert await asyncio.wait_for(ch.recv(), WAIT) == b"echoed by dtlskit: ping"
            return ch.session, ch.session_reused

    async def main() -> Any:
        async with serve(echo, "127.0.0.1", 0, config=mutual_server(rsa_pki)) as server:
            port = server.addresses[0][1]
            session, reused = await round_trip(port, None)
            assert not reused and session is not None
            # The ticket holds the RSA client certificate: the resumption ClientHello is larger
            # than the 1200-byte MTU.
            assert len(session.to_bytes()) > 1200
            _, reused = await round_trip(port, session)
            assert reused
            return server.statistics()

    stats = asyncio.run(asyncio.wait_for(main(), 60))
    assert stats.handshakes_completed == 2
    assert_fragmented_hello_was_seen(stats)


def test_our_client_resumes_after_rsa_mutual_auth_sync(rsa_pki: PKIFiles) -> None:
    config = mutual_client(rsa_pki)
    with sync.serve(sync_echo, "127.0.0.1", 0, config=mutual_server(rsa_pki)) as server:
        port = server.addresses[0][1]
        session = None
        reused = []
        for _ in range(2):
            with sync.connect(
                "127.0.0.1", port, config=config, session=session, timeout=WAIT
            ) as ch:
                ch.send(b"ping")
                assert ch.recv(timeout=WAIT) == b"echoed by dtlskit: ping"
                session, _ = ch.session, reused.append(ch.session_reused)
        stats = server.statistics()
    assert reused == [False, True]
    assert_fragmented_hello_was_seen(stats)


@needs_gnutls
def test_gnutls_cli_resumes_after_rsa_mutual_auth(rsa_pki: PKIFiles, tmp_path: Path) -> None:
    async def main() -> tuple[Any, list[str]]:
        async with serve(echo, "127.0.0.1", 0, config=mutual_server(rsa_pki)) as server:
            port = server.addresses[0][1]
            argv = gnutls_cli(
                port,
                "--x509cafile",
                str(rsa_pki.ca_cert),
                "--verify-hostname=localhost",
                "--x509certfile",
                str(rsa_pki.client_cert),
                "--x509keyfile",
                str(rsa_pki.client_key),
                "--resume",
            )
            with running(argv) as peer:
                await asyncio.to_thread(peer.wait_for, "*** This is a resumed session", WAIT)
                peer.write(b"hello\n")
                await asyncio.to_thread(peer.wait_for, "echoed by dtlskit: hello", WAIT)
                seen = list(peer.seen)
            return server.statistics(), seen

    stats, seen = asyncio.run(asyncio.wait_for(main(), 60))
    assert any("Resume Handshake was completed" in line for line in seen), seen
    assert stats.handshakes_completed == 2
    assert_fragmented_hello_was_seen(stats)
