"""Configuration: what a DTLS endpoint presents, what it trusts, and how it behaves on the wire.

:class:`DTLSConfiguration` uses the words of :class:`ssl.SSLContext` (``certfile``, ``keyfile``,
``password``, ``cafile``, ``capath``, ``cadata``, ``verify_mode``, ``check_hostname``,
``server_hostname``, ``ciphers``) plus what only datagrams need: MTU, retransmission and
handshake timers, server limits and the cookie secret. It is frozen; derive variants with
:meth:`DTLSConfiguration.replace`. Each endpoint builds its own fresh OpenSSL context from it.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL, crypto

from .exceptions import ConfigurationError

__all__ = ["DEFAULT_CIPHERS", "DTLSConfiguration", "Limits"]

#: AEAD suites only (RELIABILITY rule 1). CCM-8 and PSK suites only when asked for.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

_DTLS1_2_VERSION = 0xFEFD  # pyOpenSSL names only the TLS versions

MIN_MTU = 256  # OpenSSL silently ignores smaller values, then the handshake dies with an EOF
MAX_MTU = 65507  # largest UDP payload over IPv4

Password = str | bytes | Callable[[], str | bytes]


@dataclass(frozen=True)
class Limits:
    """Bounds a server enforces; every refusal is counted by reason in its statistics."""

    max_sessions: int = 10_000
    """Associations (handshaking or established) held at once; new ones are refused beyond."""

    max_sessions_per_address: int = 256
    """Associations from one source IP address (all ports together)."""

    max_half_open: int = 1_000
    """Associations still in their handshake (only ever created after a valid cookie)."""

    max_queued_messages: int = 1_024
    """Received messages waiting for the application, per peer; newer ones are dropped."""

    hello_verify_per_second: float = 50.0
    """HelloVerifyRequests sent to one source IP per second (burst: twice that)."""

    idle_timeout: float | None = 300.0
    """Seconds without a message from an established peer before the server drops it."""

    accept_backlog: int = 128
    """Completed handshakes waiting for ``accept()`` before new ones are refused."""

    def __post_init__(self) -> None:
        for name in (
            "max_sessions",
            "max_sessions_per_address",
            "max_half_open",
            "max_queued_messages",
            "accept_backlog",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"Limits.{name} must be a positive integer, not {value!r}")
        if self.hello_verify_per_second <= 0:
            raise ConfigurationError("Limits.hello_verify_per_second must be positive")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ConfigurationError("Limits.idle_timeout must be positive or None")


@dataclass(frozen=True)
class DTLSConfiguration:
    """Settings of one DTLS endpoint, client or server. Build with :meth:`client`/:meth:`server`."""

    certfile: str | os.PathLike[str] | None = None
    """PEM file with our certificate, optionally followed by its intermediates (a chain file)."""

    keyfile: str | os.PathLike[str] | None = None
    """PEM file with the private key; defaults to ``certfile`` when that holds the key too."""

    password: Password | None = None
    """Passphrase of an encrypted ``keyfile``: a string, bytes, or a callable returning one."""

    cafile: str | os.PathLike[str] | None = None
    """PEM file of trusted CA certificates for verifying the peer."""

    capath: str | os.PathLike[str] | None = None
    """Directory of hashed CA certificates (``openssl rehash`` layout)."""

    cadata: str | bytes | None = None
    """Trusted CA certificates given inline: PEM text or DER bytes."""

    load_default_certs: bool = False
    """Also trust the system's default CA store."""

    verify_mode: ssl.VerifyMode | None = None
    """``CERT_NONE``, ``CERT_OPTIONAL`` or ``CERT_REQUIRED``. ``None`` means the role's default:
    clients require a valid server certificate, servers do not ask for client certificates."""

    check_hostname: bool = True
    """Clients: check the server certificate against ``server_hostname`` (DNS name or IP)."""

    server_hostname: str | None = None
    """Clients: name sent in SNI and checked against the certificate; defaults to the host the
    client connects to."""

    ciphers: str | None = None
    """OpenSSL cipher list; defaults to :data:`DEFAULT_CIPHERS` (AEAD suites)."""

    mtu: int = 1200
    """Largest datagram (UDP payload) we send, in bytes, 256..65507. The default fits any IPv6
    path and most IPv4 ones without fragmentation."""

    handshake_timeout: float = 30.0
    """Seconds a handshake may take in total before it fails with :class:`HandshakeTimeout`."""

    initial_retransmit_timeout: float = 1.0
    """First retransmission timeout (RFC 6347 §4.2.4.1: 1 s); doubles on every loss."""

    max_retransmit_timeout: float = 60.0
    """Cap of the doubling retransmission timeout (RFC 6347: 60 s)."""

    idle_timeout: float | None = None
    """Seconds without a message from the peer before the session is dropped. ``None``: clients
    never time out; servers use ``limits.idle_timeout``."""

    cookie_secret: bytes | None = None
    """Servers: HMAC secret for stateless cookies (>= 16 bytes). Share it between workers or
    restarts to keep cookies valid across them; random when ``None``."""

    limits: Limits = field(default_factory=Limits)
    """Server-side resource bounds."""

    def __post_init__(self) -> None:
        if not isinstance(self.mtu, int) or not MIN_MTU <= self.mtu <= MAX_MTU:
            raise ConfigurationError(
                f"mtu must be an integer from {MIN_MTU} to {MAX_MTU} bytes, not {self.mtu!r} "
                f"(OpenSSL silently ignores MTUs below {MIN_MTU})"
            )
        for name in ("handshake_timeout", "initial_retransmit_timeout", "max_retransmit_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if self.max_retransmit_timeout < self.initial_retransmit_timeout:
            raise ConfigurationError(
                "max_retransmit_timeout must not be smaller than initial_retransmit_timeout"
            )
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ConfigurationError("idle_timeout must be positive or None")
        if self.cookie_secret is not None and len(self.cookie_secret) < 16:
            raise ConfigurationError("cookie_secret must be at least 16 bytes")
        if self.verify_mode is not None and not isinstance(self.verify_mode, ssl.VerifyMode):
            raise ConfigurationError("verify_mode must be an ssl.VerifyMode (ssl.CERT_REQUIRED, ...)")
        if self.keyfile is not None and self.certfile is None:
            raise ConfigurationError("keyfile given without certfile")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def server(
        cls,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        password: Password | None = None,
        **settings: Any,
    ) -> DTLSConfiguration:
        """Configuration for a server presenting ``certfile``/``keyfile``."""
        return cls(certfile=certfile, keyfile=keyfile, password=password, **settings)

    @classmethod
    def client(
        cls,
        cafile: str | os.PathLike[str] | None = None,
        server_hostname: str | None = None,
        **settings: Any,
    ) -> DTLSConfiguration:
        """Configuration for a client trusting ``cafile`` and expecting ``server_hostname``."""
        return cls(cafile=cafile, server_hostname=server_hostname, **settings)

    def replace(self, **changes: Any) -> DTLSConfiguration:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def effective_verify_mode(self, server: bool) -> ssl.VerifyMode:
        """The verify mode in force for this role."""
        if self.verify_mode is not None:
            return self.verify_mode
        return ssl.CERT_NONE if server else ssl.CERT_REQUIRED

    # -- OpenSSL context ----------------------------------------------------------------------

    def build_context(self, server: bool) -> SSL.Context:
        """A fresh OpenSSL DTLS context for this role. Raises :class:`ConfigurationError`."""
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(_DTLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
        ciphers = self.ciphers or DEFAULT_CIPHERS
        try:
            ctx.set_cipher_list(ciphers.encode())
        except SSL.Error as exc:
            raise ConfigurationError(f"no usable cipher in {ciphers!r}") from exc
        self._load_identity(ctx)
        mode = self.effective_verify_mode(server)
        if mode != ssl.CERT_NONE:
            self._load_trust(ctx, server)
        if server:
            if self.certfile is None:
                raise ConfigurationError(
                    "a DTLS server needs a certificate: give certfile and keyfile"
                )
            # Session ID context: required for resumption when client certificates are used.
            ctx.set_session_id(b"dtlskit")
            # We answer ClientHellos with our own stateless cookies before OpenSSL sees them;
            # these callbacks only satisfy DTLSv1_listen for a ClientHello we already verified.
            ctx.set_cookie_generate_callback(lambda conn: b"dtlskit")
            ctx.set_cookie_verify_callback(lambda conn, cookie: True)
        return ctx

    def _load_identity(self, ctx: SSL.Context) -> None:
        if self.certfile is None:
            return
        certfile = os.fspath(self.certfile)
        keyfile = os.fspath(self.keyfile) if self.keyfile is not None else certfile
        password = self.password
        if password is not None:

            def passphrase(max_length: int, verify: bool, userdata: Any) -> bytes:
                value = password() if callable(password) else password
                return value.encode() if isinstance(value, str) else value

            ctx.set_passwd_cb(passphrase)
        try:
            ctx.use_certificate_chain_file(certfile)
        except SSL.Error as exc:
            raise ConfigurationError(
                f"cannot load certificate chain from {certfile}: {_reason(exc)}"
            ) from exc
        try:
            ctx.use_privatekey_file(keyfile)
        except SSL.Error as exc:
            hint = (
                "wrong password or not a PEM private key"
                if password is not None
                else "not a PEM private key, or it is encrypted and no password was given"
            )
            raise ConfigurationError(f"cannot load private key from {keyfile}: {hint}") from exc
        try:
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise ConfigurationError(
                f"private key {keyfile} does not match the certificate in {certfile}"
            ) from exc

    def _load_trust(self, ctx: SSL.Context, server: bool) -> None:
        loaded = False
        if self.cafile is not None or self.capath is not None:
            cafile = os.fspath(self.cafile) if self.cafile is not None else None
            capath = os.fspath(self.capath) if self.capath is not None else None
            try:
                ctx.load_verify_locations(cafile, capath)
            except SSL.Error as exc:
                raise ConfigurationError(
                    f"cannot load CA certificates from {cafile or capath}: {_reason(exc)}"
                ) from exc
            loaded = True
        if self.cadata is not None:
            store = ctx.get_cert_store()
            if store is None:  # pragma: no cover - OpenSSL always has one
                raise ConfigurationError("OpenSSL context has no certificate store")
            for cert in _parse_cadata(self.cadata):
                store.add_cert(cert)
            loaded = True
        if self.load_default_certs or (not loaded and not server):
            ctx.set_default_verify_paths()


def _parse_cadata(cadata: str | bytes) -> Sequence[crypto.X509]:
    from cryptography import x509

    try:
        if isinstance(cadata, str):
            certs = x509.load_pem_x509_certificates(cadata.encode())
        elif cadata.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(cadata)
        else:
            certs = [x509.load_der_x509_certificate(cadata)]
    except ValueError as exc:
        raise ConfigurationError(f"cadata holds no valid certificate: {exc}") from exc
    return [crypto.X509.from_cryptography(cert) for cert in certs]


def _reason(exc: SSL.Error) -> str:
    """The last OpenSSL reason string of an error, for messages."""
    try:
        return str(exc.args[0][-1][2])
    except (IndexError, TypeError):
        return str(exc) or type(exc).__name__
