"""The one place where dtlskit reaches past pyOpenSSL into the OpenSSL bindings of `cryptography`.

pyOpenSSL exposes no host name verification parameters, no verification error strings, no PSK
(RFC 4279), no serialised sessions, and its server-name and ALPN callbacks cannot choose the
alert they fail with. Each piece is looked up with feature detection; when one is missing the
caller gets a :class:`~dtlskit.exceptions.ConfigurationError` naming it instead of an
AttributeError.

C callbacks. Every callback installed here catches every exception (and cffi's ``onerror``
catches anything that still escapes): a failure returns the value that makes OpenSSL fail the
handshake with the right alert, and the reason is written to the connection's
:class:`HandshakeNotes` so the error the user sees names it. The cffi callback objects are kept
alive as long as the ``SSL.Context`` they were installed on (OpenSSL copies the PSK callbacks
into every ``SSL`` made from it, and every pyOpenSSL ``Connection`` holds its context).
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL

from ..exceptions import ConfigurationError

try:  # pragma: no cover - the import itself is exercised on every run
    from cryptography.hazmat.bindings.openssl.binding import Binding as _Binding

    _lib: Any = _Binding.lib
    _ffi: Any = _Binding.ffi
except Exception:  # pragma: no cover - only on a broken cryptography install
    _lib = None
    _ffi = None

__all__ = [
    "HandshakeNotes",
    "accept_verified_cookies",
    "attach_notes",
    "do_handshake",
    "get_session",
    "has",
    "notes_of",
    "read_output",
    "read_plaintext",
    "session_from_der",
    "session_reused",
    "session_to_der",
    "set_alpn_select",
    "set_expected_peer_name",
    "set_psk_client",
    "set_psk_server",
    "set_servername_callback",
    "set_session",
    "verify_error_string",
    "watch_established",
    "watch_handshake",
    "write_input",
]


# Since OpenSSL 3.0 a server refuses client-initiated renegotiation unless this option is set.
# Not bound by cryptography; its value is fixed in OpenSSL's ABI (ssl.h: SSL_OP_BIT(8)).
OP_ALLOW_CLIENT_RENEGOTIATION: int = int(getattr(_lib, "SSL_OP_ALLOW_CLIENT_RENEGOTIATION", 1 << 8))

_ALERT_INTERNAL_ERROR = 80
_ALERT_UNRECOGNIZED_NAME = 112

# cffi callback objects, kept alive for the lifetime of the context they were installed on.
_keepalive: weakref.WeakKeyDictionary[SSL.Context, list[Any]] = weakref.WeakKeyDictionary()


_bound: dict[str, bool] = {}


def has(*names: str) -> bool:
    """Whether every named OpenSSL symbol is available in the bindings (cached: some are asked
    about on every handshake)."""
    for name in names:
        found = _bound.get(name)
        if found is None:
            found = _bound[name] = _lib is not None and hasattr(_lib, name)
        if not found:
            return False
    return True


def _require(*names: str) -> Any:
    if not has(*names):
        missing = ", ".join(n for n in names if _lib is None or not hasattr(_lib, n))
        raise ConfigurationError(
            f"the installed cryptography package does not bind {missing}, which dtlskit needs "
            "for this feature; upgrade cryptography"
        )
    return _lib


def set_expected_peer_name(ssl_connection: Any, name: str) -> None:
    """Make OpenSSL check the peer certificate against a DNS name or an IP address.

    The check runs inside OpenSSL's chain verification, so a mismatch fails the handshake with
    X509_V_ERR_HOSTNAME_MISMATCH / X509_V_ERR_IP_ADDRESS_MISMATCH like any other verify error.
    """
    lib = _require("SSL_get0_param", "X509_VERIFY_PARAM_set1_host", "X509_VERIFY_PARAM_set1_ip")
    param = lib.SSL_get0_param(ssl_connection._ssl)
    try:
        packed = ipaddress.ip_address(name).packed
    except ValueError:
        encoded = name.encode("idna") if not name.isascii() else name.encode()
        ok = lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded))
    else:
        ok = lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
    if ok != 1:
        raise ConfigurationError(f"OpenSSL refused {name!r} as the expected peer name")


def set_verify_time(ssl_connection: Any, timestamp: int) -> None:
    """Make OpenSSL check certificate dates on this connection against ``timestamp`` (POSIX
    seconds) instead of the system clock (``X509_VERIFY_PARAM_set_time``)."""
    lib = _require("SSL_get0_param", "X509_VERIFY_PARAM_set_time")
    lib.X509_VERIFY_PARAM_set_time(lib.SSL_get0_param(ssl_connection._ssl), timestamp)


def verify_error_string(code: int) -> str:
    """OpenSSL's words for a certificate verification result code."""
    if has("X509_verify_cert_error_string"):
        text = _ffi.string(_lib.X509_verify_cert_error_string(code))
        return str(text.decode("ascii", "replace"))
    return f"certificate verification error {code}"


# -- per-connection notes ---------------------------------------------------------------------


@dataclass(slots=True)
class HandshakeNotes:
    """What the callbacks learnt about one connection, for engine properties and error messages.

    Stored as the pyOpenSSL connection's app data; callbacks find it from the ``SSL *``.
    """

    psk_identity: str | None = None
    """PSK identity the client sent (server) or is sending (client)."""
    psk_identity_hint: str | None = None
    """Client: the identity hint the server sent, if any."""
    server_name: str | None = None
    """Server: the SNI host name the client sent, if any."""
    alpn_offered: tuple[str, ...] = ()
    """ALPN protocols the client offered (server) or offers (client)."""
    certificate_requested: bool = False
    """Client: the server asked for a client certificate."""
    renegotiation_refused: bool = False
    """This side refused a renegotiation the peer started (alert ``no_renegotiation``)."""
    failure: str | None = None
    """Why a callback made OpenSSL fail the handshake, in words."""


def attach_notes(connection: SSL.Connection) -> HandshakeNotes:
    """Give a pyOpenSSL connection fresh notes (as its app data) and return them."""
    notes = HandshakeNotes()
    connection.set_app_data(notes)
    return notes


def notes_of(connection: SSL.Connection | None) -> HandshakeNotes | None:
    """The notes of a connection made by a dtlskit engine, or None."""
    if connection is None:
        return None
    data = connection.get_app_data()
    return data if isinstance(data, HandshakeNotes) else None


def _connection_of(ssl: Any) -> SSL.Connection | None:
    mapping = getattr(SSL.Connection, "_reverse_mapping", None)
    if mapping is None:  # pragma: no cover - pyOpenSSL has kept this mapping since 0.13
        return None
    connection: SSL.Connection | None = mapping.get(ssl)
    return connection


def _record_failure(ssl: Any, reason: str) -> None:
    notes = notes_of(_connection_of(ssl))
    if notes is not None and notes.failure is None:
        notes.failure = reason


def _swallow(exc_type: Any, exc_value: Any, traceback: Any) -> None:
    """cffi ``onerror``: nothing ever propagates out of a C callback (the error value is used)."""


def _keep(ctx: SSL.Context, callback: Any) -> None:
    _keepalive.setdefault(ctx, []).append(callback)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# -- PSK (RFC 4279) ---------------------------------------------------------------------------


def set_psk_client(ctx: SSL.Context, identity: bytes, key: bytes) -> None:
    """Make a client context offer PSK cipher suites with ``identity`` and ``key``."""
    lib = _require("SSL_CTX_set_psk_client_callback")

    def callback(
        ssl: Any, hint: Any, identity_out: Any, max_identity: int, psk_out: Any, max_psk: int
    ) -> int:
        try:
            notes = notes_of(_connection_of(ssl))
            if notes is not None:
                notes.psk_identity = _text(identity)
                notes.psk_identity_hint = None if hint == _ffi.NULL else _text(_ffi.string(hint))
            if len(identity) > max_identity or len(key) > max_psk:
                _record_failure(
                    ssl,
                    f"the PSK identity ({len(identity)} bytes) or key ({len(key)} bytes) is "
                    f"longer than OpenSSL allows ({max_identity} / {max_psk} bytes)",
                )
                return 0
            _ffi.memmove(identity_out, identity + b"\0", len(identity) + 1)
            _ffi.memmove(psk_out, key, len(key))
            return len(key)
        except Exception as exc:  # never into C
            _record_failure(ssl, f"PSK client callback failed: {type(exc).__name__}: {exc}")
            return 0

    c_callback = _ffi.callback(
        "unsigned int (*)(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)",
        callback,
        error=0,
        onerror=_swallow,
    )
    lib.SSL_CTX_set_psk_client_callback(ctx._context, c_callback)
    _keep(ctx, c_callback)


def set_psk_server(
    ctx: SSL.Context, lookup: Callable[[str], bytes | None], hint: bytes | None
) -> None:
    """Make a server context accept PSK cipher suites, finding keys with ``lookup(identity)``.

    ``lookup`` returning None (or failing) makes OpenSSL answer with an ``unknown_psk_identity``
    alert; the notes say which identity and why.
    """
    lib = _require("SSL_CTX_set_psk_server_callback", "SSL_CTX_use_psk_identity_hint")

    def callback(ssl: Any, identity: Any, psk_out: Any, max_psk: int) -> int:
        name = "?"
        try:
            name = "" if identity == _ffi.NULL else _text(_ffi.string(identity))
            notes = notes_of(_connection_of(ssl))
            if notes is not None:
                notes.psk_identity = name
            key = lookup(name)
            if key is None:
                _record_failure(ssl, f"unknown PSK identity {name!r}")
                return 0
            if not isinstance(key, bytes | bytearray) or not key:
                _record_failure(
                    ssl, f"the PSK lookup for identity {name!r} returned {key!r}, not a key"
                )
                return 0
            if len(key) > max_psk:
                _record_failure(
                    ssl,
                    f"the PSK for identity {name!r} is {len(key)} bytes; OpenSSL allows "
                    f"at most {max_psk}",
                )
                return 0
            _ffi.memmove(psk_out, bytes(key), len(key))
            return len(key)
        except Exception as exc:  # never into C
            _record_failure(
                ssl, f"the PSK lookup for identity {name!r} raised {type(exc).__name__}: {exc}"
            )
            return 0

    c_callback = _ffi.callback(
        "unsigned int (*)(SSL *, char *, unsigned char *, unsigned int)",
        callback,
        error=0,
        onerror=_swallow,
    )
    lib.SSL_CTX_set_psk_server_callback(ctx._context, c_callback)
    _keep(ctx, c_callback)
    if hint is not None and lib.SSL_CTX_use_psk_identity_hint(ctx._context, hint) != 1:
        _clear_errors()
        raise ConfigurationError(f"OpenSSL refused the PSK identity hint {hint!r}")


# -- server name (SNI) and ALPN on the server ------------------------------------------------


def set_servername_callback(
    ctx: SSL.Context, choose: Callable[[SSL.Connection, str | None], None]
) -> None:
    """Call ``choose(connection, sni_name_or_None)`` for every ClientHello, before the server
    picks its certificate; ``choose`` may switch the connection's context (``set_context``).

    OpenSSL calls this even when the client sent no SNI. If ``choose`` raises, the handshake
    fails with an ``internal_error`` alert and the notes carry the exception's message.
    (pyOpenSSL's own wrapper would print the traceback and could not name the cause.)
    """
    lib = _require("SSL_CTX_set_tlsext_servername_callback", "SSL_get_servername")

    def callback(ssl: Any, alert: Any, arg: Any) -> int:
        try:
            connection = _connection_of(ssl)
            raw = lib.SSL_get_servername(ssl, lib.TLSEXT_NAMETYPE_host_name)
            name = None if raw == _ffi.NULL else _text(_ffi.string(raw))
            notes = notes_of(connection)
            if notes is not None:
                notes.server_name = name
            if connection is not None:
                choose(connection, name)
            return int(lib.SSL_TLSEXT_ERR_OK)
        except Exception as exc:  # never into C
            _record_failure(ssl, str(exc) or type(exc).__name__)
            alert[0] = _ALERT_INTERNAL_ERROR
            return int(lib.SSL_TLSEXT_ERR_ALERT_FATAL)

    c_callback = _ffi.callback(
        "int (*)(SSL *, int *, void *)",
        callback,
        error=lib.SSL_TLSEXT_ERR_ALERT_FATAL,
        onerror=_swallow,
    )
    lib.SSL_CTX_set_tlsext_servername_callback(ctx._context, c_callback)
    _keep(ctx, c_callback)


def set_alpn_select(ctx: SSL.Context, protocols: Sequence[str]) -> None:
    """Server: select the first of ``protocols`` the client offered; none in common fails the
    handshake with a ``no_application_protocol`` alert (RFC 7301 §3.2)."""
    lib = _require("SSL_CTX_set_alpn_select_cb")
    ours = [p.encode() for p in protocols]

    def callback(ssl: Any, out: Any, outlen: Any, in_: Any, inlen: int, arg: Any) -> int:
        try:
            offered: list[tuple[bytes, int]] = []  # (name, offset of the name in in_)
            data = bytes(_ffi.buffer(in_, inlen))
            i = 0
            while i < len(data):
                length = data[i]
                offered.append((data[i + 1 : i + 1 + length], i + 1))
                i += 1 + length
            notes = notes_of(_connection_of(ssl))
            names = tuple(_text(name) for name, _ in offered)
            if notes is not None:
                notes.alpn_offered = names
            for wanted in ours:
                for name, offset in offered:
                    if name == wanted:
                        out[0] = in_ + offset  # points into OpenSSL's own buffer: no copy to keep
                        outlen[0] = len(name)
                        return int(lib.SSL_TLSEXT_ERR_OK)
            _record_failure(
                ssl,
                f"no common ALPN protocol: the client offered {list(names)}, this server "
                f"supports {list(protocols)}",
            )
        except Exception as exc:  # never into C
            _record_failure(ssl, f"ALPN selection failed: {type(exc).__name__}: {exc}")
        return int(lib.SSL_TLSEXT_ERR_ALERT_FATAL)

    c_callback = _ffi.callback(
        "int (*)(SSL *, unsigned char **, unsigned char *, unsigned char *, unsigned int, void *)",
        callback,
        error=lib.SSL_TLSEXT_ERR_ALERT_FATAL,
        onerror=_swallow,
    )
    lib.SSL_CTX_set_alpn_select_cb(ctx._context, c_callback, _ffi.NULL)
    _keep(ctx, c_callback)


# -- sessions ---------------------------------------------------------------------------------


def get_session(connection: SSL.Connection) -> Any | None:
    """The connection's ``SSL_SESSION *`` (a reference we own, freed when collected), or None."""
    session = connection.get_session()
    return None if session is None else session._session


def set_session(connection: SSL.Connection, session: Any) -> None:
    """Offer ``session`` (an ``SSL_SESSION *``) for resumption on a client connection.

    pyOpenSSL's ``set_session`` only accepts sessions made with the very same ``Context``; each
    dtlskit endpoint builds its own context, so we call OpenSSL directly (it requires only the
    same protocol family, which a DTLS session from any dtlskit client context satisfies).
    """
    lib = _require("SSL_set_session")
    if lib.SSL_set_session(connection._ssl, session) != 1:
        _clear_errors()
        raise ConfigurationError("OpenSSL refused the session offered for resumption")


def session_to_der(session: Any) -> bytes:
    """DER encoding of an ``SSL_SESSION *`` (it contains the master secret: keep it private)."""
    lib = _require("i2d_SSL_SESSION")
    length = lib.i2d_SSL_SESSION(session, _ffi.NULL)
    if length <= 0:
        _clear_errors()
        raise ConfigurationError("OpenSSL could not serialise the session")
    buffer = _ffi.new("unsigned char[]", length)
    cursor = _ffi.new("unsigned char **", buffer)
    lib.i2d_SSL_SESSION(session, cursor)
    return bytes(_ffi.buffer(buffer, length))


def session_from_der(data: bytes) -> Any:
    """An ``SSL_SESSION *`` (freed when collected) from :func:`session_to_der` output."""
    lib = _require("d2i_SSL_SESSION", "SSL_SESSION_free")
    buffer = _ffi.new("unsigned char[]", data)
    cursor = _ffi.new("unsigned char **", buffer)
    session = lib.d2i_SSL_SESSION(_ffi.NULL, cursor, len(data))
    if session == _ffi.NULL:
        _clear_errors()
        raise ConfigurationError("not a serialised DTLS session (OpenSSL could not decode it)")
    return _ffi.gc(session, lib.SSL_SESSION_free)


def session_reused(connection: SSL.Connection) -> bool:
    """Whether the connection's handshake resumed a session."""
    if not has("SSL_session_reused"):  # pragma: no cover
        return False
    return bool(_lib.SSL_session_reused(connection._ssl))


def _clear_errors() -> None:
    """Leave no stale entry on OpenSSL's thread error queue for pyOpenSSL to misreport later."""
    if has("ERR_clear_error"):
        _lib.ERR_clear_error()


_CB_WRITE_ALERT = 0x4008  # SSL_CB_WRITE_ALERT
_ALERT_NO_RENEGOTIATION = 100


def watch_handshake(ctx: SSL.Context, server: bool) -> None:
    """Client contexts: note in each connection's notes when the server asks for a client
    certificate, so the bare ``handshake_failure`` alert a server sends when none comes can be
    explained. OpenSSL's certificate callback runs exactly then, once; an info callback (which
    this replaced) ran on every state change of every handshake, about 20 times.

    Refused renegotiations are watched only once a session is established: see
    :func:`watch_established`.
    """
    if server:
        return
    lib = _require("SSL_CTX_set_cert_cb")

    def callback(ssl: Any, arg: Any) -> int:
        try:  # runs inside an OpenSSL callback: nothing may escape
            notes = notes_of(_connection_of(ssl))
            if notes is not None:
                notes.certificate_requested = True
        except Exception:  # pragma: no cover - defensive
            pass
        return 1  # go on: OpenSSL then sends the certificate we have, or none

    c_callback = _ffi.callback("int (*)(SSL *, void *)", callback, error=1, onerror=_swallow)
    lib.SSL_CTX_set_cert_cb(ctx._context, c_callback, _ffi.NULL)
    _keep(ctx, c_callback)


_COOKIE = b"dtlskit"


def _generate_cookie(ssl: Any, cookie: Any, length: Any) -> int:
    cookie[0 : len(_COOKIE)] = _COOKIE
    length[0] = len(_COOKIE)
    return 1


def _accept_cookie(ssl: Any, cookie: Any, length: int) -> int:
    return 1


# Made once, at import (never lazily: two threads building their first server contexts at once
# would each make a pair, and the pair the global no longer held would be freed while a context
# still pointed at it); each context also keeps the pair it was given (``_keep``).
_COOKIE_CALLBACKS: tuple[Any, Any] | None = (
    (
        _ffi.callback(
            "int (*)(SSL *, unsigned char *, unsigned int *)",
            _generate_cookie,
            error=0,
            onerror=_swallow,
        ),
        _ffi.callback(
            "int (*)(SSL *, unsigned char *, unsigned int)",
            _accept_cookie,
            error=0,
            onerror=_swallow,
        ),
    )
    if _ffi is not None
    else None
)


def accept_verified_cookies(ctx: SSL.Context) -> None:
    """Server contexts: the cookie callbacks ``DTLSv1_listen`` insists on, for ClientHellos
    whose cookie the demultiplexer (:mod:`dtlskit.core.server`) already verified: the verify
    callback says yes, the generate callback is never asked (we send our own
    HelloVerifyRequests). Plain cffi callbacks shared by every context: OpenSSL calls the
    verify callback twice per handshake (in ``DTLSv1_listen`` and again in the handshake), and
    pyOpenSSL's wrappers (a connection lookup, a copy of the cookie, exception bookkeeping, and
    a check after each listen) cost several times the call."""
    lib = _require("SSL_CTX_set_cookie_generate_cb", "SSL_CTX_set_cookie_verify_cb")
    assert _COOKIE_CALLBACKS is not None  # bound whenever _require found the functions
    generate, verify = _COOKIE_CALLBACKS
    _keep(ctx, _COOKIE_CALLBACKS)
    lib.SSL_CTX_set_cookie_generate_cb(ctx._context, generate)
    lib.SSL_CTX_set_cookie_verify_cb(ctx._context, verify)


def _established_info(ssl: Any, where: int, ret: int) -> None:
    try:  # runs inside an OpenSSL callback: nothing may escape
        if where & _CB_WRITE_ALERT == _CB_WRITE_ALERT and ret & 0xFF == _ALERT_NO_RENEGOTIATION:
            notes = notes_of(_connection_of(ssl))
            if notes is not None:
                notes.renegotiation_refused = True
    except Exception:  # pragma: no cover - defensive
        pass


_established_info_callback: Any = None


def watch_established(connection: SSL.Connection) -> None:
    """Once a session is established: note when this side refuses a renegotiation (it writes
    the warning alert ``no_renegotiation``). One callback serves every connection; after the
    handshake OpenSSL calls it only on state changes and alerts, never per record."""
    global _established_info_callback
    if not has("SSL_set_info_callback"):  # pragma: no cover - bound for years
        return
    if _established_info_callback is None:
        _established_info_callback = _ffi.callback(
            "void (*)(const SSL *, int, int)", _established_info, onerror=_swallow
        )
    _lib.SSL_set_info_callback(connection._ssl, _established_info_callback)


_HELPERS = ("_verify_helper", "_alpn_select_helper", "_ocsp_helper")
"""pyOpenSSL context attributes whose callback exceptions its own do_handshake re-raises.
:func:`has_helpers` tests them one by one (a generator over these names cost about a
microsecond per call, twice per handshake); keep the two in step."""


def do_handshake(connection: SSL.Connection) -> bool:
    """One ``SSL_do_handshake``: True when the handshake is complete, False when OpenSSL waits
    for the peer's next datagram; any other outcome raises what pyOpenSSL's ``do_handshake``
    raises. The common wait costs no exception (pyOpenSSL raises ``WantReadError`` for it).
    A context with pyOpenSSL callback helpers (dtlskit sets none) takes pyOpenSSL's own path,
    which checks them for exceptions."""
    if has_helpers(connection._context):
        connection.do_handshake()  # pragma: no cover - dtlskit installs no pyOpenSSL helper
        return True  # pragma: no cover
    return do_handshake_unchecked(connection)


def has_helpers(context: SSL.Context) -> bool:
    """Whether ``context`` has pyOpenSSL callback helpers (then :func:`do_handshake` takes
    pyOpenSSL's own path). A caller that asks once per context may call
    :func:`do_handshake_unchecked` for connections of a context without them."""
    return (
        _lib is None
        or getattr(context, "_verify_helper", None) is not None
        or getattr(context, "_alpn_select_helper", None) is not None
        or getattr(context, "_ocsp_helper", None) is not None
    )


def do_handshake_unchecked(connection: SSL.Connection) -> bool:
    """:func:`do_handshake` for a connection whose context has no pyOpenSSL helpers
    (:func:`has_helpers` said so): the same outcomes, without asking again every step."""
    ssl = connection._ssl
    result = _lib.SSL_do_handshake(ssl)
    if result == 1:
        return True
    if _lib.SSL_get_error(ssl, result) == _lib.SSL_ERROR_WANT_READ:
        return False
    connection._raise_ssl_error(ssl, result)  # raises the error pyOpenSSL would
    return True  # SSL_ERROR_NONE: what pyOpenSSL's do_handshake treats as done


_alloc: Any = _ffi.new_allocator(should_clear_after_alloc=False) if _ffi is not None else None
_DIRECT_BIO = _lib is not None and all(
    hasattr(_lib, name) for name in ("BIO_get_mem_data", "BIO_read", "BIO_write")
)


def read_output(connection: SSL.Connection) -> bytes:
    """Everything OpenSSL wrote to the connection's outgoing memory BIO (b"" for nothing), in
    one ``BIO_read`` through the binding: the few calls of pyOpenSSL's ``bio_read`` (and its
    WantReadError for an empty BIO) cost more than the read, several times per handshake."""
    if not _DIRECT_BIO:  # pragma: no cover - cryptography has bound these for years
        chunks = []
        while True:
            try:
                chunks.append(connection.bio_read(65536))
            except SSL.WantReadError:
                return b"".join(chunks)
    bio = connection._from_ssl
    pending = int(_lib.BIO_get_mem_data(bio, _ffi.NULL))
    if pending <= 0:
        return b""
    buf = _alloc("char[]", pending)
    read = _lib.BIO_read(bio, buf, pending)
    return _ffi.buffer(buf, read)[:] if read > 0 else b""


_PLAINTEXT_MAX = 16384 + 2048
_WANT_READ = int(getattr(_lib, "SSL_ERROR_WANT_READ", 2))


def read_plaintext(connection: SSL.Connection) -> bytes | int:
    """One ``SSL_read`` through the binding: the plaintext of the next record, or OpenSSL's
    ``SSL_get_error`` code (:data:`dtlskit._frontend.accel.WANT_READ` when it holds nothing
    more; anything else, the caller raises at once with ``accel.raise_error``, on this
    thread). pyOpenSSL's ``read`` raises WantReadError for the common "nothing more", which
    costs more than the read."""
    if not _DIRECT_BIO:  # pragma: no cover - see read_output
        try:
            return bytes(connection.read(_PLAINTEXT_MAX))
        except SSL.WantReadError:
            return _WANT_READ
    ssl = connection._ssl
    _lib.ERR_clear_error()
    buf = _alloc("char[]", _PLAINTEXT_MAX)
    result = _lib.SSL_read(ssl, buf, _PLAINTEXT_MAX)
    if result > 0:
        return _ffi.buffer(buf, result)[:]  # type: ignore[no-any-return]
    return int(_lib.SSL_get_error(ssl, result))


def write_input(connection: SSL.Connection, data: bytes) -> bool:
    """Give OpenSSL one datagram (its incoming memory BIO), through the binding; False if the
    BIO refused it (an empty datagram)."""
    if not _DIRECT_BIO:  # pragma: no cover - see read_output
        try:
            connection.bio_write(data)
        except SSL.Error:
            return False
        return True
    return bool(_lib.BIO_write(connection._into_ssl, data, len(data)) > 0)


def memory_bio_pending(ssl_connection: Any, outgoing: bool = True) -> int | None:
    """Bytes waiting in a connection's memory BIO (``outgoing``: what OpenSSL wrote for us to
    send), or None where the bindings cannot tell. Lets the engine drain OpenSSL with one read
    instead of reading until an exception."""
    if not has("BIO_get_mem_data"):  # pragma: no cover - cryptography has bound it for years
        return None
    bio = ssl_connection._from_ssl if outgoing else ssl_connection._into_ssl
    return int(_lib.BIO_get_mem_data(bio, _ffi.NULL))


def verify_result(connection: SSL.Connection) -> int:
    """OpenSSL's certificate verification result for the connection (0: verified). After a
    resumption it is the result stored in the session when it was first established."""
    lib = _require("SSL_get_verify_result")
    return int(lib.SSL_get_verify_result(connection._ssl))


# -- stream reads and writes without an exception per call (TLS over TCP) -----------------------
#
# The TLS engine moves every byte through these: each is one or two direct OpenSSL calls, where
# pyOpenSSL's equivalents add argument checks, buffer wrappers and, for a drained read, an
# exception. Any outcome but the common ones is handed back to pyOpenSSL's own error raising,
# so the exceptions the engine translates are pyOpenSSL's, as everywhere else.

WANT_READ = -2
"""What :func:`stream_read` returns when OpenSSL needs more bytes from the peer."""
CLEAN_CLOSE = -1
"""What :func:`stream_read` returns after the peer's close_notify."""

_STREAM_CALLS = (
    "SSL_read",
    "SSL_write",
    "SSL_get_error",
    "SSL_get_session",
    "BIO_write",
    "BIO_read",
    "BIO_get_mem_data",
)
STREAM_FAST = _lib is not None and all(hasattr(_lib, name) for name in _STREAM_CALLS)
_no_zero: Any = _ffi.new_allocator(should_clear_after_alloc=False) if _ffi is not None else None
_RECORD_PLAINTEXT = 16384  # one SSL_read returns at most one record's plaintext


def stream_feed(connection: SSL.Connection, data: bytes) -> None:
    """Append bytes received from the peer to the connection's incoming memory BIO."""
    if not STREAM_FAST or _lib.BIO_write(connection._into_ssl, data, len(data)) != len(data):
        connection.bio_write(data)  # pragma: no cover - a memory BIO takes everything


def stream_drain(connection: SSL.Connection) -> bytes:
    """Everything OpenSSL wrote for the peer (empty when nothing)."""
    if not STREAM_FAST:  # pragma: no cover - cryptography has bound these for years
        try:
            return bytes(connection.bio_read(1 << 20))
        except SSL.WantReadError:
            return b""
    bio = connection._from_ssl
    size = int(_lib.BIO_get_mem_data(bio, _ffi.NULL))
    if size <= 0:
        return b""
    buffer = _no_zero("char[]", size)
    got = _lib.BIO_read(bio, buffer, size)
    return bytes(_ffi.buffer(buffer, got)) if got > 0 else b""


def stream_write(connection: SSL.Connection, data: bytes) -> None:
    """Encrypt all of ``data`` (a memory BIO takes it in one call); raises what pyOpenSSL's
    ``sendall`` raises."""
    if not STREAM_FAST:  # pragma: no cover - cryptography has bound these for years
        connection.sendall(data)
        return
    ssl = connection._ssl
    result = _lib.SSL_write(ssl, data, len(data))
    if result == len(data):
        return
    if result <= 0:
        connection._raise_ssl_error(ssl, result)
    connection.sendall(data[result:])  # pragma: no cover - partial writes are not enabled


def stream_read(connection: SSL.Connection) -> bytes | int:
    """One ``SSL_read``: decrypted bytes (at most one record's), or :data:`WANT_READ` (more
    bytes from the peer are needed) or :data:`CLEAN_CLOSE` (the peer's close_notify). These
    common outcomes cost no exception, unlike pyOpenSSL's ``recv``, which raises WantReadError
    on every drained read. Any other outcome raises what pyOpenSSL's ``recv`` raises. Each
    call has its own buffer (threads may read different connections at once: cffi releases
    the GIL during the call)."""
    if not STREAM_FAST:  # pragma: no cover - cryptography has bound these for years
        try:
            return bytes(connection.recv(_RECORD_PLAINTEXT))
        except SSL.WantReadError:
            return WANT_READ
        except SSL.ZeroReturnError:
            return CLEAN_CLOSE
    ssl = connection._ssl
    buffer = _no_zero("char[]", _RECORD_PLAINTEXT)
    result = _lib.SSL_read(ssl, buffer, _RECORD_PLAINTEXT)
    if result > 0:
        return bytes(_ffi.buffer(buffer, result))
    code = _lib.SSL_get_error(ssl, result)
    if code == _lib.SSL_ERROR_WANT_READ:
        return WANT_READ
    if code == _lib.SSL_ERROR_ZERO_RETURN:
        return CLEAN_CLOSE
    connection._raise_ssl_error(ssl, result)  # raises the error pyOpenSSL would
    return WANT_READ  # pragma: no cover - SSL_ERROR_NONE with a result <= 0 never happens


def stream_read_all(connection: SSL.Connection) -> tuple[list[bytes], int, SSL.Error | None]:
    """Every record OpenSSL can decrypt now: ``(chunks, status, error)``. ``status`` is
    :data:`WANT_READ` (all taken) or :data:`CLEAN_CLOSE` (the peer's close_notify came after
    the chunks); ``error`` is what pyOpenSSL raises for any other outcome, after the chunks
    decrypted before it (then ``status`` is WANT_READ)."""
    chunks: list[bytes] = []
    if not STREAM_FAST:  # pragma: no cover - cryptography has bound these for years
        while True:
            try:
                result = stream_read(connection)
            except SSL.Error as exc:
                return chunks, WANT_READ, exc
            if type(result) is not bytes:
                return chunks, int(result), None
            chunks.append(result)
    ssl = connection._ssl
    buffer = _no_zero("char[]", _RECORD_PLAINTEXT)
    read, size = _lib.SSL_read, _RECORD_PLAINTEXT
    while True:
        result = read(ssl, buffer, size)
        if result > 0:
            chunks.append(bytes(_ffi.buffer(buffer, result)))
            continue
        code = _lib.SSL_get_error(ssl, result)
        if code == _lib.SSL_ERROR_WANT_READ:
            return chunks, WANT_READ, None
        if code == _lib.SSL_ERROR_ZERO_RETURN:
            return chunks, CLEAN_CLOSE, None
        try:
            connection._raise_ssl_error(ssl, result)
        except SSL.Error as exc:
            return chunks, WANT_READ, exc
        return chunks, WANT_READ, None  # pragma: no cover - SSL_ERROR_NONE, result <= 0


def session_address(connection: SSL.Connection) -> int:
    """The address of the connection's current ``SSL_SESSION`` (0 for none), without taking a
    reference: compare it with one of a session the caller holds (whose address, held, cannot
    be reused) to learn cheaply whether a ticket replaced it."""
    if not STREAM_FAST:  # pragma: no cover - cryptography has bound these for years
        return -1
    session = _lib.SSL_get_session(connection._ssl)
    return 0 if session == _ffi.NULL else int(_ffi.cast("uintptr_t", session))


def session_address_of(session: Any) -> int:
    """The address of an ``SSL_SESSION *`` from :func:`get_session`."""
    return 0 if session is None else int(_ffi.cast("uintptr_t", session))
