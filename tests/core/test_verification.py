"""Certificate verification in real in-memory handshakes: trust stores (cafile, capath, cadata,
system store), host name and IP checks, verify modes on both sides, mutual authentication, and
the errors both sides end with when a certificate is rejected (RELIABILITY scenario 13)."""

from __future__ import annotations

import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

import dtlskit
from dtlskit import VerificationReason as Reason
from dtlskit.certs import PKIFiles, certificate_pem, issue_certificate, private_key_pem
from dtlskit.core import State
from dtlskit.core import events as ev
from dtlskit.testing import MemoryPair

NOW = datetime.now(timezone.utc)


def load_ca(pki: PKIFiles) -> tuple[x509.Certificate, object]:
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    return cert, key


def write_leaf(directory: Path, pki: PKIFiles, name: str, **options: object) -> tuple[Path, Path]:
    """A certificate issued by ``pki``'s CA, written as ``name.pem`` / ``name.key``."""
    cert, key = issue_certificate(load_ca(pki), name, **options)  # type: ignore[arg-type]
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate_pem(cert))
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path


def server_error(pair: MemoryPair) -> dtlskit.DTLSError:
    """Deliver what is still in flight (the client's alert) and return the server side's error."""
    while pair.deliver_one():
        pass
    errors = [e.error for e in pair.server_events if isinstance(e, ev.ConnectionTerminated)]
    assert errors, f"the server side did not fail: {pair.server_events}"
    return errors[-1]


def failed(pair: MemoryPair) -> dtlskit.DTLSError:
    assert not pair.handshake(), "the handshake should have failed"
    assert pair.client.state is State.TERMINATED
    assert pair.client.error is not None
    return pair.client.error


# -- trust stores ---------------------------------------------------------------------------


def test_cafile_trusts_the_server(server_config, client_config):
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    assert pair.client.peer_certificate.subject.rfc4514_string() == "CN=localhost"
    assert pair.client.server_name == "localhost"


def test_capath_with_hashed_names(tmp_path, pki, server_config):
    capath = tmp_path / "capath"
    capath.mkdir()
    ca = crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()))
    (capath / "dtlskit-ca.pem").write_bytes(pki.ca_cert.read_bytes())
    (capath / f"{ca.subject_name_hash():08x}.0").symlink_to("dtlskit-ca.pem")
    config = dtlskit.DTLSConfiguration.client(capath=capath, server_hostname="localhost")
    assert MemoryPair(server_config, config).handshake()


def test_capath_without_our_ca_rejects(tmp_path, other_pki, server_config):
    capath = tmp_path / "capath"
    capath.mkdir()
    ca = crypto.X509.from_cryptography(
        x509.load_pem_x509_certificate(other_pki.ca_cert.read_bytes())
    )
    (capath / f"{ca.subject_name_hash():08x}.0").write_bytes(other_pki.ca_cert.read_bytes())
    config = dtlskit.DTLSConfiguration.client(capath=capath, server_hostname="localhost")
    error = failed(MemoryPair(server_config, config))
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason is Reason.UNKNOWN_ISSUER
    assert "unable to get local issuer certificate" in str(error)


@pytest.mark.parametrize("form", ["pem-str", "pem-bytes", "der"])
def test_cadata(pki, server_config, form):
    pem = pki.ca_cert.read_bytes()
    cadata: str | bytes = {
        "pem-str": pem.decode(),
        "pem-bytes": pem,
        "der": x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER),
    }[form]
    config = dtlskit.DTLSConfiguration.client(cadata=cadata, server_hostname="localhost")
    assert MemoryPair(server_config, config).handshake()


def test_cadata_of_another_ca_rejects(other_pki, server_config):
    config = dtlskit.DTLSConfiguration.client(
        cadata=other_pki.ca_cert.read_bytes(), server_hostname="localhost"
    )
    error = failed(MemoryPair(server_config, config))
    assert "unable to get local issuer certificate" in str(error)


def test_cadata_garbage_is_a_configuration_error():
    with pytest.raises(dtlskit.ConfigurationError, match="cadata holds no valid certificate"):
        dtlskit.DTLSConfiguration.client(cadata=b"junk", server_hostname="x").build_context(False)


def test_system_store_is_used(monkeypatch, pki, other_pki, server_config):
    # OpenSSL's default store honours SSL_CERT_FILE: point it at our CA, then at another one.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
    config = dtlskit.DTLSConfiguration.client(server_hostname="localhost", default_certs=True)
    assert MemoryPair(server_config, config).handshake()
    monkeypatch.setenv("SSL_CERT_FILE", str(other_pki.ca_cert))
    # A configuration reads its trust store once; a new one reads the changed environment.
    error = failed(MemoryPair(server_config, config.replace()))
    assert "unable to get local issuer certificate" in str(error)


# -- what the client rejects, and what the server then sees ------------------------------------


def test_wrong_ca(server_config, other_pki):
    config = dtlskit.DTLSConfiguration.client(cafile=other_pki.ca_cert, server_hostname="localhost")
    pair = MemoryPair(server_config, config)
    error = failed(pair)
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason is Reason.UNKNOWN_ISSUER
    assert "unable to get local issuer certificate" in str(error)
    assert "CN=localhost" in str(error)
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.CertificateVerificationError)
    assert peer.reason is Reason.REJECTED_BY_PEER and peer.alert == "unknown ca"
    assert "rejected our certificate (alert: unknown ca)" in str(peer)


def test_expired_server_certificate(tmp_path, pki, client_config):
    cert, key = write_leaf(
        tmp_path,
        pki,
        "localhost",
        hosts=["localhost"],
        not_before=NOW - timedelta(days=30),
        not_after=NOW - timedelta(days=1),
    )
    pair = MemoryPair(dtlskit.DTLSConfiguration.server(cert, key), client_config)
    error = failed(pair)
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason is Reason.EXPIRED and error.reason == "certificate has expired"
    assert "certificate has expired (depth 0" in str(error)
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.CertificateVerificationError)
    assert peer.reason is Reason.REJECTED_BY_PEER and peer.alert == "certificate expired"


def test_not_yet_valid_server_certificate(tmp_path, pki, client_config):
    cert, key = write_leaf(
        tmp_path,
        pki,
        "localhost",
        hosts=["localhost"],
        not_before=NOW + timedelta(days=1),
        not_after=NOW + timedelta(days=30),
    )
    pair = MemoryPair(dtlskit.DTLSConfiguration.server(cert, key), client_config)
    error = failed(pair)
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason is Reason.NOT_YET_VALID
    assert "certificate is not yet valid" in str(error)
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.CertificateVerificationError)
    assert peer.reason is Reason.REJECTED_BY_PEER and peer.alert == "bad certificate"


def test_host_name_mismatch(server_config, client_config):
    pair = MemoryPair(server_config, client_config.replace(server_hostname="example.com"))
    error = failed(pair)
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason == "hostname mismatch"  # the stable value compares to its words
    assert error.reason is Reason.HOSTNAME_MISMATCH
    assert "127.0.0.1:4433" in str(error)
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.CertificateVerificationError)
    assert "127.0.0.1:40000 rejected our certificate (alert: bad certificate)" in str(peer)


def test_host_name_mismatch_accepted_without_check_hostname(server_config, client_config):
    config = client_config.replace(server_hostname="example.com", check_hostname=False)
    pair = MemoryPair(server_config, config)
    assert pair.handshake()


def test_dns_name_in_san_matches_case_insensitively(server_config, client_config):
    assert MemoryPair(server_config, client_config.replace(server_hostname="LocalHost")).handshake()


def test_ip_address_san_matches(server_config, client_config):
    pair = MemoryPair(server_config, client_config.replace(server_hostname="127.0.0.1"))
    assert pair.handshake()
    # No SNI is sent for an IP address (RFC 6066 §3): the server saw none.
    assert pair.server_connection is not None
    assert pair.server_connection.server_name is None


def test_ip_address_mismatch(server_config, client_config):
    error = failed(MemoryPair(server_config, client_config.replace(server_hostname="127.0.0.2")))
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason is Reason.IP_ADDRESS_MISMATCH


# -- verify modes -------------------------------------------------------------------------------


def test_client_cert_none_accepts_an_untrusted_server(server_config, other_pki):
    config = dtlskit.DTLSConfiguration.client(
        cafile=other_pki.ca_cert, server_hostname="example.com", verify_mode=ssl.CERT_NONE
    )
    pair = MemoryPair(server_config, config)
    assert pair.handshake()
    assert pair.client.peer_certificate is not None  # received, just not checked


def test_client_cert_optional_still_rejects_a_bad_server_certificate(server_config, other_pki):
    config = dtlskit.DTLSConfiguration.client(
        cafile=other_pki.ca_cert, server_hostname="localhost", verify_mode=ssl.CERT_OPTIONAL
    )
    error = failed(MemoryPair(server_config, config))
    assert "unable to get local issuer certificate" in str(error)


@pytest.fixture
def client_with_cert(pki: PKIFiles, client_config: dtlskit.DTLSConfiguration):
    return client_config.replace(certfile=pki.client_cert, keyfile=pki.client_key)


def test_server_cert_none_does_not_ask(server_config, client_with_cert):
    pair = MemoryPair(server_config, client_with_cert)
    assert pair.handshake()
    assert pair.server_connection is not None
    assert pair.server_connection.peer_certificate is None


def test_server_cert_optional_without_client_certificate(pki, server_config, client_config):
    config = server_config.replace(verify_mode=ssl.CERT_OPTIONAL, cafile=pki.ca_cert)
    pair = MemoryPair(config, client_config)
    assert pair.handshake()
    assert pair.server_connection is not None
    assert pair.server_connection.peer_certificate is None


def test_server_cert_optional_with_client_certificate(pki, server_config, client_with_cert):
    config = server_config.replace(verify_mode=ssl.CERT_OPTIONAL, cafile=pki.ca_cert)
    pair = MemoryPair(config, client_with_cert)
    assert pair.handshake()
    assert pair.server_connection is not None
    peer = pair.server_connection.peer_certificate
    assert peer.subject.rfc4514_string() == "CN=dtlskit client"


def test_server_cert_optional_still_rejects_an_untrusted_client(
    other_pki, server_config, client_with_cert
):
    config = server_config.replace(verify_mode=ssl.CERT_OPTIONAL, cafile=other_pki.ca_cert)
    pair = MemoryPair(config, client_with_cert)
    error = failed(pair)
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason is Reason.REJECTED_BY_PEER and error.alert == "unknown ca"
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.CertificateVerificationError)
    # The client's OpenSSL completes the chain it sends from its own trust store, so the
    # server finds the client's (foreign) root in it rather than a missing issuer.
    assert peer.reason is Reason.UNKNOWN_ISSUER
    assert "self-signed certificate in certificate chain" in str(peer)
    assert "the client certificate of 127.0.0.1:40000 was rejected" in str(peer)


def test_missing_client_certificate_is_refused_on_both_sides(pki, server_config, client_config):
    config = server_config.replace(verify_mode=ssl.CERT_REQUIRED, cafile=pki.ca_cert)
    pair = MemoryPair(config, client_config)
    error = failed(pair)
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason is Reason.CERTIFICATE_REQUIRED
    assert "requires a client certificate and this client has none" in str(error)
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.CertificateVerificationError)
    assert peer.reason is Reason.CERTIFICATE_REQUIRED
    assert "sent no certificate" in str(peer)


def test_expired_client_certificate(tmp_path, pki, server_config, client_config):
    cert, key = write_leaf(
        tmp_path,
        pki,
        "old client",
        hosts=["old-client"],
        server=False,
        client=True,
        not_before=NOW - timedelta(days=30),
        not_after=NOW - timedelta(days=1),
    )
    config = server_config.replace(verify_mode=ssl.CERT_REQUIRED, cafile=pki.ca_cert)
    pair = MemoryPair(config, client_config.replace(certfile=cert, keyfile=key))
    error = failed(pair)
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason is Reason.REJECTED_BY_PEER and error.alert == "certificate expired"
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.CertificateVerificationError)
    assert peer.reason is Reason.EXPIRED
    assert "CN=old client" in str(peer)


# -- mutual authentication ----------------------------------------------------------------------


def test_mutual_authentication_with_an_intermediate(tmp_path):
    from dtlskit.certs import create_pki

    pki = create_pki(tmp_path / "pki", intermediate=True)
    server = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, verify_mode=ssl.CERT_REQUIRED, cafile=pki.ca_cert
    )
    client = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert,
        server_hostname="localhost",
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )
    pair = MemoryPair(server, client)
    assert pair.handshake()
    conn = pair.server_connection
    assert conn is not None
    assert conn.peer_certificate.subject.rfc4514_string() == "CN=dtlskit client"
    sent = [c.subject.rfc4514_string() for c in conn.peer_certificate_chain]
    assert sent == ["CN=dtlskit client", "CN=dtlskit dev intermediate CA"]
    verified = [c.subject.rfc4514_string() for c in conn.peer_verified_chain]
    assert verified == ["CN=dtlskit client", "CN=dtlskit dev intermediate CA", "CN=dtlskit dev CA"]
    client_view = [c.subject.rfc4514_string() for c in pair.client.peer_certificate_chain]
    assert client_view == ["CN=localhost", "CN=dtlskit dev intermediate CA"]
    # And the session carries data both ways.
    pair.client.send(b"authenticated")
    pair.pump()
    assert pair.run(lambda: pair.server_messages() == [b"authenticated"])
