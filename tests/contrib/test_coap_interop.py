"""coaps interop with libcoap (nobody here wrote it), both roles, both of its DTLS backends
(OpenSSL and GnuTLS), with certificates (mutual authentication) and with PSK; a wrong CA is
refused on either side."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path

import pytest

aiocoap = pytest.importorskip(
    "aiocoap", reason="aiocoap is not installed: pip install 'dtlskit[coap]' (CI installs it)"
)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

import dtlskit  # noqa: E402
from dtlskit.certs import PKIFiles  # noqa: E402
from dtlskit.contrib import aiocoap as coaps  # noqa: E402

from .coap_helpers import run, site  # noqa: E402
from .libcoap import BACKENDS, client_argv, needs_libcoap, server  # noqa: E402

pytestmark = pytest.mark.interop

IDENTITY, KEY = "coap-device", "coap device secret"
BANNER = b"This is a test server made with libcoap"


def backends() -> list[object]:
    return [pytest.param(b, marks=needs_libcoap(b)) for b in BACKENDS]


def fingerprint(path: Path) -> str:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


# -- libcoap client -> our server ----------------------------------------------------------------


async def libcoap_client_to_our_server(
    pki: PKIFiles, argv_for_port: object
) -> tuple[str, dtlskit.asyncio.Server]:
    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        cafile=pki.ca_cert,
        verify_mode=ssl.CERT_OPTIONAL,
        psk_lookup={IDENTITY: KEY.encode()},
    )
    context = await coaps.create_server_context(site(), "127.0.0.1", 0, config=config)
    transport = coaps.coaps_transport(context)
    assert transport.server is not None
    port = transport.server.addresses[0][1]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv_for_port(port),  # type: ignore[operator]
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        statistics = transport.server.statistics()
    finally:
        await context.shutdown()
    return output.decode("utf-8", "replace"), statistics


@pytest.mark.parametrize("backend", backends())
def test_libcoap_client_with_certificates(backend: str, pki: PKIFiles) -> None:
    def argv(port: int) -> list[str]:
        return client_argv(
            backend,
            f"coaps://127.0.0.1:{port}/who",
            "-c", str(pki.client_cert), "-j", str(pki.client_key), "-C", str(pki.ca_cert),
        )  # fmt: skip

    output, statistics = run(libcoap_client_to_our_server(pki, argv))
    # The resource saw the libcoap client's certificate, verified by our server.
    assert f"cert CN=dtlskit client {fingerprint(pki.client_cert)}" in output, output
    assert statistics.handshakes_completed == 1


@pytest.mark.parametrize("backend", backends())
def test_libcoap_client_with_psk(backend: str, pki: PKIFiles) -> None:
    def argv(port: int) -> list[str]:
        return client_argv(backend, f"coaps://127.0.0.1:{port}/who", "-u", IDENTITY, "-k", KEY)

    output, statistics = run(libcoap_client_to_our_server(pki, argv))
    assert f"psk {IDENTITY}" in output, output
    assert statistics.handshakes_completed == 1


@pytest.mark.parametrize("backend", backends())
def test_libcoap_client_refuses_our_server_under_a_wrong_ca(
    backend: str, pki: PKIFiles, other_pki: PKIFiles
) -> None:
    def argv(port: int) -> list[str]:
        return client_argv(
            backend,
            f"coaps://127.0.0.1:{port}/who",
            "-c", str(pki.client_cert), "-j", str(pki.client_key), "-C", str(other_pki.ca_cert),
        )  # fmt: skip

    output, statistics = run(libcoap_client_to_our_server(pki, argv))
    assert "cert CN=" not in output and "cannot send CoAP pdu" in output, output
    assert "unknown" in output.lower(), output  # "Unknown CA" / "CA is unknown"
    assert statistics.handshakes_completed == 0


# -- our client -> libcoap server ----------------------------------------------------------------


async def get_root(config: dtlskit.DTLSConfiguration, port: int) -> aiocoap.Message:
    context = await coaps.create_client_context(config)
    try:
        request = aiocoap.Message(code=aiocoap.GET, uri=f"coaps://127.0.0.1:{port}/")
        return await context.request(request).response
    finally:
        await context.shutdown()


def cert_server_options(pki: PKIFiles) -> list[str]:
    return ["-c", str(pki.server_cert), "-j", str(pki.server_key), "-C", str(pki.ca_cert)]


@pytest.mark.parametrize("backend", backends())
def test_our_client_to_libcoap_server_with_certificates(backend: str, pki: PKIFiles) -> None:
    config = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert,
        server_hostname="localhost",
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )
    with server(backend, *cert_server_options(pki)) as (_, port):
        response = run(get_root(config, port))
        # libcoap asks for a client certificate (-C): without one it refuses us.
        with pytest.raises(aiocoap.error.NetworkError) as refused:
            run(get_root(config.replace(certfile=None, keyfile=None), port))
    assert response.code == aiocoap.CONTENT and response.payload.startswith(BANNER)
    (claim,) = response.remote.authenticated_claims
    assert isinstance(claim, coaps.CertificateClaim)
    assert claim.sha256 == fingerprint(pki.server_cert)
    assert isinstance(refused.value.__cause__, dtlskit.CertificateVerificationError)


@pytest.mark.parametrize("backend", backends())
def test_our_client_to_libcoap_server_with_psk(backend: str) -> None:
    config = dtlskit.DTLSConfiguration.client(psk=(IDENTITY, KEY.encode()))
    with server(backend, "-u", IDENTITY, "-k", KEY) as (_, port):
        response = run(get_root(config, port))
    assert response.code == aiocoap.CONTENT and response.payload.startswith(BANNER)
    assert response.remote.authenticated_claims == (coaps.PSKClaim(IDENTITY),)


@pytest.mark.parametrize("backend", backends())
def test_our_client_refuses_libcoap_server_under_a_wrong_ca(
    backend: str, pki: PKIFiles, other_pki: PKIFiles
) -> None:
    config = dtlskit.DTLSConfiguration.client(
        cafile=other_pki.ca_cert,
        server_hostname="localhost",
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )
    with (
        server(backend, *cert_server_options(pki)) as (_, port),
        pytest.raises(aiocoap.error.NetworkError) as caught,
    ):
        run(get_root(config, port))
    cause = caught.value.__cause__
    assert isinstance(cause, dtlskit.CertificateVerificationError)
    assert cause.reason is dtlskit.VerificationReason.UNKNOWN_ISSUER


@pytest.mark.parametrize("backend", backends())
def test_libcoap_server_refuses_our_client_certificate_from_another_ca(
    backend: str, pki: PKIFiles, other_pki: PKIFiles
) -> None:
    config = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert,
        server_hostname="localhost",
        certfile=other_pki.client_cert,
        keyfile=other_pki.client_key,
    )
    with (
        server(backend, *cert_server_options(pki)) as (_, port),
        pytest.raises(aiocoap.error.NetworkError) as caught,
    ):
        run(get_root(config, port))
    cause = caught.value.__cause__
    assert isinstance(cause, dtlskit.CertificateVerificationError)
    assert cause.reason is dtlskit.VerificationReason.REJECTED_BY_PEER
