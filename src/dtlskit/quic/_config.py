"""Our :class:`~dtlskit.DTLSConfiguration` vocabulary mapped onto aioquic's ``QuicConfiguration``.

Theory of operation
-------------------
A QUIC endpoint is configured with the same frozen :class:`~dtlskit.DTLSConfiguration` as a
DTLS one, so an application switches transport without learning a second vocabulary.
:func:`quic_configuration` reads every field and either maps it (certificate, key and password;
CA file, path and data; verify mode; ``server_hostname``; ALPN; key log; idle timeout; MTU as
the largest datagram), keeps it for our own layer (handshake deadline, receive buffer, limits,
session tickets) or refuses it with a :class:`~dtlskit.ConfigurationError` naming the field and
saying why. Nothing is silently ignored: :data:`REFUSED` lists what QUIC refuses, and
``docs/quic.md`` prints the same list.

Files are loaded with the same helpers as the DTLS context factory, so a missing file, a wrong
password or a key that does not match its certificate gives the same words on both transports.
The key log goes through :func:`dtlskit._secrets.open_private_append` (0600, no symbolic link).
"""

from __future__ import annotations

import os
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._secrets import open_private_append, security_warning
from ..config import DTLSConfiguration, Limits
from ..core.context import _check_readable, _load_private_key
from ..exceptions import ConfigurationError

__all__ = ["REFUSED", "QuicSettings", "quic_configuration"]

#: Each field QUIC refuses when set, and why (aioquic 1.x; RFC 9000/9001). ``docs/quic.md``
#: prints this table; a test keeps them in step.
REFUSED: Mapping[str, str] = {
    "verify_mode (server, CERT_OPTIONAL/CERT_REQUIRED)": "aioquic servers never send a "
    "CertificateRequest, so client certificates cannot be requested or verified",
    "psk / psk_lookup / psk_identity_hint": "aioquic implements no external pre-shared keys "
    "(TLS 1.3 PSK is used only for its own session tickets)",
    "sni_certificates / sni_callback / ip_certificate": "aioquic presents one certificate per "
    "configuration and has no SNI callback",
    "ciphers": "QUIC runs TLS 1.3 only; its three AEAD suites are not chosen by an OpenSSL "
    "cipher string",
    "srtp_profiles": "DTLS-SRTP (RFC 5764) exists only for DTLS",
    "allow_renegotiation": "TLS 1.3 has no renegotiation",
    "check_hostname=False (client verifying the server)": "aioquic always checks the "
    "certificate against the name it sends in SNI",
    "cookie_secret": "DTLS cookies; QUIC validates addresses with its own anti-amplification "
    "limit (RFC 9000 §8)",
    "initial_retransmit_timeout / max_retransmit_timeout": "QUIC's loss recovery (RFC 9002) "
    "derives its timeouts from measured round trips",
    "mtu below 1200": "QUIC requires datagrams of at least 1200 bytes (RFC 9000 §14)",
    "limits.first_flight_timeout / max_client_hello_size / hello_verify_per_second": "these "
    "bound DTLS's cookie exchange, which QUIC does not have",
}

_DTLS_ONLY_LIMITS = (
    "first_flight_timeout",
    "max_client_hello_size",
    "hello_verify_per_second",
)
_DEFAULT_CLIENT_IDLE = 60.0  # seconds; QUIC always has an idle timeout (RFC 9000 §10.1)
_MAX_TICKETS = 4096  # session tickets a server remembers (bounded)
_QUIC_MIN_DATAGRAM = 1200


@dataclass(frozen=True)
class QuicSettings:
    """What our layer keeps from a configuration, besides aioquic's own settings."""

    handshake_timeout: float
    limits: Limits
    recv_buffer_size: int | None
    max_stream_bytes: int
    datagrams: bool


class KeyLogWriter:
    """A ``secrets_log_file`` for aioquic: each line appended with our key-log checks."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.close(open_private_append(path, "keylog_file"))
        security_warning(
            f"session secrets are being written to the key log {path}: anyone who reads it "
            "can decrypt the traffic (keylog_file / SSLKEYLOGFILE are for debugging only)"
        )

    def write(self, text: str) -> int:
        try:
            fd = open_private_append(self.path, "keylog_file")
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except (OSError, ConfigurationError) as exc:
            security_warning(f"key log lines are being dropped: {exc}")
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


class TicketStore:
    """A server's session tickets, by ticket id, bounded (oldest forgotten first)."""

    def __init__(self, capacity: int = _MAX_TICKETS) -> None:
        self._tickets: OrderedDict[bytes, Any] = OrderedDict()
        self._capacity = capacity

    def add(self, ticket: Any) -> None:
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self._capacity:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> Any:
        return self._tickets.pop(label, None)


def _refuse(field: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"QUIC cannot honour {field}: {why}")


def _check_refused(config: DTLSConfiguration, server: bool) -> None:
    if server and config.verify_mode not in (None, ssl.CERT_NONE):
        raise _refuse(
            f"verify_mode={config.verify_mode!r}",
            "aioquic servers never request client certificates (set verify_mode=None)",
        )
    for name in ("psk", "psk_lookup", "psk_identity_hint"):
        if getattr(config, name) is not None:
            raise _refuse(name, "aioquic implements no external pre-shared keys")
    for name in ("sni_certificates", "sni_callback", "ip_certificate"):
        if getattr(config, name) is not None:
            raise _refuse(name, "aioquic presents one certificate and has no SNI callback")
    if config.ciphers is not None:
        raise _refuse("ciphers", "QUIC uses TLS 1.3's suites, not an OpenSSL cipher string")
    if config.srtp_profiles:
        raise _refuse("srtp_profiles", "DTLS-SRTP exists only for DTLS")
    if config.allow_renegotiation:
        raise _refuse("allow_renegotiation", "TLS 1.3 has no renegotiation")
    if config.cookie_secret is not None:
        raise _refuse("cookie_secret", "QUIC has no DTLS cookie exchange")
    defaults = DTLSConfiguration()
    for name in ("initial_retransmit_timeout", "max_retransmit_timeout"):
        if getattr(config, name) != getattr(defaults, name):
            raise _refuse(name, "QUIC loss recovery (RFC 9002) derives timeouts from the RTT")
    if config.mtu < _QUIC_MIN_DATAGRAM:
        raise _refuse(f"mtu={config.mtu}", "QUIC needs datagrams of at least 1200 bytes")
    default_limits = Limits()
    for name in _DTLS_ONLY_LIMITS:
        if getattr(config.limits, name) != getattr(default_limits, name):
            raise _refuse(f"limits.{name}", "it bounds DTLS's cookie exchange, absent in QUIC")
    if not config.alpn_protocols:
        raise ConfigurationError(
            "alpn_protocols is empty: QUIC requires ALPN (RFC 9001 §8.1); name the "
            "application protocol(s), e.g. alpn_protocols=['hq-interop']"
        )


def quic_configuration(
    config: DTLSConfiguration,
    *,
    server: bool,
    server_name: str | None = None,
    datagrams: bool = False,
    max_stream_bytes: int | None = None,
    session_ticket: Any = None,
) -> tuple[Any, QuicSettings]:
    """aioquic's ``QuicConfiguration`` for ``config`` in this role, and what we keep.

    ``server_name`` is the host a client connects to (used when ``server_hostname`` is unset).
    Raises :class:`ConfigurationError` naming the field for anything QUIC cannot honour.
    """
    from aioquic.quic.configuration import QuicConfiguration
    from cryptography import x509

    _check_refused(config, server)
    if max_stream_bytes is None:
        max_stream_bytes = config.limits.max_queued_bytes
    if not isinstance(max_stream_bytes, int) or max_stream_bytes < 1:
        raise ConfigurationError(
            f"max_stream_bytes must be a positive int, not {max_stream_bytes!r}"
        )
    if server:
        idle = config.idle_timeout or config.limits.idle_timeout or 300.0
    else:
        idle = config.idle_timeout or _DEFAULT_CLIENT_IDLE
    quic = QuicConfiguration(
        is_client=not server,
        alpn_protocols=list(config.alpn_protocols),
        idle_timeout=float(idle),
        max_datagram_size=min(config.mtu, 1452) if config.mtu >= _QUIC_MIN_DATAGRAM else 1200,
        # flow control windows no larger than what we agree to hold
        max_stream_data=max(max_stream_bytes, 65536),
        max_data=max(config.limits.max_queued_bytes, 65536),
    )
    if datagrams:
        quic.max_datagram_frame_size = 65536
    if config.certfile is not None:
        certfile = os.fspath(config.certfile)
        keyfile = os.fspath(config.keyfile) if config.keyfile is not None else certfile
        _check_readable(certfile, "certificate file")
        try:
            with open(certfile, "rb") as handle:
                chain = x509.load_pem_x509_certificates(handle.read())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot load certificate chain from {certfile}: {exc} "
                "(expected PEM 'BEGIN CERTIFICATE' blocks, our certificate first)"
            ) from exc
        key = _load_private_key(keyfile, config.password)
        public = chain[0].public_key()
        if not hasattr(key, "public_key") or key.public_key() != public:
            raise ConfigurationError(
                f"certificate {certfile} and private key {keyfile} do not belong together: the "
                "key is not the one the certificate was issued for"
            )
        quic.certificate = chain[0]
        quic.certificate_chain = chain[1:]
        quic.private_key = key
    elif server:
        raise ConfigurationError("a QUIC server needs certfile (and keyfile): QUIC has no PSK")
    if not server:
        verify = config.effective_verify_mode(False)
        quic.verify_mode = ssl.CERT_NONE if verify == ssl.CERT_NONE else ssl.CERT_REQUIRED
        if verify != ssl.CERT_NONE and not config.check_hostname:
            raise _refuse(
                "check_hostname=False", "aioquic always checks the name it sends in SNI"
            )
        if verify == ssl.CERT_NONE:
            security_warning(
                "a QUIC client is not verifying the server's certificate (verify_mode=CERT_NONE): "
                "anyone on the path can impersonate the server"
            )
        quic.server_name = config.server_hostname or server_name
        _load_trust(quic, config)
        if session_ticket is not None:
            quic.session_ticket = session_ticket
    if config.keylog_file is not None:
        quic.secrets_log_file = KeyLogWriter(os.fspath(config.keylog_file))  # type: ignore[assignment]
    settings = QuicSettings(
        handshake_timeout=config.handshake_timeout,
        limits=config.limits,
        recv_buffer_size=config.recv_buffer_size,
        max_stream_bytes=max_stream_bytes,
        datagrams=datagrams,
    )
    return quic, settings


def _load_trust(quic: Any, config: DTLSConfiguration) -> None:
    """CA file, path and data; the system store when asked (or when nothing else is given)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cadata = b""
    if config.cafile is not None:
        cafile = os.fspath(config.cafile)
        _check_readable(cafile, "CA file")
        quic.cafile = cafile
    if config.capath is not None:
        capath = os.fspath(config.capath)
        if not os.path.isdir(capath):
            raise ConfigurationError(f"capath {capath} is not a directory")
        quic.capath = capath
    if config.cadata is not None:
        raw = config.cadata.encode() if isinstance(config.cadata, str) else config.cadata
        try:
            if raw.lstrip().startswith(b"-----BEGIN"):
                x509.load_pem_x509_certificates(raw)
                cadata += raw
            else:
                cadata += x509.load_der_x509_certificate(raw).public_bytes(Encoding.PEM)
        except ValueError as exc:
            raise ConfigurationError(
                f"cadata holds no valid certificate (expected PEM text or DER bytes): {exc}"
            ) from exc
    given = config.cafile is not None or config.capath is not None or bool(cadata)
    if config.default_certs or not given:
        system = ssl.get_default_verify_paths().cafile
        if system and os.path.exists(system):
            with open(system, "rb") as handle:
                cadata += b"\n" + handle.read()
    if cadata:
        quic.cadata = cadata
