"""What the handshake negotiated, read through the public Channel of both flavours on real
loopback sockets: SNI, the verified chain, the SRTP profile, keying material export (RFC 5705),
the PSK identity, and the session."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cryptography import x509

import dtlskit
from dtlskit import sync
from dtlskit.certs import PKIFiles
from tests.helpers import WAIT

KEY = bytes(range(32))
LABEL = b"EXTRACTOR-dtls_srtp"
SRTP = "SRTP_AEAD_AES_128_GCM"


def _cert_configs(pki: PKIFiles) -> tuple[dtlskit.DTLSConfiguration, dtlskit.DTLSConfiguration]:
    server = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, srtp_profiles=["SRTP_AES128_CM_SHA1_80", SRTP]
    )
    client = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", srtp_profiles=[SRTP]
    )
    return server, client


def _psk_configs() -> tuple[dtlskit.DTLSConfiguration, dtlskit.DTLSConfiguration]:
    return (
        dtlskit.DTLSConfiguration.server(psk_lookup={"sensor-7": KEY}),
        dtlskit.DTLSConfiguration.client(psk=("sensor-7", KEY)),
    )


def _check_certificate_session(client: Any, server_side: Any, pki: PKIFiles) -> None:
    assert server_side.server_name == "localhost"
    assert client.server_name == "localhost"
    chain = client.peer_verified_chain
    assert [c.subject for c in chain] == [
        client.peer_certificate.subject,
        x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()).subject,
    ]
    assert server_side.peer_verified_chain == []  # the client sent no certificate
    assert client.srtp_profile == server_side.srtp_profile == SRTP
    keys = client.export_keying_material(LABEL, 56)
    assert len(keys) == 56
    assert server_side.export_keying_material(LABEL, 56) == keys
    assert client.export_keying_material(LABEL, 56, b"ctx") == server_side.export_keying_material(
        LABEL, 56, b"ctx"
    )
    assert client.export_keying_material(LABEL, 56, b"ctx") != keys
    assert client.psk_identity is None and server_side.psk_identity is None
    assert client.session is not None


def _check_psk_session(client: Any, server_side: Any) -> None:
    assert client.psk_identity == server_side.psk_identity == "sensor-7"
    assert server_side.server_name is None
    assert client.peer_verified_chain == [] and client.srtp_profile is None
    assert client.export_keying_material(b"EXPERIMENTAL-x", 16) == (
        server_side.export_keying_material(b"EXPERIMENTAL-x", 16)
    )


def test_sync_channel_exposes_negotiated_values(pki: PKIFiles) -> None:
    server_config, client_config = _cert_configs(pki)
    with sync.listen("127.0.0.1", 0, config=server_config) as listener:
        port = listener.getsockname()[1]
        with (
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client,
            listener.accept(timeout=WAIT) as server_side,
        ):
            _check_certificate_session(client, server_side, pki)
            client.close()
            with pytest.raises(dtlskit.ConnectionClosedLocally):
                client.export_keying_material(LABEL, 16)


def test_sync_channel_exposes_psk_identity() -> None:
    server_config, client_config = _psk_configs()
    with sync.listen("127.0.0.1", 0, config=server_config) as listener:
        port = listener.getsockname()[1]
        with (
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client,
            listener.accept(timeout=WAIT) as server_side,
        ):
            _check_psk_session(client, server_side)


def test_asyncio_channel_exposes_negotiated_values(pki: PKIFiles) -> None:
    server_config, client_config = _cert_configs(pki)

    async def main() -> None:
        async with dtlskit.listen("127.0.0.1", 0, config=server_config) as listener:
            port = listener.getsockname()[1]
            async with dtlskit.connect("127.0.0.1", port, config=client_config) as client:
                server_side = await listener.accept(timeout=WAIT)
                async with server_side:
                    _check_certificate_session(client, server_side, pki)
                    client.close()
                    with pytest.raises(dtlskit.ConnectionClosedLocally):
                        client.export_keying_material(LABEL, 16)

    asyncio.run(asyncio.wait_for(main(), WAIT * 3))


def test_asyncio_channel_exposes_psk_identity() -> None:
    server_config, client_config = _psk_configs()

    async def main() -> None:
        async with dtlskit.listen("127.0.0.1", 0, config=server_config) as listener:
            port = listener.getsockname()[1]
            async with dtlskit.connect("127.0.0.1", port, config=client_config) as client:
                server_side = await listener.accept(timeout=WAIT)
                async with server_side:
                    _check_psk_session(client, server_side)

    asyncio.run(asyncio.wait_for(main(), WAIT * 3))
