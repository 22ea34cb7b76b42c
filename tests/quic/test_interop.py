"""Interop with QUIC implementations nobody here wrote, on loopback.

picoquic (C), through the PyPI package aiopquic in its own Python >= 3.12 venv, for seed 002's
ALPNs ``hq-interop`` and ``http/1.0`` in both roles: the seed 002 examples and the public API
against it. ngtcp2's HTTP/3 server (``gtlsserver``): a GET through our connection with
aioquic's HTTP/3 layer.
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest

import dtlskit
import dtlskit.quic
from dtlskit.sync import quic as sync_quic

from .peers import PEER_SCRIPT, example, free_udp_port, picoquic_python, running

pytestmark = pytest.mark.interop

ALPNS = ["hq-interop", "http/1.0"]


@pytest.fixture(scope="module")
def peer_python() -> str:
    return picoquic_python()


def picoquic_server(python: str, pki, alpn: str, port: int) -> list[str]:
    return [python, str(PEER_SCRIPT), "server", str(port), str(pki.server_cert),
            str(pki.server_key), alpn]


def picoquic_client(python: str, pki, alpn: str, port: int, message: str) -> list[str]:
    return [python, str(PEER_SCRIPT), "client", "127.0.0.1", str(port), str(pki.ca_cert),
            alpn, message]


@pytest.mark.parametrize("alpn", ALPNS)
def test_seed_client_example_against_picoquic_server(peer_python, pki, alpn):
    port = free_udp_port()
    with running(picoquic_server(peer_python, pki, alpn, port)) as server:
        server.wait_for_line("ready")
        result = subprocess.run(
            [*example("quic_echo_client.py"), "127.0.0.1", str(port), "--cafile",
             str(pki.ca_cert), "--alpn", alpn, "--message", f"seed 002 over {alpn}"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"connected ({alpn})" in result.stdout
    assert f"echo: 'seed 002 over {alpn}'" in result.stdout


@pytest.mark.parametrize("alpn", ALPNS)
def test_seed_server_example_against_picoquic_client(peer_python, pki, alpn):
    port = free_udp_port()
    with running([*example("quic_echo_server.py"), "--port", str(port), "--cert",
                  str(pki.server_cert), "--key", str(pki.server_key),
                  "--connections", "1"]) as server:
        server.wait_for_line("Waiting for connection")
        client = subprocess.run(
            picoquic_client(peer_python, pki, alpn, port, f"picoquic says {alpn}"),
            capture_output=True, text=True, timeout=60,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert f"echo: picoquic says {alpn}" in client.stdout
        server.wait_for_line(f"Accepted new connection ({alpn})")
        server.wait_for_line("echoed")
        assert server.wait(30) == 0


@pytest.mark.parametrize("alpn", ALPNS)
def test_blocking_client_against_picoquic_server(peer_python, pki, alpn):
    port = free_udp_port()
    config = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", alpn_protocols=[alpn]
    )
    with running(picoquic_server(peer_python, pki, alpn, port)) as server:
        server.wait_for_line("ready")
        with sync_quic.connect("127.0.0.1", port, config=config, timeout=30) as channel:
            assert channel.alpn_protocol == alpn
            answers = [channel.request(b"request %d" % i, timeout=30) for i in range(3)]
            assert answers == [b"request %d" % i for i in range(3)]
            channel.send(b"message mode")  # the answer on send()'s stream is a message
            assert channel.recv(timeout=30) == b"message mode"


@pytest.mark.parametrize("alpn", ALPNS)
def test_asyncio_server_against_picoquic_client(peer_python, pki, alpn):
    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, alpn_protocols=["http/1.0", "hq-interop"]
    )
    served: list[str | None] = []

    async def echo(channel: dtlskit.quic.QuicChannel) -> None:
        served.append(channel.alpn_protocol)
        stream = await channel.accept_stream()
        await stream.write(await stream.read(), end=True)
        await channel.wait_closed()

    async def main() -> None:
        port = free_udp_port()
        async with dtlskit.quic.serve(echo, "127.0.0.1", port, config=config):
            process = await asyncio.create_subprocess_exec(
                *picoquic_client(peer_python, pki, alpn, port, "through our API"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, out
            assert b"echo: through our API" in out

    asyncio.run(asyncio.wait_for(main(), 90))
    assert served == [alpn]


def test_alpn_mismatch_with_picoquic_names_our_offer(peer_python, pki):
    port = free_udp_port()
    config = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", alpn_protocols=["http/1.0"],
        handshake_timeout=10,
    )
    with running(picoquic_server(peer_python, pki, "hq-interop", port)) as server:
        server.wait_for_line("ready")
        with pytest.raises(dtlskit.HandshakeFailure) as info:
            sync_quic.connect("127.0.0.1", port, config=config, timeout=30)
    assert "we offered ['http/1.0']" in str(info.value)
