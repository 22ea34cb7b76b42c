"""Shared fixtures: a throwaway PKI per test session, and ready-made configurations."""

from __future__ import annotations

from pathlib import Path

import pytest

import dtlskit
from dtlskit.certs import PKIFiles, create_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    """CA, server and client certificates (EC P-256) for localhost, 127.0.0.1 and ::1."""
    return create_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    """A second, unrelated PKI: its CA trusts nothing of ``pki``."""
    return create_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def server_config(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)


@pytest.fixture
def client_config(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")


def path(p: Path) -> str:
    return str(p)


# -- QUIC (tests/quic, tests/sync/test_quic.py): the session PKI with seed 002's ALPN ---------


@pytest.fixture
def quic_server_config(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, alpn_protocols=("http/1.0", "hq-interop")
    )


@pytest.fixture
def quic_client_config(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", alpn_protocols=["hq-interop"]
    )
