"""Shared fixtures: a throwaway PKI per test session, and ready-made configurations."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import dtlskit
from dtlskit.certs import PKIFiles, create_pki


def _asyncio_cancel_class() -> type[BaseException] | None:
    """The exception class a cancelled asyncio future raises (None if it raises nothing)."""

    async def probe() -> type[BaseException] | None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        try:
            future.result()
        except BaseException as exc:  # the class itself is the finding
            return type(exc)
        return None

    return asyncio.run(probe())


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run on an interpreter whose asyncio has two CancelledError classes.

    That happens when something imports ``asyncio`` and then drops it from ``sys.modules``
    before the tests import it again: the C accelerator ``_asyncio`` (which cannot be loaded
    twice) keeps raising the first ``CancelledError`` class while the re-imported
    ``asyncio.tasks`` catches the second, so ``asyncio.wait_for`` lets a ``CancelledError``
    escape instead of raising ``TimeoutError``. ``coverage run --source=dtlskit.core`` (a
    package name: coverage imports ``dtlskit``, and with it asyncio, to find the package, then
    forgets every module so imported) does exactly that on CPython 3.11; give coverage the
    directory (``--source=src/dtlskit/core``) instead. Every asyncio test would fail for a
    reason that is not dtlskit's, so stop with that reason instead.
    """
    raised = _asyncio_cancel_class()
    if raised is not asyncio.CancelledError:
        pytest.exit(
            "this interpreter's asyncio is split in two: a cancelled future raises "
            f"{raised!r} (id {id(raised):#x}), but asyncio.CancelledError is id "
            f"{id(asyncio.CancelledError):#x}. Something imported asyncio and removed it from "
            "sys.modules before the tests ran (e.g. `coverage run --source=dtlskit.core`; "
            "pass --source=src/dtlskit/core instead).",
            returncode=4,
        )


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
