"""Who the peer of a coaps session is, as aiocoap "authenticated claims"."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding


@dataclass(frozen=True)
class CertificateClaim:
    """The peer presented this certificate and OpenSSL verified its chain against the
    configured CAs (a certificate sent but not verified, e.g. with ``CERT_NONE``, makes no
    claim)."""

    certificate: Any = field(compare=False)
    """The ``cryptography.x509.Certificate``."""

    sha256: str
    """SHA-256 fingerprint of the DER certificate, lowercase hex without separators."""

    subject: str
    """The subject as an RFC 4514 string, e.g. ``"CN=dtlskit client"``."""

    @classmethod
    def of(cls, certificate: Any) -> CertificateClaim:
        der = certificate.public_bytes(Encoding.DER)
        return cls(
            certificate=certificate,
            sha256=hashlib.sha256(der).hexdigest(),
            subject=certificate.subject.rfc4514_string(),
        )


@dataclass(frozen=True)
class PSKClaim:
    """The peer proved it holds the pre-shared key of this identity."""

    identity: str
    """The PSK identity the client sent (RFC 4279)."""


def claims_of(channel: Any) -> tuple[Any, ...]:
    """The claims a finished handshake established about the peer of ``channel``."""
    claims: list[Any] = []
    if channel.peer_verified_chain:
        claims.append(CertificateClaim.of(channel.peer_certificate))
    identity = channel.psk_identity
    if identity is not None:
        claims.append(PSKClaim(identity))
    return tuple(claims)
