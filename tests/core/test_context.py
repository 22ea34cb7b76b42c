"""``dtlskit.core.context``: the OpenSSL context factory. One context per configuration and
role, shared; fresh ones on demand; every failure a ``ConfigurationError`` naming its cause."""

from __future__ import annotations

import ssl

import pytest
from OpenSSL import SSL

import dtlskit
from dtlskit.core import context as factory


def test_context_is_built_once_per_role_and_build_context_is_fresh(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    assert factory.context(client_config, False) is factory.context(client_config, False)
    assert client_config.context(server=False) is factory.context(client_config, False)
    fresh = factory.build_context(server_config, True)
    assert isinstance(fresh, SSL.Context)
    assert fresh is not factory.build_context(server_config, True)


def test_a_server_without_certificate_or_psk_is_refused() -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="needs a certificate"):
        factory.build_context(dtlskit.DTLSConfiguration.server(), True)
    psk_only = dtlskit.DTLSConfiguration.server(psk_lookup={"id": b"k" * 16})
    assert isinstance(factory.build_context(psk_only, True), SSL.Context)


def test_cipher_and_ccm8_and_srtp_mistakes_are_named(
    server_config: dtlskit.DTLSConfiguration,
) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="no usable cipher in 'NOPE'"):
        factory.build_context(server_config.replace(ciphers="NOPE"), True)
    with pytest.raises(dtlskit.ConfigurationError, match="@SECLEVEL=0"):
        factory.build_context(server_config.replace(ciphers="PSK-AES128-CCM8"), True)
    with pytest.raises(dtlskit.ConfigurationError, match="srtp_profiles"):
        factory.build_context(server_config.replace(srtp_profiles=["SRTP_NOPE"]), True)


def test_files_that_cannot_be_used_are_named(
    tmp_path, pki, server_config: dtlskit.DTLSConfiguration
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(dtlskit.ConfigurationError, match=f"cannot read certificate file {missing}"):
        factory.build_context(server_config.replace(certfile=missing), True)
    with pytest.raises(dtlskit.ConfigurationError, match="it is a directory"):
        factory.build_context(server_config.replace(certfile=tmp_path), True)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(dtlskit.ConfigurationError, match="cannot load certificate chain"):
        factory.build_context(server_config.replace(certfile=not_pem), True)
    with pytest.raises(dtlskit.ConfigurationError, match="do not belong together"):
        factory.build_context(server_config.replace(keyfile=pki.client_key), True)
    with pytest.raises(dtlskit.ConfigurationError, match="not a PEM private key"):
        factory.build_context(server_config.replace(keyfile=not_pem), True)
    with pytest.raises(dtlskit.ConfigurationError, match=r"capath .* is not a directory"):
        factory.build_context(
            server_config.replace(capath=not_pem, verify_mode=ssl.CERT_REQUIRED), True
        )
    with pytest.raises(dtlskit.ConfigurationError, match="cadata holds no valid certificate"):
        factory.build_context(
            server_config.replace(cadata=b"\x30\x00", verify_mode=ssl.CERT_REQUIRED), True
        )


def test_passwords_of_every_kind(tmp_path) -> None:
    from dtlskit import certs

    pki = certs.create_pki(tmp_path, password="pw")
    for password in ("pw", b"pw", lambda: "pw"):
        config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, password)
        assert isinstance(factory.build_context(config, True), SSL.Context)
    for password, words in (
        (None, "is encrypted: give its password"),
        ("wrong", "wrong password"),
        (lambda: 5, "must be str or bytes"),
        (lambda: 1 / 0, "raised ZeroDivisionError"),
    ):
        config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, password)
        with pytest.raises(dtlskit.ConfigurationError, match=words):
            factory.build_context(config, True)
    plain = certs.create_pki(tmp_path / "plain")
    config = dtlskit.DTLSConfiguration.server(plain.server_cert, plain.server_key, "pw")
    with pytest.raises(dtlskit.ConfigurationError, match="not encrypted, but a password"):
        factory.build_context(config, True)


def test_inline_cas_in_pem_and_der_are_trusted(pki, server_config) -> None:
    from dtlskit.testing import MemoryPair

    pem = pki.ca_cert.read_text()
    der = ssl.PEM_cert_to_DER_cert(pem)
    for cadata in (pem, pem.encode(), der):
        client = dtlskit.DTLSConfiguration.client(cadata=cadata, server_hostname="localhost")
        assert MemoryPair(server_config, client).handshake()


def test_which_cipher_lists_offer_only_psk() -> None:
    assert factory.offers_only_psk("PSK-AES128-GCM-SHA256:ECDHE-PSK-CHACHA20-POLY1305")
    assert not factory.offers_only_psk("PSK-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert not factory.offers_only_psk("RSA-PSK-AES128-GCM-SHA256")
    assert factory.offers_only_psk("PSK-AES128-CCM8:@SECLEVEL=0:!aNULL")
    assert not factory.offers_only_psk("")


def test_certificate_specs_are_checked() -> None:
    for spec, words in (
        ("cert.pem", "must be a \\(certfile, keyfile\\)"),
        (("a",), "must be a \\(certfile, keyfile\\)"),
        ((1, 2), "must be paths"),
        (("a", "b", 5), "password must be"),
    ):
        with pytest.raises(dtlskit.ConfigurationError, match=words):
            factory.check_certificate_spec("spec", spec)
    factory.check_certificate_spec("spec", ("a", "b", lambda: "pw"))
