"""The one place where dtlskit reaches past pyOpenSSL into the OpenSSL bindings of `cryptography`.

pyOpenSSL exposes no host name verification parameters and no verification error strings. Each
piece is looked up once with feature detection; when one is missing the caller gets a
:class:`~dtlskit.exceptions.ConfigurationError` naming it instead of an AttributeError.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..exceptions import ConfigurationError

try:  # pragma: no cover - the import itself is exercised on every run
    from cryptography.hazmat.bindings.openssl.binding import Binding as _Binding

    _lib: Any = _Binding.lib
    _ffi: Any = _Binding.ffi
except Exception:  # pragma: no cover - only on a broken cryptography install
    _lib = None
    _ffi = None

__all__ = ["has", "set_expected_peer_name", "verify_error_string"]


def has(*names: str) -> bool:
    """Whether every named OpenSSL symbol is available in the bindings."""
    return _lib is not None and all(hasattr(_lib, name) for name in names)


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


def verify_error_string(code: int) -> str:
    """OpenSSL's words for a certificate verification result code."""
    if has("X509_verify_cert_error_string"):
        text = _ffi.string(_lib.X509_verify_cert_error_string(code))
        return str(text.decode("ascii", "replace"))
    return f"certificate verification error {code}"
