"""Every way a certificate, key or trust store can fail to load is a ConfigurationError naming
the file(s) and the cause in words, never a raw OpenSSL.SSL.Error or TypeError (issue 8,
defect 8)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

import dtlskit
from dtlskit.certs import PKIFiles

Server = dtlskit.DTLSConfiguration.server
Client = dtlskit.DTLSConfiguration.client


def failure(build: Callable[[], object]) -> str:
    """The message of the ConfigurationError ``build`` raises (any other exception fails)."""
    with pytest.raises(dtlskit.ConfigurationError) as caught:
        build()
    return str(caught.value)


def test_certificate_and_key_that_do_not_belong_together(
    pki: PKIFiles, other_pki: PKIFiles
) -> None:
    config = Server(pki.server_cert, other_pki.server_key)
    message = failure(lambda: config.build_context(server=True))
    assert "do not belong together" in message
    assert str(pki.server_cert) in message and str(other_pki.server_key) in message


def test_client_certificate_and_key_that_do_not_belong_together(
    pki: PKIFiles, other_pki: PKIFiles
) -> None:
    config = Client(cafile=pki.ca_cert, certfile=pki.client_cert, keyfile=other_pki.client_key)
    message = failure(lambda: config.build_context(server=False))
    assert "do not belong together" in message
    assert str(pki.client_cert) in message and str(other_pki.client_key) in message


@pytest.mark.parametrize("where", ["sni_certificates", "ip_certificate"])
def test_sni_certificate_and_key_that_do_not_belong_together(
    pki: PKIFiles, other_pki: PKIFiles, where: str
) -> None:
    spec = (pki.server_cert, other_pki.server_key)
    extra: dict[str, object] = {where: {"a.example": spec} if where == "sni_certificates" else spec}
    config = Server(pki.server_cert, pki.server_key, **extra)
    message = failure(lambda: config.build_context(server=True))
    assert message.startswith(where)
    assert "do not belong together" in message and str(other_pki.server_key) in message


@pytest.fixture
def encrypted_key(pki: PKIFiles, tmp_path: Path) -> Path:
    key = load_pem_private_key(pki.server_key.read_bytes(), None)
    path = tmp_path / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right"),
        )
    )
    return path


def test_encrypted_key_loads_with_its_password(pki: PKIFiles, encrypted_key: Path) -> None:
    Server(pki.server_cert, encrypted_key, "right").build_context(server=True)


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        (None, "is encrypted: give its password"),
        ("wrong", "wrong password"),
        (lambda: 1 / 0, "password callable for private key .* raised ZeroDivisionError"),
        (lambda: 42, "must be str or bytes, not int"),
    ],
    ids=["missing", "wrong", "callable-raises", "callable-returns-int"],
)
def test_encrypted_key_password_problems(
    pki: PKIFiles, encrypted_key: Path, password: object, expected: str
) -> None:
    config = Server(pki.server_cert, encrypted_key, password)  # type: ignore[arg-type]
    message = failure(lambda: config.build_context(server=True))
    assert str(encrypted_key) in message
    assert re.search(expected, message), message


def test_unusable_files(pki: PKIFiles, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    x25519_key = tmp_path / "x25519.key"
    x25519_key.write_bytes(
        x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cases: list[tuple[Callable[[], object], Path, str]] = [
        (lambda: Server(missing, pki.server_key).build_context(True), missing, "No such file"),
        (lambda: Server(tmp_path, pki.server_key).build_context(True), tmp_path, "directory"),
        (lambda: Server(junk, pki.server_key).build_context(True), junk, "BEGIN CERTIFICATE"),
        (lambda: Server(pki.server_cert, missing).build_context(True), missing, "No such file"),
        (lambda: Server(pki.server_cert, junk).build_context(True), junk, "not a PEM"),
        (lambda: Server(pki.server_cert, x25519_key).build_context(True), x25519_key, "sign"),
        (lambda: Client(cafile=missing).build_context(False), missing, "No such file"),
        (lambda: Client(cafile=junk).build_context(False), junk, "no certificate"),
        (lambda: Client(capath=missing).build_context(False), missing, "not a directory"),
    ]
    for build, named, cause in cases:
        message = failure(build)
        assert str(named) in message and cause in message, message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_certificate_file(pki: PKIFiles, tmp_path: Path) -> None:
    locked = tmp_path / "locked.pem"
    locked.write_bytes(pki.server_cert.read_bytes())
    locked.chmod(0)
    message = failure(lambda: Server(locked, pki.server_key).build_context(True))
    assert str(locked) in message and "Permission denied" in message


@pytest.mark.parametrize("cadata", ["junk", b"junk", ""], ids=["text", "bytes", "empty"])
def test_bad_cadata(cadata: str | bytes) -> None:
    message = failure(lambda: Client(cadata=cadata).build_context(False))
    assert message.startswith("cadata holds no valid certificate")
