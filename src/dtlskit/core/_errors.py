"""Translation of OpenSSL errors into dtlskit exceptions: the core's one foreign boundary.

OpenSSL reports failures as a list of ``(library, function, reason)`` strings. A reason such as
``"sslv3 alert certificate expired"`` means the *peer* sent that alert; ``"certificate verify
failed"`` means *we* rejected the peer's chain, and the verify callback recorded why. When one
of our own callbacks (PSK, ALPN, SNI) failed the handshake, its reason is in the connection's
:class:`~dtlskit.core._bindings.HandshakeNotes` and becomes the message.
"""

from __future__ import annotations

import re

from OpenSSL import SSL

from ..exceptions import (
    CertificateVerificationError,
    ConnectionLost,
    HandshakeError,
    HandshakeFailure,
    VerificationReason,
)
from ._bindings import HandshakeNotes

__all__ = ["alert_name", "handshake_error", "session_error", "verification_reason"]

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h, stable across versions) -> the stable reason.
_VERIFY_CODES = {
    2: VerificationReason.UNKNOWN_ISSUER,  # unable to get issuer certificate
    9: VerificationReason.NOT_YET_VALID,
    10: VerificationReason.EXPIRED,
    18: VerificationReason.UNKNOWN_ISSUER,  # self-signed certificate
    19: VerificationReason.UNKNOWN_ISSUER,  # self-signed certificate in certificate chain
    20: VerificationReason.UNKNOWN_ISSUER,  # unable to get local issuer certificate
    21: VerificationReason.UNKNOWN_ISSUER,  # unable to verify the first certificate
    23: VerificationReason.REVOKED,
    62: VerificationReason.HOSTNAME_MISMATCH,
    64: VerificationReason.IP_ADDRESS_MISMATCH,
}


def verification_reason(code: int | None) -> VerificationReason:
    """The stable reason for an OpenSSL certificate verification result code."""
    return _VERIFY_CODES.get(code or 0, VerificationReason.INVALID)


_ALERT = re.compile(r"(?:sslv3|tlsv1\d*|tls)\s+alert\s+(.+)$", re.IGNORECASE)  # tlsv13 too

# Alerts a peer sends when it rejects our certificate.
CERTIFICATE_ALERTS = _CERTIFICATE_ALERTS = frozenset(
    {
        "bad certificate",
        "unsupported certificate",
        "certificate revoked",
        "certificate expired",
        "certificate unknown",
        "unknown ca",
        "certificate required",
        "access denied",
    }
)


def reasons(exc: SSL.Error) -> list[str]:
    """OpenSSL's reason strings, innermost last."""
    found = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(entry, tuple) and len(entry) == 3:
            found.append(str(entry[2]))
    return found or [str(exc) or type(exc).__name__]


def alert_name(exc: SSL.Error) -> str | None:
    """The name of the alert the peer sent, if the error is a received alert."""
    for reason in reasons(exc):
        match = _ALERT.search(reason)
        if match:
            return match.group(1).strip().lower()
    return None


def handshake_error(
    exc: SSL.Error,
    *,
    verify_reason: str | None,
    verify_code: int | None = None,
    server: bool,
    peer: str,
    notes: HandshakeNotes | None = None,
) -> HandshakeError:
    """The HandshakeError subclass for a failed handshake, with a message naming the cause."""
    words = reasons(exc)
    joined = "; ".join(words)
    alert = alert_name(exc)
    explained = _explain_with_notes(joined, alert, notes, server=server, peer=peer)
    if explained is not None and verify_reason is None:
        return explained
    if verify_reason is not None or "certificate verify failed" in joined:
        why = verify_reason or "certificate verify failed"
        whose = "client" if server else "server"
        return CertificateVerificationError(
            f"the {whose} certificate of {peer} was rejected: {why}",
            reason=verification_reason(verify_code),
        )
    if "peer did not return a certificate" in joined:
        return CertificateVerificationError(
            f"client {peer} sent no certificate, but this server requires one "
            "(certificate required)",
            reason=VerificationReason.CERTIFICATE_REQUIRED,
        )
    if alert is not None:
        if alert in _CERTIFICATE_ALERTS:
            return CertificateVerificationError(
                f"{peer} rejected our certificate (alert: {alert})",
                reason=VerificationReason.REJECTED_BY_PEER,
                alert=alert,
            )
        return HandshakeFailure(f"{peer} aborted the handshake (alert: {alert})", alert=alert)
    if "no shared cipher" in joined or "no cipher" in joined:
        return HandshakeFailure(
            f"no cipher suite in common with {peer} ({joined})", alert="handshake failure"
        )
    return HandshakeFailure(f"handshake with {peer} failed: {joined}")


def _explain_with_notes(
    joined: str, alert: str | None, notes: HandshakeNotes | None, *, server: bool, peer: str
) -> HandshakeError | None:
    """Failures that only the notes of our callbacks can explain (PSK, ALPN, SNI, missing
    client certificate), or None."""
    if notes is None:
        return None
    if notes.failure is not None:  # one of our callbacks refused: it said why
        if "psk identity not found" in joined:
            return HandshakeFailure(
                f"PSK handshake with {peer} refused: {notes.failure} "
                "(sent alert: unknown psk identity)",
                alert="unknown psk identity",
            )
        if "no application protocol" in joined:
            return HandshakeFailure(
                f"handshake with {peer} refused: {notes.failure} "
                "(sent alert: no application protocol)",
                alert="no application protocol",
            )
        return HandshakeFailure(f"handshake with {peer} failed: {notes.failure}", alert=alert)
    if alert == "unknown psk identity":
        return HandshakeFailure(
            f"{peer} does not know our PSK identity {notes.psk_identity!r} "
            "(alert: unknown psk identity)",
            alert=alert,
        )
    if alert == "no application protocol":
        return HandshakeFailure(
            f"no common ALPN protocol: {peer} supports none of {list(notes.alpn_offered)} "
            "(alert: no application protocol)",
            alert=alert,
        )
    if alert in ("decrypt error", "bad record mac") and notes.psk_identity is not None:
        return HandshakeFailure(
            f"{peer} could not verify our Finished message (alert: {alert}): the PSK for "
            f"identity {notes.psk_identity!r} differs between the two sides",
            alert=alert,
        )
    if alert == "handshake failure" and not server and notes.certificate_requested:
        return CertificateVerificationError(
            f"{peer} requires a client certificate and this client has none "
            "(set certfile and keyfile) (alert: handshake failure; certificate required)",
            reason=VerificationReason.CERTIFICATE_REQUIRED,
            alert=alert,
        )
    return None


def session_error(exc: SSL.Error, *, peer: str) -> ConnectionLost:
    """ConnectionLost for a fatal error on an established session."""
    alert = alert_name(exc)
    if "no renegotiation" in reasons(exc):
        return ConnectionLost(
            f"{peer} refused to renegotiate (alert: no renegotiation); OpenSSL ends a session "
            "whose renegotiation the peer refuses",
            alert="no renegotiation",
        )
    if alert is not None:
        return ConnectionLost(f"{peer} sent fatal alert: {alert}", alert=alert)
    return ConnectionLost(f"session with {peer} failed: {'; '.join(reasons(exc))}")
