"""Both servers log a peer's life the same way: connected and disconnected at INFO, a failed
handshake at WARNING naming the cause."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading

import pytest

import dtlskit
from dtlskit import sync


def server_requiring_client_certs(pki):  # type: ignore[no-untyped-def]
    return dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, cafile=pki.ca_cert, verify_mode=ssl.CERT_REQUIRED
    )


def with_cert(config, pki):  # type: ignore[no-untyped-def]
    return config.replace(certfile=pki.client_cert, keyfile=pki.client_key)


def messages(caplog, level):  # type: ignore[no-untyped-def]
    return [
        r.getMessage() for r in caplog.records if r.name == "dtlskit.server" and r.levelno == level
    ]


def test_sync_server_logs_peer_life(pki, client_config, caplog):
    caplog.set_level(logging.INFO, logger="dtlskit.server")

    def echo(channel: sync.Channel) -> None:
        for message in channel:
            channel.send(message)

    config = server_requiring_client_certs(pki)
    with sync.serve(echo, "127.0.0.1", 0, config=config) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.addresses[0][1]
        with sync.connect("127.0.0.1", port, config=with_cert(client_config, pki)) as channel:
            channel.send(b"hi")
            assert channel.recv(timeout=10) == b"hi"
        with pytest.raises(dtlskit.HandshakeError):
            sync.connect("127.0.0.1", port, config=client_config, timeout=10)
        for _ in range(100):  # bounded wait for the server to log the refusal
            if messages(caplog, logging.WARNING):
                break
            threading.Event().wait(0.05)
    info = messages(caplog, logging.INFO)
    assert any("connected (DTLSv1.2" in m for m in info)
    assert any("disconnected" in m and "close_notify" in m for m in info)
    warnings = messages(caplog, logging.WARNING)
    assert any("failed" in m and "certificate" in m for m in warnings), warnings


def test_asyncio_server_logs_peer_life(pki, client_config, caplog):
    caplog.set_level(logging.INFO, logger="dtlskit.server")

    async def echo(channel: dtlskit.asyncio.Channel) -> None:
        async for message in channel:
            await channel.send(message)

    async def main() -> None:
        config = server_requiring_client_certs(pki)
        async with dtlskit.serve(echo, "127.0.0.1", 0, config=config) as server:
            port = server.addresses[0][1]
            async with dtlskit.connect(
                "127.0.0.1", port, config=with_cert(client_config, pki)
            ) as channel:
                await channel.send(b"hi")
                assert await asyncio.wait_for(channel.recv(), 10) == b"hi"
            with pytest.raises(dtlskit.HandshakeError):
                await dtlskit.connect("127.0.0.1", port, config=client_config, timeout=10)
            for _ in range(100):
                if messages(caplog, logging.WARNING):
                    break
                await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(main(), 60))
    info = messages(caplog, logging.INFO)
    assert any("connected (DTLSv1.2" in m for m in info)
    assert any("disconnected" in m and "close_notify" in m for m in info)
    warnings = messages(caplog, logging.WARNING)
    assert any("failed" in m and "certificate" in m for m in warnings), warnings
