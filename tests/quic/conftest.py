"""QUIC test configurations: the session PKI with ALPN."""

from __future__ import annotations

import pytest

import dtlskit
from dtlskit.certs import PKIFiles

SEED_ALPN = ("http/1.0", "hq-interop")


@pytest.fixture
def quic_server_config(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, alpn_protocols=SEED_ALPN
    )


@pytest.fixture
def quic_client_config(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", alpn_protocols=["hq-interop"]
    )
