"""Configuration: what a DTLS endpoint presents, what it trusts, and how it behaves on the wire.

:class:`DTLSConfiguration` uses the words of :class:`ssl.SSLContext` (``certfile``, ``keyfile``,
``password``, ``cafile``, ``capath``, ``cadata``, ``verify_mode``, ``check_hostname``,
``server_hostname``, ``ciphers``) plus what only datagrams need: MTU, retransmission and
handshake timers, server limits and the cookie secret. It is frozen; derive variants with
:meth:`DTLSConfiguration.replace` or the ``ssl.SSLContext``-style names (``load_cert_chain``,
``load_verify_locations``, ``load_default_certs``, ``set_alpn_protocols``), which all return a
new configuration. It is data: the OpenSSL context is made from it by the factory in
:mod:`dtlskit.core.context` (:meth:`DTLSConfiguration.context` and
:meth:`DTLSConfiguration.build_context` call it).

Security features beyond certificates: PSK (RFC 4279), a certificate per SNI name or for clients
that send none, ALPN (RFC 7301), DTLS-SRTP (RFC 5764), session tickets (RFC 5077), refusal of
renegotiation, and an NSS key log for debugging.

Dependencies run one way: this module uses :mod:`dtlskit.core.context`; the core refers to
this module for types only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from .core import _verify_time
from .core import context as _context
from .core._verify_time import VerifyTime
from .exceptions import ConfigurationError

__all__ = [
    "DEFAULT_CIPHERS",
    "PSK_CIPHERS",
    "CertificateSpec",
    "DTLSConfiguration",
    "Limits",
    "PSKLookup",
    "Password",
    "SNICallback",
    "StrPath",
]

#: AEAD suites only (RELIABILITY rule 1). CCM-8 and PSK suites only when asked for.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: Default suites when PSK is configured: AEAD only; ECDHE-PSK adds forward secrecy. CCM-8
#: (``PSK-AES128-CCM8``, CoAP) only when ``ciphers`` names it, with ``@SECLEVEL=0`` (OpenSSL 4
#: enables the 64-bit-tag CCM-8 suites only at security level 0).
PSK_CIPHERS = (
    "PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:ECDHE-PSK-CHACHA20-POLY1305:PSK-CHACHA20-POLY1305"
)

_DTLS1_2_VERSION = 0xFEFD  # pyOpenSSL names only the TLS versions

MIN_MTU = 256  # OpenSSL silently ignores smaller values, then the handshake dies with an EOF
MAX_MTU = 65507  # largest UDP payload over IPv4

Password = str | bytes | Callable[[], str | bytes]
CertificateSpec = (
    tuple[str | os.PathLike[str], str | os.PathLike[str]]
    | tuple[str | os.PathLike[str], str | os.PathLike[str], Password | None]
)
"""``(certfile, keyfile)`` or ``(certfile, keyfile, password)``."""
PSKLookup = Mapping[str, bytes] | Callable[[str], bytes | None]
"""A server's PSKs: a mapping, or a callable given the client's identity (``str``) that
returns the key (``bytes``) or ``None`` for an unknown identity."""
SNICallback = Callable[[str | None], CertificateSpec | None]
"""Given the SNI host name (``None`` when the client sent none), the certificate to present,
or ``None`` for the configuration's ``certfile``."""
StrPath = str | os.PathLike[str]

_PSK_MAX_IDENTITY = 128  # bytes; OpenSSL's PSK_MAX_IDENTITY_LEN
_PSK_MAX_KEY = 512  # bytes; OpenSSL 3/4's PSK_MAX_PSK_LEN
_MAX_CALLBACK_CONTEXTS = 256  # contexts built for sni_callback results, kept at once


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
    """Received messages waiting for the application, per peer; newer ones are dropped
    (``"queue_full"``)."""

    max_queued_bytes: int = 1_048_576
    """Bytes of received messages waiting for the application, per peer (1 MiB; each message
    counts its payload plus 64 bytes of overhead); a message that would pass it is dropped
    (``"queue_full"``). Clients apply it too."""

    max_buffered_bytes: int = 64 * 1_048_576
    """Bytes of received messages waiting for the application across every peer of one
    listening socket (64 MiB), channels not yet accepted included; a message that would pass
    it is dropped (``"server_buffer_full"``). What peers can make a server hold in queues is
    at most this, whatever their number."""

    max_half_open_per_address: int = 64
    """Half-open associations from one IPv4 address (all ports together); more are refused, so
    a few addresses cannot take the whole half-open pool."""

    max_half_open_per_ipv6_prefix: int = 64
    """Half-open associations from one IPv6 /64 (one host can use every address in it)."""

    first_flight_timeout: float | None = None
    """Seconds a half-open association may wait for the client's answer to the server's first
    flight before it is dropped; None means a third of ``handshake_timeout`` (10 s by default),
    so a configuration made for lossy links scales both. The overall ``handshake_timeout`` still
    bounds the rest of the handshake."""

    max_client_hello_size: int = 16_384
    """Largest ClientHello (whole message, before fragmentation) accepted, in bytes. A
    fragmented ClientHello is reassembled (by OpenSSL) only after its cookie verified; this
    bounds what it may make the server hold."""

    hello_verify_per_second: float | None = None
    """HelloVerifyRequests sent per second to all sources together (burst: twice that), or None
    for no cap. There is no per-source cap: replies are never larger than the ClientHellos they
    answer (no amplification), and a per-source cap would let a spoofer lock out a chosen
    address. A global cap bounds CPU and bandwidth spent on cookies, at the price that a flood
    then delays every new client alike."""

    idle_timeout: float | None = 300.0
    """Seconds without a message from an established peer before the server drops it."""

    accept_backlog: int = 128
    """Completed handshakes waiting for ``accept()`` before new ones are refused."""

    hibernate_after: float | None = None
    """Release an established session's OpenSSL object and carry its records with
    :mod:`dtlskit.core.record_protection` (a few KiB per session instead of ~75 KiB): None
    (the default) never, ``0`` as soon as the handshake completes, else after that many seconds
    without a message in either direction. Only for the suites that module implements and only
    when renegotiation is refused; other sessions keep OpenSSL. Peers and users see the same
    session (see docs/hibernation.md). Clients apply it too."""

    address_key: str = "address"
    """What the per-address limits (``max_sessions_per_address``,
    ``max_half_open_per_address``, ``max_half_open_per_ipv6_prefix``) count by: ``"address"``
    (the source IP, all ports together; an IPv6 /64 for half-open handshakes) or
    ``"address_and_port"``. Use ``"address_and_port"`` behind a UDP proxy that does not keep
    client addresses (nginx ``stream`` without ``proxy_bind ... transparent``, a balancer that
    source-NATs): every client then arrives from the proxy's address, one port per client, and
    per-address limits would cap the whole proxy as one client. Limit per client address on
    the proxy itself then (nginx ``limit_conn``). Never use it on a server clients reach
    directly: a single host could then hold ``max_half_open`` handshakes."""

    def __post_init__(self) -> None:
        for name in (
            "max_sessions",
            "max_sessions_per_address",
            "max_half_open",
            "max_half_open_per_address",
            "max_half_open_per_ipv6_prefix",
            "max_client_hello_size",
            "max_queued_messages",
            "max_queued_bytes",
            "max_buffered_bytes",
            "accept_backlog",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"Limits.{name} must be a positive integer, not {value!r}")
        if self.hello_verify_per_second is not None and not _positive_seconds(
            self.hello_verify_per_second
        ):
            raise ConfigurationError(
                "Limits.hello_verify_per_second must be a positive number or None"
            )
        if self.first_flight_timeout is not None and not _positive_seconds(
            self.first_flight_timeout
        ):
            raise ConfigurationError(
                "Limits.first_flight_timeout must be a positive number or None"
            )
        if self.idle_timeout is not None and not _positive_seconds(self.idle_timeout):
            raise ConfigurationError("Limits.idle_timeout must be a positive number or None")
        if self.hibernate_after is not None and not (
            _positive_seconds(self.hibernate_after)
            or (type(self.hibernate_after) in (int, float) and self.hibernate_after == 0)
        ):
            raise ConfigurationError(
                "Limits.hibernate_after must be 0, a positive number of seconds, or None"
            )
        if self.address_key not in ("address", "address_and_port"):
            raise ConfigurationError(
                f"Limits.address_key must be 'address' or 'address_and_port', not "
                f"{self.address_key!r}"
            )


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

    default_certs: bool = False
    """Also trust the system's default CA store (``load_default_certs()`` sets it)."""

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

    new_port_after_lost_flights: int | None = 2
    """Clients: when this many flights in a row (the first flight and its retransmissions)
    got no answer at all, the handshake starts again from a new source port (within the same
    ``handshake_timeout``), so that a load balancer choosing a node per address and port picks
    again, and a dead node costs a few seconds instead of the whole deadline. ``None`` keeps
    one port; so does a ``local_addr`` with a fixed port."""

    cookie_secret: bytes | None = None
    """Servers: HMAC secret for stateless cookies (>= 16 bytes). Share it between workers or
    restarts to keep cookies valid across them; random when ``None``."""

    recv_buffer_size: int | None = 4 * 1_048_576
    """Socket receive buffer to ask the kernel for, in bytes (4 MiB), clients and servers. UDP
    has no flow control: datagrams arriving while it is full are dropped by the kernel (counted
    in a server's ``statistics().kernel_drops``). The kernel caps it at ``net.core.rmem_max``;
    what it granted is in ``statistics().receive_buffer_bytes`` and a log line says when it
    is less. ``None`` keeps the kernel's default."""

    limits: Limits = field(default_factory=Limits)
    """Server-side resource bounds."""

    psk: tuple[str | bytes, bytes] | None = None
    """Clients: pre-shared key (RFC 4279) as ``(identity, key)``; identity up to 128 bytes, key
    up to 512. With ``ciphers`` unset the client offers only :data:`PSK_CIPHERS`; while it
    offers only PSK suites no certificate is involved, and none is verified by default."""

    psk_lookup: PSKLookup | None = None
    """Servers: the PSK of a client identity, as a mapping or a callable returning the key or
    ``None``. An unknown identity fails the handshake (alert ``unknown_psk_identity``). A server
    with ``psk_lookup`` needs no certificate; with one too it accepts both kinds of client."""

    psk_identity_hint: str | None = None
    """Servers: identity hint sent to PSK clients (RFC 4279 §2); rarely needed."""

    sni_certificates: Mapping[str, CertificateSpec] | None = None
    """Servers: a certificate per SNI host name, ``{"a.example": (certfile, keyfile[, password])}``.
    Names match case-insensitively; ``"*.example.com"`` matches one more label. Clients asking for
    any other name get ``certfile``. (EdgerOS ``addcert``.)"""

    sni_callback: SNICallback | None = None
    """Servers: consulted when ``sni_certificates`` (and, for clients without SNI,
    ``ip_certificate``) has no answer; called with the SNI name or ``None`` and returns a
    ``(certfile, keyfile[, password])`` tuple, or ``None`` for ``certfile``. A raised exception
    fails that handshake with an ``internal_error`` alert and the server's error names it."""

    ip_certificate: CertificateSpec | None = None
    """Servers: certificate for clients that send no SNI (they connected to an IP address).
    (EdgerOS ``ipcert``.)"""

    alpn_protocols: Sequence[str] = ()
    """ALPN (RFC 7301): clients offer these; servers select the first of their own list that the
    client offered, and fail the handshake (alert ``no_application_protocol``) if none was."""

    srtp_profiles: Sequence[str] = ()
    """DTLS-SRTP protection profiles (RFC 5764) to offer (clients) or accept (servers), e.g.
    ``"SRTP_AES128_CM_SHA1_80"``, ``"SRTP_AEAD_AES_128_GCM"``."""

    session_tickets: bool = True
    """Servers: issue session tickets (RFC 5077) so clients can resume without server state.
    Resumption by session ID (the server context's session cache) works either way."""

    allow_renegotiation: bool = False
    """Accept, and allow starting, renegotiation. Off (default): OpenSSL refuses it
    (``OP_NO_RENEGOTIATION``) and a peer that insists loses the session."""

    keylog_file: str | os.PathLike[str] | None = None
    """Append NSS key log lines (the ``SSLKEYLOGFILE`` format Wireshark reads) to this file.
    For debugging only: whoever reads it can decrypt the traffic. The environment is not read;
    pass ``keylog_file=os.environ.get("SSLKEYLOGFILE")`` to honour it."""

    verify_time: VerifyTime | None = None
    """Check the peer's certificate dates against this time instead of the system clock: an
    aware ``datetime``, a POSIX timestamp, or a callable returning one, called at the start of
    each handshake (a device clock set by SNTP or a gateway). For devices whose clock is unset
    or wrong. An expired or not-yet-valid certificate's error names the time used and the
    certificate's validity window."""

    def __post_init__(self) -> None:
        if not isinstance(self.mtu, int) or not MIN_MTU <= self.mtu <= MAX_MTU:
            raise ConfigurationError(
                f"mtu must be an integer from {MIN_MTU} to {MAX_MTU} bytes, not {self.mtu!r} "
                f"(OpenSSL silently ignores MTUs below {MIN_MTU})"
            )
        for name in ("handshake_timeout", "initial_retransmit_timeout", "max_retransmit_timeout"):
            if not _positive_seconds(getattr(self, name)):
                raise ConfigurationError(
                    f"{name} must be a positive, finite number of seconds, "
                    f"not {getattr(self, name)!r}"
                )
        if self.max_retransmit_timeout < self.initial_retransmit_timeout:
            raise ConfigurationError(
                "max_retransmit_timeout must not be smaller than initial_retransmit_timeout"
            )
        if self.idle_timeout is not None and not _positive_seconds(self.idle_timeout):
            raise ConfigurationError("idle_timeout must be a positive, finite number or None")
        lost = self.new_port_after_lost_flights
        if lost is not None and (not isinstance(lost, int) or isinstance(lost, bool) or lost < 1):
            raise ConfigurationError(
                f"new_port_after_lost_flights must be a positive integer or None, not {lost!r}"
            )
        if self.recv_buffer_size is not None and (
            not isinstance(self.recv_buffer_size, int)
            or isinstance(self.recv_buffer_size, bool)
            or not 1024 <= self.recv_buffer_size <= 1 << 30
        ):
            raise ConfigurationError(
                f"recv_buffer_size must be None or a number of bytes from 1024 to 1 GiB, not "
                f"{self.recv_buffer_size!r}"
            )
        if self.psk is not None and self.ciphers is None and self.verify_mode == ssl.CERT_REQUIRED:
            raise ConfigurationError(
                "verify_mode=CERT_REQUIRED has no effect on a PSK client offering only PSK "
                "cipher suites (no certificate is ever exchanged): drop verify_mode, or list "
                "certificate suites in ciphers"
            )
        if self.cookie_secret is not None and len(self.cookie_secret) < 16:
            raise ConfigurationError("cookie_secret must be at least 16 bytes")
        if self.verify_mode is not None and not isinstance(self.verify_mode, ssl.VerifyMode):
            raise ConfigurationError(
                "verify_mode must be an ssl.VerifyMode (ssl.CERT_REQUIRED, ...)"
            )
        if self.keyfile is not None and self.certfile is None:
            raise ConfigurationError("keyfile given without certfile")
        self._check_security_settings()

    def _check_security_settings(self) -> None:
        if self.password is not None and not (
            isinstance(self.password, str | bytes) or callable(self.password)
        ):
            raise ConfigurationError("password must be a str, bytes or a callable returning one")
        if self.psk is not None:
            _check_psk(self.psk)
        if self.psk_lookup is not None and not (
            isinstance(self.psk_lookup, Mapping) or callable(self.psk_lookup)
        ):
            raise ConfigurationError("psk_lookup must be a mapping or a callable")
        if isinstance(self.psk_lookup, Mapping):
            for identity, key in self.psk_lookup.items():
                if not isinstance(identity, str) or not isinstance(key, bytes) or not key:
                    raise ConfigurationError(
                        f"psk_lookup must map str identities to non-empty bytes keys, "
                        f"not {identity!r} -> {type(key).__name__}"
                    )
        if self.psk_identity_hint is not None and (
            not isinstance(self.psk_identity_hint, str)
            or len(self.psk_identity_hint.encode()) > _PSK_MAX_IDENTITY
            or "\0" in self.psk_identity_hint
        ):
            raise ConfigurationError("psk_identity_hint must be a str of at most 128 bytes")
        if self.sni_certificates is not None:
            if not isinstance(self.sni_certificates, Mapping):
                raise ConfigurationError("sni_certificates must map host names to certificates")
            for name, spec in self.sni_certificates.items():
                if not isinstance(name, str) or not name.strip(".") or "*" in name.lstrip("*."):
                    raise ConfigurationError(
                        f"sni_certificates: {name!r} is not a host name or *.wildcard name"
                    )
                _context.check_certificate_spec(f"sni_certificates[{name!r}]", spec)
        if self.sni_callback is not None and not callable(self.sni_callback):
            raise ConfigurationError("sni_callback must be callable")
        if self.ip_certificate is not None:
            _context.check_certificate_spec("ip_certificate", self.ip_certificate)
        for name in ("alpn_protocols", "srtp_profiles"):
            value = getattr(self, name)
            if isinstance(value, str | bytes) or not all(
                isinstance(item, str) and 0 < len(item.encode()) < 256 and ":" not in item
                for item in value
            ):
                raise ConfigurationError(
                    f"{name} must be a sequence of non-empty names (str), not {value!r}"
                )
            object.__setattr__(self, name, tuple(value))  # frozen: normalise once, here
        for name in ("session_tickets", "allow_renegotiation"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"{name} must be True or False")
        if self.keylog_file is not None and not isinstance(self.keylog_file, str | os.PathLike):
            raise ConfigurationError("keylog_file must be a path or None")
        _verify_time.check(self.verify_time)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def server(
        cls,
        certfile: StrPath | None = None,
        keyfile: StrPath | None = None,
        password: Password | None = None,
        *,
        cafile: StrPath | None = None,
        capath: StrPath | None = None,
        cadata: str | bytes | None = None,
        default_certs: bool = False,
        verify_mode: ssl.VerifyMode | None = None,
        ciphers: str | None = None,
        mtu: int = 1200,
        handshake_timeout: float = 30.0,
        initial_retransmit_timeout: float = 1.0,
        max_retransmit_timeout: float = 60.0,
        idle_timeout: float | None = None,
        cookie_secret: bytes | None = None,
        recv_buffer_size: int | None = 4 * 1_048_576,
        limits: Limits | None = None,
        psk_lookup: PSKLookup | None = None,
        psk_identity_hint: str | None = None,
        sni_certificates: Mapping[str, CertificateSpec] | None = None,
        sni_callback: SNICallback | None = None,
        ip_certificate: CertificateSpec | None = None,
        alpn_protocols: Sequence[str] = (),
        srtp_profiles: Sequence[str] = (),
        session_tickets: bool = True,
        allow_renegotiation: bool = False,
        keylog_file: StrPath | None = None,
        verify_time: VerifyTime | None = None,
    ) -> DTLSConfiguration:
        """Configuration for a server presenting ``certfile``/``keyfile``.

        Every parameter is the field of the same name (its documentation says more); all but
        the first three are keyword-only. Defaults:

        * ``certfile=None``, ``keyfile=None`` (``certfile`` holds the key too),
          ``password=None``: the certificate chain and key (none for a PSK-only server);
        * ``cafile=None``, ``capath=None``, ``cadata=None``, ``default_certs=False``: CAs
          trusted for client certificates;
        * ``verify_mode=None``: do not ask for client certificates (``ssl.CERT_REQUIRED``
          requires one, ``ssl.CERT_OPTIONAL`` verifies one if sent);
        * ``ciphers=None``: :data:`DEFAULT_CIPHERS`, with :data:`PSK_CIPHERS` first when
          ``psk_lookup`` is set;
        * ``mtu=1200``; ``handshake_timeout=30.0``, ``initial_retransmit_timeout=1.0``,
          ``max_retransmit_timeout=60.0`` seconds;
        * ``idle_timeout=None``: ``limits.idle_timeout`` (300 s) applies;
        * ``cookie_secret=None``: a random secret (share one of >= 16 bytes between workers);
        * ``recv_buffer_size=4194304`` bytes (``None``: the kernel's default);
        * ``limits=None``: ``Limits()``;
        * ``psk_lookup=None``: a ``Mapping[str, bytes]`` or a callable
          ``(identity: str) -> bytes | None`` (``None``: unknown identity);
          ``psk_identity_hint=None``;
        * ``sni_certificates=None``: ``{host name: (certfile, keyfile[, password])}``;
          ``sni_callback=None``: ``(sni_name: str | None) -> (certfile, keyfile[, password])
          | None``; ``ip_certificate=None``: for clients that send no SNI;
        * ``alpn_protocols=()``, ``srtp_profiles=()``; ``session_tickets=True``;
          ``allow_renegotiation=False``; ``keylog_file=None``;
        * ``verify_time=None``: certificate dates are checked against the system clock.
        """
        return cls(
            certfile=certfile,
            keyfile=keyfile,
            password=password,
            cafile=cafile,
            capath=capath,
            cadata=cadata,
            default_certs=default_certs,
            verify_mode=verify_mode,
            ciphers=ciphers,
            mtu=mtu,
            handshake_timeout=handshake_timeout,
            initial_retransmit_timeout=initial_retransmit_timeout,
            max_retransmit_timeout=max_retransmit_timeout,
            idle_timeout=idle_timeout,
            cookie_secret=cookie_secret,
            recv_buffer_size=recv_buffer_size,
            limits=Limits() if limits is None else limits,
            psk_lookup=psk_lookup,
            psk_identity_hint=psk_identity_hint,
            sni_certificates=sni_certificates,
            sni_callback=sni_callback,
            ip_certificate=ip_certificate,
            alpn_protocols=alpn_protocols,
            srtp_profiles=srtp_profiles,
            session_tickets=session_tickets,
            allow_renegotiation=allow_renegotiation,
            keylog_file=keylog_file,
            verify_time=verify_time,
        )

    @classmethod
    def client(
        cls,
        cafile: StrPath | None = None,
        server_hostname: str | None = None,
        *,
        capath: StrPath | None = None,
        cadata: str | bytes | None = None,
        default_certs: bool = False,
        verify_mode: ssl.VerifyMode | None = None,
        check_hostname: bool = True,
        certfile: StrPath | None = None,
        keyfile: StrPath | None = None,
        password: Password | None = None,
        ciphers: str | None = None,
        mtu: int = 1200,
        handshake_timeout: float = 30.0,
        initial_retransmit_timeout: float = 1.0,
        max_retransmit_timeout: float = 60.0,
        idle_timeout: float | None = None,
        recv_buffer_size: int | None = 4 * 1_048_576,
        limits: Limits | None = None,
        psk: tuple[str | bytes, bytes] | None = None,
        alpn_protocols: Sequence[str] = (),
        srtp_profiles: Sequence[str] = (),
        session_tickets: bool = True,
        allow_renegotiation: bool = False,
        keylog_file: StrPath | None = None,
        new_port_after_lost_flights: int | None = 2,
        verify_time: VerifyTime | None = None,
    ) -> DTLSConfiguration:
        """Configuration for a client trusting ``cafile`` and expecting ``server_hostname``.

        Every parameter is the field of the same name (its documentation says more); all but
        the first two are keyword-only. Defaults:

        * ``cafile=None``, ``capath=None``, ``cadata=None``, ``default_certs=False``: the CAs
          trusted for the server's certificate (a verifying client needs at least one);
        * ``server_hostname=None``: the host given to ``connect``; sent in SNI and checked
          against the certificate while ``check_hostname=True``;
        * ``verify_mode=None``: ``ssl.CERT_REQUIRED`` (``ssl.CERT_NONE`` for a client that
          offers only PSK suites);
        * ``certfile=None``, ``keyfile=None``, ``password=None``: a client certificate;
        * ``ciphers=None``: :data:`DEFAULT_CIPHERS` (:data:`PSK_CIPHERS` with ``psk``);
        * ``mtu=1200``; ``handshake_timeout=30.0``, ``initial_retransmit_timeout=1.0``,
          ``max_retransmit_timeout=60.0`` seconds; ``idle_timeout=None`` (never);
        * ``recv_buffer_size=4194304`` bytes; ``limits=None``: ``Limits()`` (a client applies
          its message queue bounds);
        * ``psk=None``: ``(identity, key)``;
        * ``alpn_protocols=()``, ``srtp_profiles=()``; ``session_tickets=True``;
          ``allow_renegotiation=False``; ``keylog_file=None``;
        * ``new_port_after_lost_flights=2``: fail over to a new source port (``None``: never);
        * ``verify_time=None``: certificate dates are checked against the system clock.
        """
        return cls(
            new_port_after_lost_flights=new_port_after_lost_flights,
            cafile=cafile,
            server_hostname=server_hostname,
            capath=capath,
            cadata=cadata,
            default_certs=default_certs,
            verify_mode=verify_mode,
            check_hostname=check_hostname,
            certfile=certfile,
            keyfile=keyfile,
            password=password,
            ciphers=ciphers,
            mtu=mtu,
            handshake_timeout=handshake_timeout,
            initial_retransmit_timeout=initial_retransmit_timeout,
            max_retransmit_timeout=max_retransmit_timeout,
            idle_timeout=idle_timeout,
            recv_buffer_size=recv_buffer_size,
            limits=Limits() if limits is None else limits,
            psk=psk,
            alpn_protocols=alpn_protocols,
            srtp_profiles=srtp_profiles,
            session_tickets=session_tickets,
            allow_renegotiation=allow_renegotiation,
            keylog_file=keylog_file,
            verify_time=verify_time,
        )

    # -- ssl.SSLContext-style names: each returns a NEW configuration ----------------------------
    #
    # Code ported from ssl.SSLContext calls these for their effect and ignores the result. So
    # that this is never a silent no-op, each call retires the configuration it was called on:
    # building an endpoint from a retired configuration raises ConfigurationError naming the
    # call and the fix (`config = config.load_cert_chain(...)`). Deriving further variants from
    # it stays allowed; replace() retires nothing.

    def _derive(self, method: str, **changes: Any) -> DTLSConfiguration:
        derived = self.replace(**changes)
        self.__dict__["_retired_by"] = method
        return derived

    def load_cert_chain(
        self, certfile: StrPath, keyfile: StrPath | None = None, password: Password | None = None
    ) -> DTLSConfiguration:
        """A copy presenting ``certfile``/``keyfile`` (``ssl.SSLContext.load_cert_chain``).

        The configuration is frozen, so unlike ``SSLContext`` this changes nothing in place:
        use the returned configuration (``config = config.load_cert_chain(...)``). This one is
        retired: an endpoint built from it raises :class:`ConfigurationError`.
        """
        return self._derive(
            "load_cert_chain", certfile=certfile, keyfile=keyfile, password=password
        )

    def load_verify_locations(
        self,
        cafile: StrPath | None = None,
        capath: StrPath | None = None,
        cadata: str | bytes | None = None,
    ) -> DTLSConfiguration:
        """A copy that trusts these CAs (``ssl.SSLContext.load_verify_locations``); each
        given one replaces the field of the same name. Returns a new configuration (frozen) and
        retires this one (see :meth:`load_cert_chain`)."""
        if cafile is None and capath is None and cadata is None:
            raise ConfigurationError("load_verify_locations needs cafile, capath or cadata")
        changes: dict[str, Any] = {}
        if cafile is not None:
            changes["cafile"] = cafile
        if capath is not None:
            changes["capath"] = capath
        if cadata is not None:
            changes["cadata"] = cadata
        return self._derive("load_verify_locations", **changes)

    def load_default_certs(self) -> DTLSConfiguration:
        """A copy that also trusts the system's CA store (``default_certs=True``;
        ``ssl.SSLContext.load_default_certs``). Returns a new configuration (frozen) and
        retires this one (see :meth:`load_cert_chain`)."""
        return self._derive("load_default_certs", default_certs=True)

    def set_alpn_protocols(self, protocols: Sequence[str]) -> DTLSConfiguration:
        """A copy offering (client) or accepting (server) these ALPN protocols
        (``ssl.SSLContext.set_alpn_protocols``). Returns a new configuration (frozen) and
        retires this one (see :meth:`load_cert_chain`)."""
        return self._derive("set_alpn_protocols", alpn_protocols=protocols)

    def replace(self, **changes: Any) -> DTLSConfiguration:
        """A copy with some fields changed (validated again). Retires nothing: the usual way
        to derive several variants from one configuration."""
        return dataclasses.replace(self, **changes)

    def effective_verify_mode(self, server: bool) -> ssl.VerifyMode:
        """The verify mode in force for this role."""
        if self.verify_mode is not None:
            return self.verify_mode
        if (
            not server
            and self.psk is not None
            and _context.offers_only_psk(self.effective_ciphers(False))
        ):
            return ssl.CERT_NONE  # only PSK suites are offered: no certificate will come
        return ssl.CERT_NONE if server else ssl.CERT_REQUIRED

    def effective_ciphers(self, server: bool) -> str:
        """The OpenSSL cipher list in force for this role."""
        if self.ciphers:
            return self.ciphers
        if server and self.psk_lookup is not None:
            return PSK_CIPHERS if self.certfile is None else f"{PSK_CIPHERS}:{DEFAULT_CIPHERS}"
        if not server and self.psk is not None:
            return PSK_CIPHERS
        return DEFAULT_CIPHERS

    def add_sni_certificate(
        self,
        name: str,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str],
        password: Password | None = None,
    ) -> DTLSConfiguration:
        """A copy that also serves ``certfile`` to clients asking for ``name`` (EdgerOS
        ``addcert``). The configuration is frozen: use the returned one; this one is retired
        (see :meth:`load_cert_chain`)."""
        certificates = dict(self.sni_certificates or {})
        certificates[name] = (certfile, keyfile, password)
        return self._derive("add_sni_certificate", sni_certificates=certificates)

    # -- OpenSSL context ----------------------------------------------------------------------

    def verification_policy(self, server_name: str | None) -> bytes:
        """A digest of what a client connection to ``server_name`` accepts as the server's
        identity: verify mode, host name checking, every trust source (CA file contents, CA
        directory, inline CAs, the system store), the PSK identity and ``verify_time``. A
        session is offered for resumption only to a connection with the same policy: resuming
        skips certificate checks, so a session one configuration accepted must not reach a
        stricter one."""
        digest = self.__dict__.get("_trust_digest")
        if digest is None:
            trust = hashlib.sha256()
            for part in (
                repr(self.effective_verify_mode(False)),
                repr(self.check_hostname),
                repr(self.psk[0] if self.psk is not None else None),
                repr(os.fspath(self.cafile) if self.cafile is not None else None),
                repr(os.fspath(self.capath) if self.capath is not None else None),
                repr(self.default_certs),
                repr(self.verify_time),  # the clock certificate dates were checked against
            ):
                trust.update(part.encode() + b"\0")
            if self.cafile is not None:
                try:
                    trust.update(Path(self.cafile).read_bytes())
                except OSError:
                    trust.update(b"unreadable")
            if self.cadata is not None:
                raw = self.cadata.encode() if isinstance(self.cadata, str) else self.cadata
                trust.update(raw)
            digest = self.__dict__.setdefault("_trust_digest", trust.digest())
        return hashlib.sha256(digest + (server_name or "").encode()).digest()

    def context(self, server: bool, *, tls: bool = False) -> SSL.Context:
        """The OpenSSL context for this role, built on first use and then shared by every
        connection made from this configuration; see :func:`dtlskit.core.context.context`.
        ``tls=True``: the TLS-over-TCP context."""
        return _context.context(self, server, tls=tls)

    def build_context(self, server: bool, *, tls: bool = False) -> SSL.Context:
        """A fresh OpenSSL DTLS context for this role (``tls=True``: TLS 1.2/1.3 for TCP); see
        :func:`dtlskit.core.context.build_context`. Raises :class:`ConfigurationError`."""
        return _context.build_context(self, server, tls=tls)


def _check_psk(psk: object) -> None:
    if not isinstance(psk, tuple) or len(psk) != 2:
        raise ConfigurationError("psk must be an (identity, key) tuple")
    identity, key = psk
    raw = identity.encode() if isinstance(identity, str) else identity
    if not isinstance(raw, bytes) or not 0 < len(raw) <= _PSK_MAX_IDENTITY or b"\0" in raw:
        raise ConfigurationError(
            f"psk identity must be a str or bytes of 1 to {_PSK_MAX_IDENTITY} bytes, without NUL"
        )
    if not isinstance(key, bytes) or not 0 < len(key) <= _PSK_MAX_KEY:
        raise ConfigurationError(f"psk key must be bytes, 1 to {_PSK_MAX_KEY} bytes long")


def _positive_seconds(value: object) -> bool:
    """A positive, finite int or float (NaN would make a deadline that never comes)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
