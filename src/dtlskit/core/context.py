"""The OpenSSL context factory: a :class:`~dtlskit.config.DTLSConfiguration` in, an
``OpenSSL.SSL.Context`` for one role out.

Theory of operation
-------------------
A configuration is frozen data; this module turns it into OpenSSL state. :func:`build_context`
makes a fresh DTLS 1.2 context for a role (client or server): protocol floor, options
(no renegotiation unless asked, no compression, no MTU query: the engine sets the MTU),
cipher list, trust store (CA file, directory, inline CAs, the system store), our certificate
and key (read with ``cryptography`` so a wrong password or a mismatched key is named), PSK
callbacks, ALPN, DTLS-SRTP, the key log and the handshake watcher the engine reads its notes
from. A server's SNI certificates each get a context of their own, built up front with every
other setting, because OpenSSL reads the trust store, ALPN and key-log callbacks from whichever
context a connection ends up on. :func:`context` is the same context built once per
configuration and role, and shared by every connection made from it (as one
``ssl.SSLContext`` serves many sockets).

Every failure is a :class:`~dtlskit.exceptions.ConfigurationError` naming the file and the
cause; nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto

from .._secrets import open_private_append, security_warning
from ..exceptions import ConfigurationError
from . import _bindings

if TYPE_CHECKING:
    from ..config import CertificateSpec, DTLSConfiguration, Password

__all__ = [
    "build_context",
    "check_certificate_spec",
    "check_not_retired",
    "context",
    "offers_only_psk",
]

_DTLS1_2_VERSION = 0xFEFD  # pyOpenSSL names only the TLS versions
_MAX_CALLBACK_CONTEXTS = 256  # contexts built for sni_callback results, kept at once


def context(config: DTLSConfiguration, server: bool, *, tls: bool = False) -> SSL.Context:
    """The OpenSSL context for this role, built on first use and then shared by every
    connection made from this configuration (as one ``ssl.SSLContext`` serves many sockets).
    Files are read once; to pick up a changed certificate, make a new configuration
    (:meth:`~dtlskit.config.DTLSConfiguration.replace`). Raises
    :class:`~dtlskit.exceptions.ConfigurationError`. ``tls=True``: the TLS-over-TCP context
    (:mod:`dtlskit.core.tls`), cached apart."""
    check_not_retired(config)
    cache: dict[tuple[bool, bool], SSL.Context] = config.__dict__.setdefault("_context_cache", {})
    ctx = cache.get((server, tls))
    if ctx is None:
        ctx = cache[(server, tls)] = build_context(config, server, tls=tls)
    return ctx


def build_context(config: DTLSConfiguration, server: bool, *, tls: bool = False) -> SSL.Context:
    """A fresh OpenSSL DTLS context for this role (``tls=True``: a TLS 1.2/1.3 context for
    TCP, the same settings; see :mod:`dtlskit.core.tls`). Raises :class:`ConfigurationError`.

    A server's context also holds the contexts of its SNI certificates (switched to by its
    server-name callback), its session cache and its session-ticket keys: share one context
    (``ServerEngine(config, context=ctx)``, built before worker processes fork) to let every
    worker resume every session.
    """
    check_not_retired(config)
    if server and config.certfile is None and config.psk_lookup is None:
        protocol = "TLS" if tls else "DTLS"
        raise ConfigurationError(
            f"a {protocol} server needs a certificate: give certfile and keyfile "
            "(or psk_lookup for a PSK-only server)"
        )
    ctx = _base_context(config, server, tls)
    _load_identity(config, ctx)
    if server:
        _install_sni(config, ctx, tls)
    elif config.effective_verify_mode(False) == ssl.CERT_NONE and not (
        config.psk is not None and offers_only_psk(config.effective_ciphers(False))
    ):
        security_warning(
            "this client does not verify the server's certificate (verify_mode=CERT_NONE): "
            "anyone on the path can pose as the server and read the traffic"
        )
    return ctx


def check_not_retired(config: DTLSConfiguration) -> None:
    """:class:`ConfigurationError` for a configuration one of the ``ssl.SSLContext``-style
    methods was called on: it returned the configuration meant to be used, and code ported from
    ``ssl`` that ignored the result would otherwise run with the old settings."""
    method = config.__dict__.get("_retired_by")
    if method is not None:
        raise ConfigurationError(
            f"this configuration was retired by {method}(), which returns a NEW configuration "
            f"(DTLSConfiguration is frozen, unlike ssl.SSLContext): use what it returned, "
            f"config = config.{method}(...); to derive variants without retiring, use "
            "config.replace(...)"
        )


def offers_only_psk(ciphers: str) -> bool:
    """Whether a cipher list names only PSK suites that involve no certificate (not RSA-PSK)."""
    tokens = [
        t
        for t in ciphers.replace(",", ":").replace(" ", ":").split(":")
        if t and t[0] not in "@!-+"
    ]
    return bool(tokens) and all("PSK" in t and "RSA" not in t for t in tokens)


def _base_context(config: DTLSConfiguration, server: bool, tls: bool = False) -> SSL.Context:
    """Everything but our certificate (SNI contexts are made with this too)."""
    if tls:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    else:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(_DTLS1_2_VERSION)
    options = SSL.OP_NO_QUERY_MTU | SSL.OP_NO_COMPRESSION
    if not config.allow_renegotiation:
        options |= SSL.OP_NO_RENEGOTIATION
    elif server:
        options |= _bindings.OP_ALLOW_CLIENT_RENEGOTIATION
    if server and not config.session_tickets:
        options |= SSL.OP_NO_TICKET
    ctx.set_options(options)
    # Free the read/write buffers of idle connections: measured ~25% less memory per
    # established session on a server holding hundreds of them.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ciphers = config.effective_ciphers(server)
    try:
        ctx.set_cipher_list(ciphers.encode())
    except SSL.Error as exc:
        raise ConfigurationError(f"no usable cipher in {ciphers!r}") from exc
    if _wants_ccm8(ciphers) and "@SECLEVEL=0" not in ciphers.upper():
        raise ConfigurationError(
            f"ciphers {ciphers!r} asks for CCM-8 suites, which OpenSSL 4 enables only at "
            "security level 0 (their 64-bit tags): append ':@SECLEVEL=0' to ciphers"
        )
    mode = config.effective_verify_mode(server)
    if mode != ssl.CERT_NONE:
        _load_trust(config, ctx, server)
    _install_features(config, ctx, server)
    if server:
        # Session ID context: required for resumption when client certificates are used.
        ctx.set_session_id(b"dtlskit")
    if server and not tls:
        # We answer ClientHellos with our own stateless cookies before OpenSSL sees them;
        # these callbacks only satisfy DTLSv1_listen for a ClientHello we already verified.
        _bindings.accept_verified_cookies(ctx)
    return ctx


def _load_identity(config: DTLSConfiguration, ctx: SSL.Context) -> None:
    if config.certfile is None:
        return
    _use_identity(ctx, config.certfile, config.keyfile, config.password)


def _install_features(config: DTLSConfiguration, ctx: SSL.Context, server: bool) -> None:
    if server and config.psk_lookup is not None:
        lookup = config.psk_lookup
        find = lookup.get if isinstance(lookup, Mapping) else lookup
        hint = config.psk_identity_hint.encode() if config.psk_identity_hint else None
        _bindings.set_psk_server(ctx, find, hint)
    elif not server and config.psk is not None:
        identity, key = config.psk
        _bindings.set_psk_client(
            ctx, identity.encode() if isinstance(identity, str) else identity, key
        )
    if config.alpn_protocols:
        if server:
            _bindings.set_alpn_select(ctx, config.alpn_protocols)
        else:
            ctx.set_alpn_protos([p.encode() for p in config.alpn_protocols])
    if config.srtp_profiles:
        try:
            ctx.set_tlsext_use_srtp(":".join(config.srtp_profiles).encode())
        except SSL.Error as exc:
            raise ConfigurationError(
                f"srtp_profiles: OpenSSL does not know {list(config.srtp_profiles)!r} "
                "(known: SRTP_AES128_CM_SHA1_80, SRTP_AES128_CM_SHA1_32, "
                "SRTP_AEAD_AES_128_GCM, SRTP_AEAD_AES_256_GCM, ...)"
            ) from exc
    if config.keylog_file is not None:
        ctx.set_keylog_callback(_KeyLogWriter(os.fspath(config.keylog_file)))
    _bindings.watch_handshake(ctx, server)


def _install_sni(config: DTLSConfiguration, ctx: SSL.Context, tls: bool = False) -> None:
    if (
        not config.sni_certificates
        and config.sni_callback is None
        and config.ip_certificate is None
    ):
        return
    exact: dict[str, SSL.Context] = {}
    wildcard: dict[str, SSL.Context] = {}
    for name, spec in (config.sni_certificates or {}).items():
        key = name.lower().rstrip(".")
        table = wildcard if key.startswith("*.") else exact
        table[key.removeprefix("*.")] = _identity_context(
            config, spec, f"sni_certificates[{name!r}]", tls
        )
    by_ip = (
        _identity_context(config, config.ip_certificate, "ip_certificate", tls)
        if config.ip_certificate is not None
        else None
    )
    built: dict[tuple[str, str], SSL.Context] = {}

    def choose(connection: SSL.Connection, name: str | None) -> None:
        target = by_ip
        if name is not None:
            key = name.lower().rstrip(".")
            target = exact.get(key) or wildcard.get(key.partition(".")[2])
        if target is None and config.sni_callback is not None:
            target = _callback_context(config, name, built, tls)
        if target is not None:
            connection.set_context(target)

    _bindings.set_servername_callback(ctx, choose)


def _callback_context(
    config: DTLSConfiguration,
    name: str | None,
    built: dict[tuple[str, str], SSL.Context],
    tls: bool = False,
) -> SSL.Context | None:
    what = f"sni_callback({name!r})"
    callback = config.sni_callback
    if callback is None:  # pragma: no cover - only called when set
        return None
    try:
        spec = callback(name)
    except Exception as exc:
        raise ConfigurationError(f"{what} raised {type(exc).__name__}: {exc}") from exc
    if spec is None:
        return None
    check_certificate_spec(f"the value of {what}", spec)
    key = (os.fspath(spec[0]), os.fspath(spec[1]))
    if key not in built:
        if len(built) >= _MAX_CALLBACK_CONTEXTS:
            built.clear()
        built[key] = _identity_context(config, spec, what, tls)
    return built[key]


def _identity_context(
    config: DTLSConfiguration, spec: CertificateSpec, what: str, tls: bool = False
) -> SSL.Context:
    ctx = _base_context(config, server=True, tls=tls)
    password = spec[2] if len(spec) == 3 else None
    try:
        _use_identity(ctx, spec[0], spec[1], password)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}: {exc}") from exc
    return ctx


def _load_trust(config: DTLSConfiguration, ctx: SSL.Context, server: bool) -> None:
    loaded = False
    if config.cafile is not None or config.capath is not None:
        cafile = os.fspath(config.cafile) if config.cafile is not None else None
        capath = os.fspath(config.capath) if config.capath is not None else None
        if cafile is not None:
            _check_readable(cafile, "CA file")
        if capath is not None and not os.path.isdir(capath):
            raise ConfigurationError(f"capath {capath} is not a directory")
        try:
            ctx.load_verify_locations(cafile, capath)
        except SSL.Error as exc:
            raise ConfigurationError(
                f"cannot load CA certificates from {cafile or capath}: {_reason(exc)}"
            ) from exc
        loaded = True
    if config.cadata is not None:
        store = ctx.get_cert_store()
        if store is None:  # pragma: no cover - OpenSSL always has one
            raise ConfigurationError("OpenSSL context has no certificate store")
        for cert in _parse_cadata(config.cadata):
            try:
                store.add_cert(cert)
            except crypto.Error as exc:  # pragma: no cover - OpenSSL 3 accepts duplicates
                raise ConfigurationError(f"cadata: OpenSSL refused a certificate: {exc}") from exc
        loaded = True
    if config.default_certs or (not loaded and not server):
        ctx.set_default_verify_paths()


def check_certificate_spec(what: str, spec: object) -> None:
    """A ``(certfile, keyfile[, password])`` tuple, or :class:`ConfigurationError`."""
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ConfigurationError(
            f"{what} must be a (certfile, keyfile) or (certfile, keyfile, password) tuple, "
            f"not {spec!r}"
        )
    if not all(isinstance(item, str | os.PathLike) for item in spec[:2]):
        raise ConfigurationError(f"{what}: certfile and keyfile must be paths")
    password = spec[2] if len(spec) == 3 else None
    if password is not None and not (isinstance(password, str | bytes) or callable(password)):
        raise ConfigurationError(f"{what}: password must be a str, bytes or a callable")


def _use_identity(
    ctx: SSL.Context,
    certfile_path: str | os.PathLike[str],
    keyfile_path: str | os.PathLike[str] | None,
    password: Password | None,
) -> None:
    """Load a certificate chain and its private key into ``ctx``; every failure is a
    :class:`ConfigurationError` naming the file(s) and the cause."""
    certfile = os.fspath(certfile_path)
    keyfile = os.fspath(keyfile_path) if keyfile_path is not None else certfile
    _check_readable(certfile, "certificate file")
    try:
        ctx.use_certificate_chain_file(certfile)
    except SSL.Error as exc:
        raise ConfigurationError(
            f"cannot load certificate chain from {certfile}: {_reason(exc)} "
            "(expected PEM 'BEGIN CERTIFICATE' blocks, our certificate first)"
        ) from exc
    key = _load_private_key(keyfile, password)
    try:
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except TypeError as exc:  # pyOpenSSL takes only key types that can sign
        raise ConfigurationError(
            f"private key {keyfile} is a {type(key).__name__.lstrip('_')}, which cannot "
            "sign a handshake (use an RSA, EC, Ed25519 or Ed448 key)"
        ) from exc
    except SSL.Error as exc:
        raise ConfigurationError(
            f"certificate {certfile} and private key {keyfile} do not belong together: the "
            f"key is not the one the certificate was issued for ({_reason(exc)})"
        ) from exc


def _check_readable(path: str, what: str) -> None:
    """Fail with the OS's words (not OpenSSL's "system lib") when ``path`` cannot be read."""
    if os.path.isdir(path):
        raise ConfigurationError(f"cannot read {what} {path}: it is a directory")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _wants_ccm8(ciphers: str) -> bool:
    tokens = ciphers.upper().replace(",", ":").replace(" ", ":").split(":")
    return any("CCM8" in t or "CCM_8" in t for t in tokens if t and t[0] not in "!-")


class _KeyLogWriter:
    """Appends NSS key log lines to a file (a pyOpenSSL key-log callback).

    The file is opened for each line (it may be rotated meanwhile) with the checks of
    :func:`dtlskit._secrets.open_private_append`: created 0600, never through a symbolic link,
    refused when others may read it."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.close(open_private_append(path, "keylog_file"))
        security_warning(
            f"session secrets are being written to the key log {path}: anyone who reads it "
            "can decrypt the traffic (keylog_file / SSLKEYLOGFILE are for debugging only)"
        )

    def __call__(self, connection: SSL.Connection, line: bytes) -> None:
        try:  # runs inside an OpenSSL callback: nothing may escape
            fd = open_private_append(self.path, "keylog_file")
            try:
                os.write(fd, line + b"\n")
            finally:
                os.close(fd)
        except (OSError, ConfigurationError) as exc:
            security_warning(f"key log lines are being dropped: {exc}")


def _load_private_key(keyfile: str, password: Password | None) -> Any:
    """Load a PEM private key with cryptography (pyOpenSSL's passphrase callback is deprecated)."""
    try:
        with open(keyfile, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read private key file {keyfile}: {exc.strerror}") from exc
    secret: bytes | None = None
    if password is not None:
        if callable(password):
            try:
                value = password()
            except Exception as exc:
                raise ConfigurationError(
                    f"the password callable for private key {keyfile} raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        else:
            value = password
        if not isinstance(value, str | bytes):
            raise ConfigurationError(
                f"the password for private key {keyfile} must be str or bytes, "
                f"not {type(value).__name__}"
            )
        secret = value.encode() if isinstance(value, str) else bytes(value)
    try:
        return load_pem_private_key(data, secret)
    except TypeError as exc:
        if secret is None:
            raise ConfigurationError(
                f"private key {keyfile} is encrypted: give its password"
            ) from exc
        raise ConfigurationError(
            f"private key {keyfile} is not encrypted, but a password was given"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        hint = "wrong password, or " if secret is not None else ""
        raise ConfigurationError(
            f"cannot load private key from {keyfile}: {hint}not a PEM private key"
        ) from exc


def _parse_cadata(cadata: str | bytes) -> Sequence[crypto.X509]:
    try:
        if isinstance(cadata, str):
            certs = x509.load_pem_x509_certificates(cadata.encode())
        elif cadata.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(cadata)
        else:
            certs = [x509.load_der_x509_certificate(cadata)]
    except ValueError as exc:
        raise ConfigurationError(
            f"cadata holds no valid certificate (expected PEM text or DER bytes): {exc}"
        ) from exc
    return [crypto.X509.from_cryptography(cert) for cert in certs]


def _reason(exc: SSL.Error) -> str:
    """The last OpenSSL reason string of an error, for messages."""
    try:
        return str(exc.args[0][-1][2])
    except (IndexError, TypeError):
        return str(exc) or type(exc).__name__
