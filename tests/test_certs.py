"""Tests for dtlskit.certs: key and certificate generation, PEM I/O, CSRs, dev PKI."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

import dtlskit
from dtlskit import certs

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command-line tool is not installed (not on PATH)"
)
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file permissions only")

PASSWORD = "s3cret pässword"

PKI_VARIANTS = [
    pytest.param("ec", False, None, id="ec-root"),
    pytest.param("rsa", False, None, id="rsa-root"),
    pytest.param("ec", True, None, id="ec-intermediate"),
    pytest.param("rsa", True, PASSWORD, id="rsa-intermediate-password"),
    pytest.param("ec", False, PASSWORD, id="ec-root-password"),
]


def now() -> datetime:
    return datetime.now(timezone.utc)


def ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def san_of(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    value = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(value, x509.SubjectAlternativeName)
    return value


def eku_of(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    value = ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(value, x509.ExtendedKeyUsage)
    return list(value)


def basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints:
    value = ext(cert, x509.BasicConstraints).value
    assert isinstance(value, x509.BasicConstraints)
    return value


def key_usage(cert: x509.Certificate) -> x509.KeyUsage:
    value = ext(cert, x509.KeyUsage).value
    assert isinstance(value, x509.KeyUsage)
    return value


def cn_of(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def spki(key: object) -> bytes:
    assert isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def run_openssl(*args: object) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture(scope="module")
def pki_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, certs.PKIFiles]:
    """One PKI per variant, shared by the read-only tests of this module."""
    made: dict[str, certs.PKIFiles] = {}
    for param in PKI_VARIANTS:
        key_type, intermediate, password = param.values
        assert isinstance(param.id, str)
        made[param.id] = certs.create_pki(
            tmp_path_factory.mktemp(param.id) / "pki",
            key_type=key_type,  # type: ignore[arg-type]
            rsa_bits=2048,
            intermediate=bool(intermediate),
            password=password,  # type: ignore[arg-type]
        )
    return made


@pytest.fixture(params=[p.id for p in PKI_VARIANTS])
def pki_variant(request: pytest.FixtureRequest) -> str:
    """Name of the PKI variant under test (see PKI_VARIANTS)."""
    assert isinstance(request.param, str)
    return request.param


@pytest.fixture
def pki(pki_variant: str, pki_dirs: dict[str, certs.PKIFiles]) -> certs.PKIFiles:
    return pki_dirs[pki_variant]


@pytest.fixture(scope="module")
def root_ca() -> tuple[x509.Certificate, certs.PrivateKey]:
    return certs.create_ca("test root")


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


def test_generate_key_ec_is_p256() -> None:
    key = certs.generate_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


@pytest.mark.parametrize("bits", [2048, 3072])
def test_generate_key_rsa_sizes(bits: int) -> None:
    key = certs.generate_key("rsa", rsa_bits=bits)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == bits


@pytest.mark.parametrize("bits", [1024, 2047, 8192, 0])
def test_generate_key_rejects_bad_rsa_size(bits: int) -> None:
    with pytest.raises(ValueError, match=r"unsupported RSA key size .*2048, 3072, 4096"):
        certs.generate_key("rsa", rsa_bits=bits)


def test_generate_key_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown key type 'dsa'"):
        certs.generate_key("dsa")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# create_pki: files, permissions, encryption
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("key_type", "intermediate", "password"), PKI_VARIANTS)
def test_create_pki_writes_all_files(
    tmp_path: Path, key_type: certs.KeyType, intermediate: bool, password: str | None
) -> None:
    target = tmp_path / "nested" / "pki"
    files = certs.create_pki(
        target, key_type=key_type, intermediate=intermediate, password=password
    )
    assert files.directory == target
    expected = {"ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"}
    assert {p.name for p in target.iterdir()} == expected
    assert files.ca_cert == target / "ca.pem"
    assert files.ca_key == target / "ca.key"
    assert files.server_cert == target / "server.pem"
    assert files.server_key == target / "server.key"
    assert files.client_cert == target / "client.pem"
    assert files.client_key == target / "client.key"
    assert files.password == password
    for key_path in (files.ca_key, files.server_key, files.client_key):
        text = key_path.read_bytes()
        if password is None:
            assert text.startswith(b"-----BEGIN PRIVATE KEY-----")
        else:
            assert text.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        key = certs.load_private_key(key_path, password)
        expected_type = ec.EllipticCurvePrivateKey if key_type == "ec" else rsa.RSAPrivateKey
        assert isinstance(key, expected_type)
    # Each key belongs to its certificate.
    for cert_path, key_path in (
        (files.ca_cert, files.ca_key),
        (files.server_cert, files.server_key),
        (files.client_cert, files.client_key),
    ):
        cert = certs.load_certificate(cert_path)
        key = certs.load_private_key(key_path, password)
        assert spki(cert.public_key()) == spki(key.public_key())


def test_create_pki_password_not_in_repr(tmp_path: Path) -> None:
    files = certs.create_pki(tmp_path / "p", password="hunter2-secret")
    assert "hunter2-secret" not in repr(files)
    with pytest.raises(AttributeError):
        files.password = None  # type: ignore[misc]


@posix_only
def test_create_pki_permissions(tmp_path: Path) -> None:
    files = certs.create_pki(tmp_path / "fresh")
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    for key_path in (files.ca_key, files.server_key, files.client_key):
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    for cert_path in (files.ca_cert, files.server_cert, files.client_cert):
        assert stat.S_IMODE(cert_path.stat().st_mode) & 0o077 != 0o077  # sanity: a normal file
    # No stray temporary files are left behind.
    assert not [p for p in files.directory.iterdir() if p.name.startswith(".")]


@posix_only
def test_create_pki_keeps_mode_of_existing_directory(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    existing.chmod(0o755)
    files = certs.create_pki(existing)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_create_pki_overwrites_previous_pki(tmp_path: Path) -> None:
    first = certs.create_pki(tmp_path / "p")
    before = certs.load_certificate(first.ca_cert)
    second = certs.create_pki(tmp_path / "p")
    after = certs.load_certificate(second.ca_cert)
    assert before != after
    certs.load_certificate(second.server_cert).verify_directly_issued_by(after)


def test_create_pki_custom_hosts(tmp_path: Path) -> None:
    files = certs.create_pki(tmp_path / "p", hosts=["192.0.2.7", "dtls.example"])
    server = certs.load_certificate(files.server_cert)
    assert cn_of(server) == "192.0.2.7"
    assert list(san_of(server)) == [
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.DNSName("dtls.example"),
    ]


def test_create_pki_rejects_empty_hosts_and_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hosts"):
        certs.create_pki(tmp_path / "a", hosts=())
    with pytest.raises(ValueError, match="password must not be empty"):
        certs.create_pki(tmp_path / "b", password="")


# --------------------------------------------------------------------------
# Extensions
# --------------------------------------------------------------------------


def test_server_certificate_extensions(pki: certs.PKIFiles) -> None:
    server = certs.load_certificate(pki.server_cert)
    assert cn_of(server) == "localhost"
    san = san_of(server)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.IPv4Address("127.0.0.1"),
        ipaddress.IPv6Address("::1"),
    ]
    assert eku_of(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = ext(server, x509.BasicConstraints)
    assert constraints.critical
    assert basic_constraints(server).ca is False
    usage = key_usage(server)
    assert ext(server, x509.KeyUsage).critical
    assert usage.digital_signature
    assert not usage.key_cert_sign
    is_rsa = isinstance(server.public_key(), rsa.RSAPublicKey)
    assert usage.key_encipherment is is_rsa
    ski = ext(server, x509.SubjectKeyIdentifier).value
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    public_key = server.public_key()
    assert isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def test_client_certificate_extensions(pki: certs.PKIFiles) -> None:
    client = certs.load_certificate(pki.client_cert)
    assert cn_of(client) == "dtlskit client"
    assert eku_of(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert basic_constraints(client).ca is False
    assert san_of(client).get_values_for_type(x509.DNSName) == ["dtlskit-client"]


def test_ca_and_chain_layout(pki: certs.PKIFiles, pki_variant: str) -> None:
    roots = certs.load_certificates(pki.ca_cert)
    assert len(roots) == 1
    root = roots[0]
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    assert basic_constraints(root).ca is True
    assert ext(root, x509.BasicConstraints).critical
    usage = key_usage(root)
    assert ext(root, x509.KeyUsage).critical
    assert usage.key_cert_sign and usage.crl_sign
    root_ski = ext(root, x509.SubjectKeyIdentifier).value
    assert isinstance(root_ski, x509.SubjectKeyIdentifier)

    for chain_file in (pki.server_cert, pki.client_cert):
        chain = certs.load_certificates(chain_file)
        intermediate = "intermediate" in pki_variant
        assert len(chain) == (2 if intermediate else 1)
        issuer = chain[-1] if intermediate else root
        chain[0].verify_directly_issued_by(issuer)
        aki = ext(chain[0], x509.AuthorityKeyIdentifier).value
        issuer_ski = ext(issuer, x509.SubjectKeyIdentifier).value
        assert isinstance(aki, x509.AuthorityKeyIdentifier)
        assert isinstance(issuer_ski, x509.SubjectKeyIdentifier)
        assert aki.key_identifier == issuer_ski.digest
        if intermediate:
            inter = chain[1]
            inter.verify_directly_issued_by(root)
            assert basic_constraints(inter).ca is True
            assert basic_constraints(inter).path_length == 0
            assert inter.issuer == root.subject
            inter_aki = ext(inter, x509.AuthorityKeyIdentifier).value
            assert isinstance(inter_aki, x509.AuthorityKeyIdentifier)
            assert inter_aki.key_identifier == root_ski.digest


# --------------------------------------------------------------------------
# Chain verification: cryptography's verifier
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
    ids=["dns", "ipv4", "ipv6"],
)
def test_server_chain_verifies_with_cryptography(
    pki: certs.PKIFiles, subject: x509.DNSName | x509.IPAddress
) -> None:
    root = certs.load_certificate(pki.ca_cert)
    leaf, *intermediates = certs.load_certificates(pki.server_cert)
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(subject)
    chain = verifier.verify(leaf, intermediates)
    assert chain[0] == leaf
    assert chain[-1] == root
    assert len(chain) == 2 + len(intermediates)


def test_client_chain_verifies_with_cryptography(pki: certs.PKIFiles) -> None:
    root = certs.load_certificate(pki.ca_cert)
    leaf, *intermediates = certs.load_certificates(pki.client_cert)
    verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
    result = verifier.verify(leaf, intermediates)
    assert result.chain[0] == leaf
    assert result.chain[-1] == root


def test_cryptography_verifier_rejects_wrong_name_and_foreign_root(
    pki: certs.PKIFiles, root_ca: tuple[x509.Certificate, certs.PrivateKey]
) -> None:
    root = certs.load_certificate(pki.ca_cert)
    leaf, *intermediates = certs.load_certificates(pki.server_cert)
    wrong_name = (
        PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName("example.com"))
    )
    with pytest.raises(VerificationError):
        wrong_name.verify(leaf, intermediates)
    foreign = (
        PolicyBuilder().store(Store([root_ca[0]])).build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(VerificationError):
        foreign.verify(leaf, intermediates)
    # A client certificate is not acceptable as a server certificate (EKU).
    client_leaf, *client_chain = certs.load_certificates(pki.client_cert)
    as_server = (
        PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName("dtlskit-client"))
    )
    with pytest.raises(VerificationError):
        as_server.verify(client_leaf, client_chain)


# --------------------------------------------------------------------------
# Chain verification: the openssl command
# --------------------------------------------------------------------------


def _untrusted_args(chain_file: Path, tmp_path: Path) -> list[object]:
    chain = certs.load_certificates(chain_file)
    if len(chain) == 1:
        return []
    intermediate = tmp_path / "intermediate.pem"
    intermediate.write_bytes(b"".join(certs.certificate_pem(c) for c in chain[1:]))
    return ["-untrusted", intermediate]


@needs_openssl
def test_openssl_verifies_server_chain(pki: certs.PKIFiles, tmp_path: Path) -> None:
    untrusted = _untrusted_args(pki.server_cert, tmp_path)
    for check in (
        ["-verify_hostname", "localhost"],
        ["-verify_ip", "127.0.0.1"],
        ["-verify_ip", "::1"],
    ):
        result = run_openssl(
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            pki.ca_cert,
            *untrusted,
            *check,
            pki.server_cert,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().endswith(": OK")
    wrong = run_openssl(
        "verify",
        "-CAfile",
        pki.ca_cert,
        *untrusted,
        "-verify_hostname",
        "example.com",
        pki.server_cert,
    )
    assert wrong.returncode != 0


@needs_openssl
def test_openssl_verifies_client_chain(pki: certs.PKIFiles, tmp_path: Path) -> None:
    untrusted = _untrusted_args(pki.client_cert, tmp_path)
    ok = run_openssl(
        "verify", "-purpose", "sslclient", "-CAfile", pki.ca_cert, *untrusted, pki.client_cert
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The client certificate lacks serverAuth, so openssl refuses it as a server.
    as_server = run_openssl(
        "verify", "-purpose", "sslserver", "-CAfile", pki.ca_cert, *untrusted, pki.client_cert
    )
    assert as_server.returncode != 0
    # OpenSSL 3.0 says "unsuitable", other versions "unsupported".
    assert "certificate purpose" in as_server.stdout + as_server.stderr


@needs_openssl
def test_openssl_rejects_chain_without_intermediate_or_foreign_ca(
    tmp_path: Path, root_ca: tuple[x509.Certificate, certs.PrivateKey]
) -> None:
    files = certs.create_pki(tmp_path / "pki", intermediate=True)
    missing = run_openssl("verify", "-CAfile", files.ca_cert, files.server_cert)
    assert missing.returncode != 0
    foreign_ca = tmp_path / "foreign.pem"
    foreign_ca.write_bytes(certs.certificate_pem(root_ca[0]))
    untrusted = _untrusted_args(files.server_cert, tmp_path)
    foreign = run_openssl("verify", "-CAfile", foreign_ca, *untrusted, files.server_cert)
    assert foreign.returncode != 0


@needs_openssl
def test_openssl_reads_encrypted_key(tmp_path: Path) -> None:
    files = certs.create_pki(tmp_path / "pki", password="open sesame")
    good = run_openssl("pkey", "-in", files.server_key, "-passin", "pass:open sesame", "-pubout")
    assert good.returncode == 0, good.stderr
    expected = certs.load_certificate(files.server_cert).public_key()
    assert good.stdout.encode() == expected.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bad = run_openssl("pkey", "-in", files.server_key, "-passin", "pass:nope", "-noout")
    assert bad.returncode != 0


def test_pyopenssl_context_accepts_chain_and_key(tmp_path: Path) -> None:
    from OpenSSL import SSL

    files = certs.create_pki(tmp_path / "pki", password=PASSWORD, intermediate=True)
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate_chain_file(str(files.server_cert))
    ctx.use_privatekey(certs.load_private_key(files.server_key, PASSWORD))
    ctx.check_privatekey()


# --------------------------------------------------------------------------
# Loading and error messages
# --------------------------------------------------------------------------


def test_encrypted_key_password_handling(tmp_path: Path) -> None:
    files = certs.create_pki(tmp_path / "pki", password=PASSWORD)
    expected = spki(certs.load_certificate(files.server_cert).public_key())
    assert spki(certs.load_private_key(files.server_key, PASSWORD).public_key()) == expected
    as_bytes = PASSWORD.encode("utf-8")
    assert spki(certs.load_private_key(files.server_key, as_bytes).public_key()) == expected

    with pytest.raises(ValueError) as wrong:
        certs.load_private_key(files.server_key, "not the password")
    message = str(wrong.value)
    assert str(files.server_key) in message
    assert "wrong password" in message

    with pytest.raises(ValueError, match="encrypted but no password was given") as missing:
        certs.load_private_key(files.server_key)
    assert str(files.server_key) in str(missing.value)


def test_password_for_unencrypted_key_is_an_error(tmp_path: Path) -> None:
    files = certs.create_pki(tmp_path / "pki")
    with pytest.raises(ValueError, match="not encrypted") as info:
        certs.load_private_key(files.client_key, "whatever")
    assert str(files.client_key) in str(info.value)


def test_missing_files_raise_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "server.key"
    with pytest.raises(dtlskit.ConfigurationError) as info:
        certs.load_private_key(missing)
    assert str(missing) in str(info.value) and "not found" in str(info.value)
    with pytest.raises(dtlskit.ConfigurationError, match="certificate file not found"):
        certs.load_certificate(tmp_path / "nope.pem")
    with pytest.raises(dtlskit.ConfigurationError):
        certs.load_certificates(tmp_path / "nope.pem")


def test_garbage_files_raise_value_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"this is not a certificate\n")
    with pytest.raises(ValueError, match=f"cannot read certificate from {re.escape(str(junk))}"):
        certs.load_certificate(junk)
    with pytest.raises(ValueError, match=f"cannot read certificates from {re.escape(str(junk))}"):
        certs.load_certificates(junk)
    with pytest.raises(ValueError, match=f"cannot read private key from {re.escape(str(junk))}"):
        certs.load_private_key(junk)
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        certs.load_certificate(broken)
    with pytest.raises(ValueError, match="is a directory"):
        certs.load_certificate(tmp_path)


def test_load_der_certificate_and_key(
    tmp_path: Path, root_ca: tuple[x509.Certificate, certs.PrivateKey]
) -> None:
    cert, key = root_ca
    der = tmp_path / "ca.der"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    assert certs.load_certificate(der) == cert
    assert certs.load_certificates(der) == [cert]
    der_key = tmp_path / "ca.key.der"
    der_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert spki(certs.load_private_key(der_key).public_key()) == spki(cert.public_key())


def test_unsupported_key_type_is_rejected(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = tmp_path / "ed.key"
    path.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="unsupported key type"):
        certs.load_private_key(path)


def test_pem_helpers_round_trip(
    root_ca: tuple[x509.Certificate, certs.PrivateKey], tmp_path: Path
) -> None:
    cert, key = root_ca
    assert x509.load_pem_x509_certificate(certs.certificate_pem(cert)) == cert
    plain = certs.private_key_pem(key)
    assert plain.startswith(b"-----BEGIN PRIVATE KEY-----")
    encrypted = certs.private_key_pem(key, b"pw")
    assert encrypted.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(encrypted, password=b"pw")
    assert spki(loaded.public_key()) == spki(key.public_key())
    with pytest.raises(ValueError, match="password must not be empty"):
        certs.private_key_pem(key, "")


# --------------------------------------------------------------------------
# create_ca / issue_certificate details
# --------------------------------------------------------------------------


def test_create_ca_root_and_intermediate(
    root_ca: tuple[x509.Certificate, certs.PrivateKey],
) -> None:
    inter_cert, inter_key = certs.create_ca(
        "mid", issuer=root_ca, path_length=0, key_type="rsa", rsa_bits=2048
    )
    assert isinstance(inter_key, rsa.RSAPrivateKey)
    inter_cert.verify_directly_issued_by(root_ca[0])
    assert inter_cert.issuer == root_ca[0].subject
    assert basic_constraints(inter_cert).path_length == 0
    # A path_length=0 CA may issue leaves but no further CAs.
    leaf, _ = certs.issue_certificate((inter_cert, inter_key), "leaf", hosts=["leaf.test"])
    leaf.verify_directly_issued_by(inter_cert)
    with pytest.raises(ValueError, match="path length 0"):
        certs.create_ca("too deep", issuer=(inter_cert, inter_key))


def test_create_ca_with_given_key(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    key = certs.generate_key()
    cert, returned = certs.create_ca("own key", key=key)
    assert returned is key
    assert spki(cert.public_key()) == spki(key.public_key())


def test_issuer_must_be_a_matching_ca(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    other_key = certs.generate_key()
    with pytest.raises(ValueError, match="does not match"):
        certs.issue_certificate((root_ca[0], other_key), "x", hosts=["x"])
    leaf = certs.issue_certificate(root_ca, "leaf", hosts=["leaf"])
    with pytest.raises(ValueError, match="not a CA certificate"):
        certs.issue_certificate(leaf, "grandchild", hosts=["g"])
    with pytest.raises(ValueError, match="not a CA certificate"):
        certs.create_ca("sub", issuer=leaf)


def test_issue_certificate_host_parsing(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    cert, _ = certs.issue_certificate(
        root_ca,
        "multi",
        hosts=[
            "Example.TEST",
            "[::1]",
            "10.0.0.1",
            "bücher.example",
            "example.test",
            "*.wild.test",
        ],
    )
    assert list(san_of(cert)) == [
        x509.DNSName("example.test"),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.DNSName("xn--bcher-kva.example"),
        x509.DNSName("*.wild.test"),
    ]
    with pytest.raises(TypeError, match="single string"):
        certs.issue_certificate(root_ca, "x", hosts="localhost")
    with pytest.raises(ValueError, match="empty"):
        certs.issue_certificate(root_ca, "x", hosts=["  "])


def test_issue_certificate_usage_flags(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    both, _ = certs.issue_certificate(root_ca, "both", hosts=["b"], server=True, client=True)
    assert eku_of(both) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    no_hosts, _ = certs.issue_certificate(root_ca, "plain")
    with pytest.raises(x509.ExtensionNotFound):
        no_hosts.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    with pytest.raises(ValueError, match="server=True, client=True or both"):
        certs.issue_certificate(root_ca, "none", server=False, client=False)


def test_common_name_length_checked(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    with pytest.raises(ValueError, match="1 to 64 characters"):
        certs.issue_certificate(root_ca, "x" * 65)
    with pytest.raises(ValueError, match="1 to 64 characters"):
        certs.create_ca("")


# --------------------------------------------------------------------------
# Validity periods: defaults, expired and not-yet-valid certificates
# --------------------------------------------------------------------------


def test_default_validity_allows_clock_skew(
    root_ca: tuple[x509.Certificate, certs.PrivateKey],
) -> None:
    before = now()
    cert, _ = certs.issue_certificate(root_ca, "skew", hosts=["skew"], days=10)
    start = cert.not_valid_before_utc
    assert before - timedelta(hours=1, seconds=5) <= start <= before - timedelta(minutes=59)
    assert cert.not_valid_after_utc - start == timedelta(days=10)


def test_expired_certificate(tmp_path: Path) -> None:
    # An issuer valid for the whole period, so that only the leaf is out of date.
    old_ca = certs.create_ca("old enough", not_before=now() - timedelta(days=60))
    start = now() - timedelta(days=30)
    end = now() - timedelta(days=1)
    cert, _ = certs.issue_certificate(
        old_ca, "localhost", hosts=["localhost"], not_before=start, not_after=end
    )
    assert cert.not_valid_before_utc == start.replace(microsecond=0)
    assert cert.not_valid_after_utc == end.replace(microsecond=0)
    verifier = (
        PolicyBuilder().store(Store([old_ca[0]])).build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(VerificationError):
        verifier.verify(cert, [])
    # Valid at a moment inside its window.
    past = PolicyBuilder().store(Store([old_ca[0]])).time(now() - timedelta(days=10))
    past.build_server_verifier(x509.DNSName("localhost")).verify(cert, [])
    if OPENSSL is not None:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(certs.certificate_pem(old_ca[0]))
        leaf_file = tmp_path / "leaf.pem"
        leaf_file.write_bytes(certs.certificate_pem(cert))
        result = run_openssl("verify", "-CAfile", ca_file, leaf_file)
        assert result.returncode != 0
        assert "expired" in result.stdout + result.stderr


def test_not_yet_valid_certificate(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    start = now() + timedelta(days=2)
    cert, _ = certs.issue_certificate(root_ca, "later", hosts=["later.test"], not_before=start)
    assert cert.not_valid_before_utc == start.replace(microsecond=0)
    assert cert.not_valid_after_utc == (start + timedelta(days=365)).replace(microsecond=0)
    builder = PolicyBuilder().store(Store([root_ca[0]]))
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.DNSName("later.test")).verify(cert, [])
    future = builder.time(now() + timedelta(days=3))
    future.build_server_verifier(x509.DNSName("later.test")).verify(cert, [])


def test_only_not_after_in_the_past_gives_expired_window(
    root_ca: tuple[x509.Certificate, certs.PrivateKey],
) -> None:
    end = now() - timedelta(days=2)
    cert, _ = certs.issue_certificate(root_ca, "old", not_after=end, days=5)
    assert cert.not_valid_after_utc == end.replace(microsecond=0)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=5)


def test_expired_ca_can_be_created() -> None:
    end = now() - timedelta(hours=3)
    cert, _ = certs.create_ca("old root", not_before=end - timedelta(days=1), not_after=end)
    assert cert.not_valid_after_utc < now()


def test_naive_datetimes_are_utc(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    naive = datetime(2030, 1, 2, 3, 4, 5)
    cert, _ = certs.issue_certificate(root_ca, "naive", not_before=naive)
    assert cert.not_valid_before_utc == naive.replace(tzinfo=timezone.utc)
    other_zone = timezone(timedelta(hours=5))
    aware = datetime(2030, 1, 2, 8, 4, 5, tzinfo=other_zone)
    cert2, _ = certs.issue_certificate(root_ca, "aware", not_before=aware)
    assert cert2.not_valid_before_utc == naive.replace(tzinfo=timezone.utc)


def test_invalid_validity_rejected(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    start = now()
    with pytest.raises(ValueError, match="must be later than not_before"):
        certs.issue_certificate(root_ca, "x", not_before=start, not_after=start)
    with pytest.raises(ValueError, match="days must be positive"):
        certs.issue_certificate(root_ca, "x", days=0)
    with pytest.raises(ValueError, match="days must be positive"):
        certs.create_ca(days=-1)


# --------------------------------------------------------------------------
# CSRs
# --------------------------------------------------------------------------


def _make_csr(key: certs.PrivateKey) -> x509.CertificateSigningRequest:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Sensors"),
            x509.NameAttribute(NameOID.COMMON_NAME, "device-0001"),
        ]
    )
    san = x509.SubjectAlternativeName(
        [x509.DNSName("device-0001.acme.test"), x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]
    )
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_sign_csr_round_trip(
    root_ca: tuple[x509.Certificate, certs.PrivateKey], key_type: certs.KeyType
) -> None:
    key = certs.generate_key(key_type)
    csr = _make_csr(key)
    cert = certs.sign_csr(
        csr.public_bytes(serialization.Encoding.PEM), root_ca, days=30, client=True
    )
    assert cert.subject == csr.subject
    assert cert.issuer == root_ca[0].subject
    assert san_of(cert) == csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert spki(cert.public_key()) == spki(key.public_key())
    cert.verify_directly_issued_by(root_ca[0])
    # The CSR asked to be a CA; that request must be ignored.
    assert basic_constraints(cert).ca is False
    assert eku_of(cert) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)
    verifier = (
        PolicyBuilder()
        .store(Store([root_ca[0]]))
        .build_server_verifier(x509.DNSName("device-0001.acme.test"))
    )
    verifier.verify(cert, [])


def test_sign_csr_rejects_tampered_request(
    root_ca: tuple[x509.Certificate, certs.PrivateKey],
) -> None:
    csr = _make_csr(certs.generate_key())
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(b"device-0001.acme.test") == 1
    tampered_der = der.replace(b"device-0001.acme.test", b"device-0666.acme.test")
    tampered = x509.load_der_x509_csr(tampered_der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError, match="CSR signature is invalid"):
        certs.sign_csr(tampered, root_ca)


def test_sign_csr_rejects_garbage(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    with pytest.raises(ValueError, match="cannot parse CSR"):
        certs.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAA==\n", root_ca)


# --------------------------------------------------------------------------
# describe_certificate
# --------------------------------------------------------------------------


def test_describe_certificate(pki_dirs: dict[str, certs.PKIFiles]) -> None:
    files = pki_dirs["rsa-intermediate-password"]
    cert = certs.load_certificate(files.server_cert)
    text = certs.describe_certificate(cert)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    colon_hex = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    assert len(text.splitlines()) >= 8
    assert "CN=localhost" in text
    assert "CN=dtlskit dev intermediate CA" in text
    assert "DNS:localhost" in text
    assert "IP:127.0.0.1" in text
    assert "IP:::1" in text
    assert colon_hex.upper() in text.upper()
    assert certs.certificate_fingerprint(cert).lower() == colon_hex
    assert cert.not_valid_before_utc.isoformat() in text
    assert cert.not_valid_after_utc.isoformat() in text
    assert "+00:00" in text
    assert "RSA" in text and "2048" in text
    assert f"{cert.serial_number:x}" in text


def test_describe_ec_ca(root_ca: tuple[x509.Certificate, certs.PrivateKey]) -> None:
    text = certs.describe_certificate(root_ca[0])
    assert "secp256r1" in text
    assert "CN=test root" in text
    assert "CA:                yes" in text


# --------------------------------------------------------------------------
# dev_pki
# --------------------------------------------------------------------------


def _server_fingerprint(files: certs.PKIFiles) -> str:
    return certs.certificate_fingerprint(certs.load_certificate(files.server_cert))


def test_dev_pki_created_once_and_reused(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "dev"
    first = certs.dev_pki(cache)
    assert first.directory == cache
    assert first.password is None
    for path in (
        first.ca_cert,
        first.ca_key,
        first.server_cert,
        first.server_key,
        first.client_cert,
        first.client_key,
    ):
        assert path.is_file()
    mtime = first.server_cert.stat().st_mtime_ns
    second = certs.dev_pki(cache)
    assert second == first
    assert _server_fingerprint(second) == _server_fingerprint(first)
    assert second.server_cert.stat().st_mtime_ns == mtime
    # The cached material is a working PKI.
    root = certs.load_certificate(second.ca_cert)
    leaf = certs.load_certificate(second.server_cert)
    PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName("localhost")).verify(
        leaf, []
    )
    # No staging or stale directories are left next to it.
    assert [p.name for p in cache.parent.iterdir()] == ["dev"]


def test_dev_pki_default_location_follows_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    files = certs.dev_pki()
    assert files.directory == tmp_path / "xdg" / "dtlskit" / "dev-pki"
    assert files.server_cert.is_file()


def test_dev_pki_without_xdg_uses_home_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    files = certs.dev_pki()
    assert files.directory == tmp_path / "home" / ".cache" / "dtlskit" / "dev-pki"


@pytest.mark.parametrize("victim", ["ca_cert", "ca_key", "server_key", "client_cert"])
def test_dev_pki_regenerates_when_a_file_is_missing(tmp_path: Path, victim: str) -> None:
    first = certs.dev_pki(tmp_path / "dev")
    old = _server_fingerprint(first)
    path = getattr(first, victim)
    assert isinstance(path, Path)
    path.unlink()
    second = certs.dev_pki(tmp_path / "dev")
    assert path.is_file()
    assert _server_fingerprint(second) != old
    certs.load_certificate(second.server_cert).verify_directly_issued_by(
        certs.load_certificate(second.ca_cert)
    )


def test_dev_pki_regenerates_when_a_file_is_corrupt(tmp_path: Path) -> None:
    first = certs.dev_pki(tmp_path / "dev")
    old = _server_fingerprint(first)
    first.client_key.write_bytes(b"garbage")
    second = certs.dev_pki(tmp_path / "dev")
    assert _server_fingerprint(second) != old
    certs.load_private_key(second.client_key)


@pytest.mark.parametrize(("remaining_days", "regenerated"), [(3, True), (30, False)])
def test_dev_pki_regenerates_before_server_expiry(
    tmp_path: Path, remaining_days: int, regenerated: bool
) -> None:
    files = certs.dev_pki(tmp_path / "dev")
    ca = (certs.load_certificate(files.ca_cert), certs.load_private_key(files.ca_key))
    server_key = certs.load_private_key(files.server_key)
    short, _ = certs.issue_certificate(
        ca,
        "localhost",
        hosts=["localhost", "127.0.0.1", "::1"],
        key=server_key,
        not_after=now() + timedelta(days=remaining_days),
    )
    files.server_cert.write_bytes(certs.certificate_pem(short))
    again = certs.dev_pki(tmp_path / "dev")
    fresh = certs.load_certificate(again.server_cert)
    if regenerated:
        assert fresh != short
        assert fresh.not_valid_after_utc > now() + timedelta(days=300)
    else:
        assert fresh == short
