"""Certificates and keys for DTLS: a small, self-contained PKI toolkit.

This module creates private keys, certificate authorities and leaf
certificates, writes and reads them as PEM files, signs certificate signing
requests and describes certificates in human-readable form.  It is meant for
tests, development set-ups and small private deployments; it relies only on
the ``cryptography`` package and the standard library.

Typical use::

    from dtlskit import certs

    files = certs.create_pki("/tmp/pki")       # CA, server and client material
    files = certs.dev_pki()                     # cached development PKI

All validity times are handled in UTC.  Naive :class:`~datetime.datetime`
values given to this module are taken to be in UTC.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .exceptions import ConfigurationError, InvalidArgument

__all__ = [
    "KeyType",
    "PKIFiles",
    "PrivateKey",
    "certificate_fingerprint",
    "certificate_pem",
    "create_ca",
    "create_pki",
    "describe_certificate",
    "dev_pki",
    "generate_key",
    "issue_certificate",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "private_key_pem",
    "sign_csr",
]

KeyType: TypeAlias = Literal["ec", "rsa"]
"""Kind of key to generate: ``"ec"`` (NIST P-256) or ``"rsa"``."""

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""Private key types this module creates, loads and signs with."""

PathLike: TypeAlias = str | os.PathLike[str]

_RSA_SIZES = (2048, 3072, 4096)
_CLOCK_SKEW = timedelta(hours=1)
_DEV_PKI_MIN_REMAINING = timedelta(days=7)

_CA_CERT = "ca.pem"
_CA_KEY = "ca.key"
_SERVER_CERT = "server.pem"
_SERVER_KEY = "server.key"
_CLIENT_CERT = "client.pem"
_CLIENT_KEY = "client.key"
_CLIENT_CN = "dtlskit client"
# cryptography's client verifier insists on a subjectAltName on client
# certificates as well, so the generated client certificate carries this DNS name.
_CLIENT_SAN = "dtlskit-client"
_SERVER_FALLBACK_CN = "dtlskit server"


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


def generate_key(key_type: KeyType = "ec", rsa_bits: int = 2048) -> PrivateKey:
    """Generate a new private key.

    :param key_type: ``"ec"`` for an elliptic-curve key on NIST P-256
        (secp256r1), or ``"rsa"`` for an RSA key.
    :param rsa_bits: RSA modulus size; one of 2048, 3072 or 4096.  Ignored for
        EC keys.
    :raises ValueError: for an unknown key type or an unsupported RSA size.
    """
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        if isinstance(rsa_bits, bool) or rsa_bits not in _RSA_SIZES:
            allowed = ", ".join(str(size) for size in _RSA_SIZES)
            raise ConfigurationError(
                f"unsupported RSA key size {rsa_bits!r}; choose one of {allowed}"
            )
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ConfigurationError(f"unknown key type {key_type!r}; expected 'ec' or 'rsa'")


def _check_private_key(key: object, what: str) -> PrivateKey:
    if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return key
    raise InvalidArgument(
        f"{what} must be an EllipticCurvePrivateKey or RSAPrivateKey, not {type(key).__name__}"
    )


def _spki(key: object) -> bytes:
    """DER SubjectPublicKeyInfo of a public key, for comparisons."""
    if isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    raise ConfigurationError(f"unsupported public key type {type(key).__name__}")


# --------------------------------------------------------------------------
# Validity periods and names
# --------------------------------------------------------------------------


def _as_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidArgument(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _validity(
    days: int, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    """Resolve the validity window of a new certificate.

    ``not_before`` defaults to one hour ago (to tolerate clock skew between
    peers) and ``not_after`` to ``not_before + days``.  When only
    ``not_after`` is given and it lies before the default start, the window
    is placed to end at ``not_after`` and last ``days`` days, which makes it
    easy to produce already-expired certificates.
    """
    if isinstance(days, bool) or not isinstance(days, int):
        raise InvalidArgument(f"days must be an int, not {type(days).__name__}")
    if days <= 0:
        raise ConfigurationError(f"days must be positive, got {days}")
    end = _as_utc(not_after, "not_after") if not_after is not None else None
    if not_before is not None:
        start = _as_utc(not_before, "not_before")
    else:
        start = datetime.now(timezone.utc) - _CLOCK_SKEW
        if end is not None and end <= start:
            start = end - timedelta(days=days)
    if end is None:
        end = start + timedelta(days=days)
    if end <= start:
        raise ConfigurationError(
            f"not_after ({end.isoformat()}) must be later than not_before ({start.isoformat()})"
        )
    return start, end


def _common_name(name: str) -> x509.Name:
    if not isinstance(name, str):
        raise InvalidArgument(f"common name must be a str, not {type(name).__name__}")
    if not 1 <= len(name) <= 64:
        raise ConfigurationError(
            f"common name must be 1 to 64 characters long, got {len(name)}: {name!r}"
        )
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Turn host names and IP literals into SubjectAlternativeName entries."""
    if isinstance(hosts, (str, bytes)):
        raise InvalidArgument("hosts must be a sequence of strings, not a single string")
    names: list[x509.GeneralName] = []
    seen: set[x509.GeneralName] = set()
    for host in hosts:
        if not isinstance(host, str):
            raise InvalidArgument(f"host names must be str, not {type(host).__name__}")
        text = host.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if not text:
            raise ConfigurationError("host names must not be empty")
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(text))
        except ValueError:
            if text.isascii():
                ascii_name = text
            else:
                try:
                    ascii_name = text.encode("idna").decode("ascii")
                except UnicodeError as exc:
                    raise ConfigurationError(f"invalid host name {host!r}: {exc}") from None
            entry = x509.DNSName(ascii_name.lower())
        if entry not in seen:
            seen.add(entry)
            names.append(entry)
    return names


# --------------------------------------------------------------------------
# Certificate building
# --------------------------------------------------------------------------


def _check_issuer(ca: tuple[x509.Certificate, PrivateKey], *, for_ca: bool) -> PrivateKey:
    """Validate an issuer ``(certificate, key)`` pair and return its key."""
    try:
        cert, key = ca
    except (TypeError, ValueError):
        raise InvalidArgument("issuer must be a (certificate, private key) pair") from None
    if not isinstance(cert, x509.Certificate):
        raise InvalidArgument(
            f"issuer certificate must be an x509.Certificate, not {type(cert).__name__}"
        )
    key = _check_private_key(key, "issuer key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ConfigurationError(
            f"the issuer private key does not match the issuer certificate "
            f"({cert.subject.rfc4514_string()})"
        )
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigurationError(
            f"the issuer certificate ({cert.subject.rfc4514_string()}) is not a CA certificate"
        )
    if for_ca and constraints.path_length == 0:
        raise ConfigurationError(
            f"the issuer certificate ({cert.subject.rfc4514_string()}) has path length 0 "
            "and cannot issue further CA certificates"
        )
    return key


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = issuer.public_key()
        if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise ConfigurationError("unsupported issuer public key type") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _leaf_certificate(
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    alt_names: x509.SubjectAlternativeName | None,
    *,
    server: bool,
    client: bool,
    start: datetime,
    end: datetime,
) -> x509.Certificate:
    usages: list[x509.ObjectIdentifier] = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if not usages:
        raise ConfigurationError("a leaf certificate needs server=True, client=True or both")
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(issuer_cert), critical=False)
    )
    if alt_names is not None:
        # RFC 5280 4.2.1.6: the extension is critical when the subject is empty.
        builder = builder.add_extension(alt_names, critical=len(subject) == 0)
    return builder.sign(issuer_key, hashes.SHA256())


def create_ca(
    common_name: str = "dtlskit dev CA",
    *,
    key: PrivateKey | None = None,
    key_type: KeyType = "ec",
    rsa_bits: int = 2048,
    days: int = 365,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    path_length: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Create a certificate authority.

    Without ``issuer`` the result is a self-signed root CA; with an
    ``issuer`` ``(certificate, key)`` pair it is an intermediate CA signed by
    that issuer.  The certificate carries a critical BasicConstraints
    (``CA=True``, optional ``path_length``), a critical KeyUsage
    (keyCertSign, cRLSign) and Subject/Authority Key Identifiers.

    :param common_name: subject CN of the CA (1 to 64 characters).
    :param key: key to certify; a new one is generated when omitted.
    :param key_type: kind of key to generate when ``key`` is omitted.
    :param rsa_bits: RSA size to generate when ``key_type`` is ``"rsa"``.
    :param days: validity in days when ``not_after`` is not given.
    :param issuer: parent CA for an intermediate, or None for a root.
    :param path_length: maximum number of intermediate CAs below this one,
        or None for no limit.
    :param not_before: start of validity; defaults to one hour ago.
    :param not_after: end of validity; defaults to ``not_before + days``.
    :returns: the CA certificate and its private key.
    :raises ValueError: for invalid parameters or an unusable issuer.
    """
    subject = _common_name(common_name)
    if path_length is not None and (
        isinstance(path_length, bool) or not isinstance(path_length, int) or path_length < 0
    ):
        raise ConfigurationError(
            f"path_length must be a non-negative int or None, got {path_length!r}"
        )
    start, end = _validity(days, not_before, not_after)
    if issuer is not None:
        signing_key = _check_issuer(issuer, for_ca=True)
        issuer_cert: x509.Certificate | None = issuer[0]
    else:
        signing_key = None
        issuer_cert = None
    own_key = (
        _check_private_key(key, "key") if key is not None else generate_key(key_type, rsa_bits)
    )
    public_key = own_key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    if issuer_cert is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        issuer_name = subject
    else:
        aki = _authority_key_id(issuer_cert)
        issuer_name = issuer_cert.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    cert = builder.sign(signing_key if signing_key is not None else own_key, hashes.SHA256())
    return cert, own_key


def issue_certificate(
    ca: tuple[x509.Certificate, PrivateKey],
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    server: bool = True,
    client: bool = False,
    key: PrivateKey | None = None,
    key_type: KeyType = "ec",
    rsa_bits: int = 2048,
    days: int = 365,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Issue a leaf (end-entity) certificate signed by ``ca``.

    The certificate has a critical BasicConstraints ``CA=False``, a critical
    KeyUsage (digitalSignature, plus keyEncipherment for RSA keys), an
    ExtendedKeyUsage with serverAuth and/or clientAuth, Subject/Authority Key
    Identifiers and, when ``hosts`` is not empty, a SubjectAlternativeName
    with a DNSName for each host name and an IPAddress for each IPv4/IPv6
    literal.  Note that ``cryptography``'s client verifier requires a SAN on
    client certificates as well, so pass at least one name in ``hosts``
    for certificates that are to be checked with it.

    :param ca: issuing CA as a ``(certificate, private key)`` pair.
    :param common_name: subject CN (1 to 64 characters).
    :param hosts: host names and IP addresses to put in the SAN extension.
    :param server: include the serverAuth extended key usage.
    :param client: include the clientAuth extended key usage.
    :param key: key to certify; a new one is generated when omitted.
    :param key_type: kind of key to generate when ``key`` is omitted.
    :param rsa_bits: RSA size to generate when ``key_type`` is ``"rsa"``.
    :param days: validity in days when ``not_after`` is not given.
    :param not_before: start of validity; defaults to one hour ago to allow
        for clock skew.
    :param not_after: end of validity; defaults to ``not_before + days``.
    :returns: the certificate and its private key.
    :raises ValueError: for invalid parameters or an unusable CA.
    """
    subject = _common_name(common_name)
    names = _general_names(hosts)
    start, end = _validity(days, not_before, not_after)
    issuer_key = _check_issuer(ca, for_ca=False)
    own_key = (
        _check_private_key(key, "key") if key is not None else generate_key(key_type, rsa_bits)
    )
    alt_names = x509.SubjectAlternativeName(names) if names else None
    cert = _leaf_certificate(
        ca[0],
        issuer_key,
        subject,
        own_key.public_key(),
        alt_names,
        server=server,
        client=client,
        start=start,
        end=end,
    )
    return cert, own_key


def sign_csr(
    csr_pem: bytes,
    ca: tuple[x509.Certificate, PrivateKey],
    *,
    days: int = 365,
    server: bool = True,
    client: bool = False,
) -> x509.Certificate:
    """Issue a leaf certificate for a PEM certificate signing request.

    The CSR's signature is checked first.  The new certificate keeps the
    CSR's subject and its SubjectAlternativeName extension (other requested
    extensions are ignored) and gets the same extensions as
    :func:`issue_certificate`.

    :param csr_pem: the PEM-encoded CSR.
    :param ca: issuing CA as a ``(certificate, private key)`` pair.
    :param days: validity in days, starting one hour ago.
    :param server: include the serverAuth extended key usage.
    :param client: include the clientAuth extended key usage.
    :raises ValueError: when the CSR cannot be parsed, its signature is
        invalid ("CSR signature is invalid"), its key type is unsupported or
        it names no subject at all.
    """
    if isinstance(csr_pem, str):
        csr_pem = csr_pem.encode("ascii", "replace")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot parse CSR: not a PEM certificate signing request ({exc})"
        ) from None
    if not csr.is_signature_valid:
        raise ConfigurationError("CSR signature is invalid")
    public_key = csr.public_key()
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise ConfigurationError(
            f"unsupported CSR key type {type(public_key).__name__}; expected an EC or RSA key"
        )
    try:
        alt_names: x509.SubjectAlternativeName | None = csr.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        alt_names = None
    if len(csr.subject) == 0 and alt_names is None:
        raise ConfigurationError("CSR has neither a subject name nor a subjectAltName extension")
    start, end = _validity(days, None, None)
    issuer_key = _check_issuer(ca, for_ca=False)
    return _leaf_certificate(
        ca[0],
        issuer_key,
        csr.subject,
        public_key,
        alt_names,
        server=server,
        client=client,
        start=start,
        end=end,
    )


# --------------------------------------------------------------------------
# Serialisation and loading
# --------------------------------------------------------------------------


def certificate_pem(cert: x509.Certificate) -> bytes:
    """Return ``cert`` encoded as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey, password: str | bytes | None = None) -> bytes:
    """Return ``key`` as a PKCS#8 PEM document.

    :param key: the private key.
    :param password: when given (non-empty), the key is encrypted with the
        best encryption available in ``cryptography``; a ``str`` password is
        encoded as UTF-8.
    :raises ValueError: for an empty password.
    """
    key = _check_private_key(key, "key")
    encryption: serialization.KeySerializationEncryption
    if password is None:
        encryption = serialization.NoEncryption()
    else:
        secret = _password_bytes(password)
        if not secret:
            raise ConfigurationError("password must not be empty; pass None for an unencrypted key")
        encryption = serialization.BestAvailableEncryption(secret)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _password_bytes(password: str | bytes) -> bytes:
    if isinstance(password, str):
        return password.encode("utf-8")
    if isinstance(password, bytes):
        return password
    raise InvalidArgument(f"password must be str or bytes, not {type(password).__name__}")


def _read(path: PathLike, what: str) -> tuple[Path, bytes]:
    file = Path(path)
    try:
        return file, file.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} file not found: {file}") from None
    except IsADirectoryError:
        raise ConfigurationError(f"cannot read {what} from {file}: it is a directory") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} from {file}: {exc.strerror}") from None


def load_certificate(path: PathLike) -> x509.Certificate:
    """Load the first certificate from a PEM (or DER) file.

    :raises ConfigurationError: when the file does not exist or cannot be read.
    :raises ValueError: when the file holds no readable certificate.
    """
    file, data = _read(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot read certificate from {file}: not a PEM or DER certificate ({exc})"
        ) from None


def load_certificates(path: PathLike) -> list[x509.Certificate]:
    """Load every certificate from a PEM file (or the one in a DER file), in order.

    :raises ConfigurationError: when the file does not exist or cannot be read.
    :raises ValueError: when the file holds no readable certificate.
    """
    file, data = _read(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot read certificates from {file}: no PEM or DER certificate found ({exc})"
        ) from None


def load_private_key(path: PathLike, password: str | bytes | None = None) -> PrivateKey:
    """Load an EC or RSA private key from a PEM (or DER) file.

    :param path: the key file.
    :param password: password of an encrypted key, or None for a plain key.
    :raises ConfigurationError: when the file does not exist or cannot be read.
    :raises ValueError: when the key cannot be read: wrong or missing
        password, password given for an unencrypted key, not a key at all,
        or an unsupported key type.  The message names the file and cause.
    """
    file, data = _read(path, "private key")
    secret = _password_bytes(password) if password is not None else None
    is_pem = b"-----BEGIN" in data
    try:
        if is_pem:
            key = serialization.load_pem_private_key(data, password=secret)
        else:
            key = serialization.load_der_private_key(data, password=secret)
    except TypeError as exc:
        if secret is None:
            cause = "the key is encrypted but no password was given"
        elif "not encrypted" in str(exc):
            cause = "a password was given but the key is not encrypted"
        else:
            cause = str(exc)
        raise ConfigurationError(f"cannot read private key from {file}: {cause}") from None
    except UnsupportedAlgorithm as exc:
        raise ConfigurationError(
            f"cannot read private key from {file}: unsupported key ({exc})"
        ) from None
    except ValueError:
        if secret is not None:
            cause = "wrong password or not a PEM key"
        elif is_pem:
            cause = "not a valid PEM private key"
        else:
            cause = "not a PEM or DER private key"
        raise ConfigurationError(f"cannot read private key from {file}: {cause}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ConfigurationError(
            f"cannot read private key from {file}: unsupported key type "
            f"{type(key).__name__} (only EC and RSA keys are supported)"
        )
    return key


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, with permission bits ``mode``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp_name, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


# --------------------------------------------------------------------------
# Whole PKIs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PKIFiles:
    """Paths of the files written by :func:`create_pki` and :func:`dev_pki`."""

    directory: Path
    """Directory that holds all the files."""
    ca_cert: Path
    """PEM file with the (root) CA certificate; use it as the trust store."""
    ca_key: Path
    """PEM file with the root CA's private key."""
    server_cert: Path
    """PEM file with the server certificate, followed by any intermediate CA."""
    server_key: Path
    """PEM file with the server's private key."""
    client_cert: Path
    """PEM file with the client certificate, followed by any intermediate CA."""
    client_key: Path
    """PEM file with the client's private key."""
    password: str | None = field(default=None, repr=False)
    """Password protecting the key files, or None when they are not encrypted."""


def _pki_files(directory: Path, password: str | None) -> PKIFiles:
    return PKIFiles(
        directory=directory,
        ca_cert=directory / _CA_CERT,
        ca_key=directory / _CA_KEY,
        server_cert=directory / _SERVER_CERT,
        server_key=directory / _SERVER_KEY,
        client_cert=directory / _CLIENT_CERT,
        client_key=directory / _CLIENT_KEY,
        password=password,
    )


def create_pki(
    directory: PathLike,
    *,
    key_type: KeyType = "ec",
    rsa_bits: int = 2048,
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 365,
    password: str | None = None,
    intermediate: bool = False,
) -> PKIFiles:
    """Create a complete test PKI (CA, server and client) in ``directory``.

    Writes ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``,
    ``client.pem`` and ``client.key``.  The directory is created when
    missing (mode 0o700); key files get mode 0o600 and are encrypted when a
    ``password`` is given.  Existing files of these names are replaced.

    The server certificate's CN is the first host and its SANs are all
    ``hosts``, with serverAuth usage; the client certificate has CN
    ``"dtlskit client"``, the SAN ``DNS:dtlskit-client`` and clientAuth
    usage.

    With ``intermediate=True`` the leaves are issued by an intermediate CA
    under the root; ``server.pem`` and ``client.pem`` then hold the leaf
    followed by the intermediate certificate (a full chain file), while
    ``ca.pem`` holds only the root.  The intermediate's key is not kept.

    :raises ValueError: for invalid parameters, e.g. an empty ``hosts``.
    """
    names = _general_names(hosts)
    if not names:
        raise ConfigurationError("hosts must name at least one host name or IP address")
    first = hosts[0].strip()
    server_cn = first if 1 <= len(first) <= 64 else _SERVER_FALLBACK_CN
    if password is not None and not password:
        raise ConfigurationError("password must not be empty; pass None for unencrypted keys")
    start, end = _validity(days, None, None)

    root = create_ca(key_type=key_type, rsa_bits=rsa_bits, not_before=start, not_after=end)
    chain: list[x509.Certificate] = []
    signer = root
    if intermediate:
        signer = create_ca(
            "dtlskit dev intermediate CA",
            key_type=key_type,
            rsa_bits=rsa_bits,
            issuer=root,
            path_length=0,
            not_before=start,
            not_after=end,
        )
        chain.append(signer[0])
    server_cert, server_key = issue_certificate(
        signer,
        server_cn,
        hosts=hosts,
        server=True,
        client=False,
        key_type=key_type,
        rsa_bits=rsa_bits,
        not_before=start,
        not_after=end,
    )
    client_cert, client_key = issue_certificate(
        signer,
        _CLIENT_CN,
        hosts=(_CLIENT_SAN,),
        server=False,
        client=True,
        key_type=key_type,
        rsa_bits=rsa_bits,
        not_before=start,
        not_after=end,
    )

    target = Path(directory)
    if not target.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, 0o700)
    files = _pki_files(target, password)

    def chain_pem(leaf: x509.Certificate) -> bytes:
        return b"".join(certificate_pem(cert) for cert in [leaf, *chain])

    _write_file(files.ca_key, private_key_pem(root[1], password), 0o600)
    _write_file(files.server_key, private_key_pem(server_key, password), 0o600)
    _write_file(files.client_key, private_key_pem(client_key, password), 0o600)
    _write_file(files.ca_cert, certificate_pem(root[0]), 0o644)
    _write_file(files.server_cert, chain_pem(server_cert), 0o644)
    _write_file(files.client_cert, chain_pem(client_cert), 0o644)
    return files


def _default_dev_pki_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return cache / "dtlskit" / "dev-pki"


def _dev_pki_usable(files: PKIFiles) -> bool:
    """True when every file is present, consistent and not about to expire."""
    try:
        ca = load_certificate(files.ca_cert)
        deadline = datetime.now(timezone.utc) + _DEV_PKI_MIN_REMAINING
        pairs = ((files.server_cert, files.server_key), (files.client_cert, files.client_key))
        if ca.not_valid_after_utc <= deadline:
            return False
        if _spki(load_private_key(files.ca_key).public_key()) != _spki(ca.public_key()):
            return False
        for cert_path, key_path in pairs:
            cert = load_certificate(cert_path)
            if cert.not_valid_after_utc <= deadline:
                return False
            cert.verify_directly_issued_by(ca)
            if _spki(load_private_key(key_path).public_key()) != _spki(cert.public_key()):
                return False
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    return True


def dev_pki(cache_dir: PathLike | None = None) -> PKIFiles:
    """Return a persistent development PKI, creating it on first use.

    The PKI (EC keys, no password, hosts ``localhost``, ``127.0.0.1`` and
    ``::1``) lives in ``cache_dir`` when given, otherwise in
    ``$XDG_CACHE_HOME/dtlskit/dev-pki`` (``~/.cache/dtlskit/dev-pki`` when
    the variable is unset).  It is re-created when any file is missing or
    unreadable, when the files do not belong together, or when a
    certificate expires within 7 days.

    A new PKI is built in a temporary sibling directory and then moved into
    place, so concurrent callers never see a half-written set of files.
    """
    directory = Path(cache_dir) if cache_dir is not None else _default_dev_pki_dir()
    files = _pki_files(directory, None)
    if _dev_pki_usable(files):
        return files

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-new-", dir=directory.parent))
    stale = directory.with_name(f".{directory.name}-old-{secrets.token_hex(6)}")
    try:
        create_pki(staging)
        with contextlib.suppress(FileNotFoundError):
            os.rename(directory, stale)
        try:
            os.rename(staging, directory)
        except OSError:
            # Another process installed a fresh PKI between our two renames.
            if not _dev_pki_usable(files):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
    return files


# --------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of ``cert`` as upper-case colon hex."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _describe_general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    return str(name)


def _describe_key(cert: x509.Certificate) -> str:
    public_key = cert.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name} ({public_key.key_size} bits)"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA ({public_key.key_size} bits)"
    return type(public_key).__name__


def describe_certificate(cert: x509.Certificate) -> str:
    """Describe ``cert`` as multi-line, human-readable text.

    The text lists subject, issuer, serial number, subject alternative
    names, validity period (ISO 8601, UTC), whether it is a CA, the public
    key type and size, and the SHA-256 fingerprint as colon-separated hex.
    """
    extensions = cert.extensions
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt_names = ", ".join(_describe_general_name(name) for name in san) or "(none)"
    except x509.ExtensionNotFound:
        alt_names = "(none)"
    try:
        is_ca = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    lines = [
        f"Subject:           {cert.subject.rfc4514_string() or '(empty)'}",
        f"Issuer:            {cert.issuer.rfc4514_string() or '(empty)'}",
        f"Serial number:     {cert.serial_number:#x}",
        f"Subject alt names: {alt_names}",
        f"Not before:        {cert.not_valid_before_utc.isoformat()}",
        f"Not after:         {cert.not_valid_after_utc.isoformat()}",
        f"CA:                {'yes' if is_ca else 'no'}",
        f"Public key:        {_describe_key(cert)}",
        f"SHA-256:           {certificate_fingerprint(cert)}",
    ]
    return "\n".join(lines)
