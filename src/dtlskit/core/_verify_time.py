"""Device clocks: the time certificates are checked against (``DTLSConfiguration.verify_time``).

A device without a battery-backed clock boots in 1970 (or wherever its clock stopped), so every
certificate looks "not yet valid"; one whose clock drifted may call a valid certificate expired.
``verify_time`` makes OpenSSL check validity against a time the application trusts (from SNTP,
GNSS, a gateway) instead of the system clock (``X509_VERIFY_PARAM_set_time`` on each
connection). When a certificate fails on its dates, the error says which clock was used, what it
read and the certificate's validity window, so a wrong clock is seen as one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..exceptions import ConfigurationError

VerifyTime = datetime | float | Callable[[], "datetime | float"]
"""An aware ``datetime``, a POSIX timestamp (seconds), or a callable returning either, called
at the start of each handshake (e.g. a clock an SNTP client keeps)."""

#: OpenSSL's X509_V_ERR_* codes of certificate validity dates.
NOT_YET_VALID_CODES = frozenset({9, 13})  # CERT_NOT_YET_VALID, ERROR_IN_CERT_NOT_BEFORE_FIELD
EXPIRED_CODES = frozenset({10, 14})  # CERT_HAS_EXPIRED, ERROR_IN_CERT_NOT_AFTER_FIELD

#: The latest time accepted: 9999-12-31 23:59:59 UTC, the end of what ``datetime`` (and so the
#: error messages) can show; OpenSSL's ``time_t`` would overflow on values far beyond it.
MAX_TIMESTAMP = 253_402_300_799


def check(value: object) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` can be a ``verify_time``."""
    if value is None or callable(value):
        return
    _timestamp(value, "verify_time")


def resolve(value: VerifyTime) -> int:
    """The POSIX time (whole seconds) ``value`` stands for now; raises ConfigurationError."""
    if callable(value) and not isinstance(value, datetime):
        try:
            value = value()
        except Exception as exc:
            raise ConfigurationError(
                f"the verify_time callable raised {type(exc).__name__}: {exc}"
            ) from exc
        return _timestamp(value, "the value of the verify_time callable")
    return _timestamp(value, "verify_time")


def _timestamp(value: object, what: str) -> int:
    if isinstance(value, datetime):
        try:  # its tzinfo is the caller's code: it may raise anything
            offset = value.utcoffset() if value.tzinfo is not None else None
            timestamp = math.floor(value.timestamp()) if offset is not None else None
        except Exception as exc:
            raise ConfigurationError(
                f"{what}: its time zone failed ({type(exc).__name__}: {exc})"
            ) from exc
        if timestamp is None:
            raise ConfigurationError(
                f"{what} must be an aware datetime (e.g. datetime(..., tzinfo=timezone.utc)); "
                f"a naive one ({value.isoformat()}) does not say which time zone it is in"
            )
        return _in_range(timestamp, value, what)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return _in_range(math.floor(value), value, what)
    raise ConfigurationError(
        f"{what} must be an aware datetime, a POSIX timestamp or a callable returning one, "
        f"not {type(value).__name__}"
    )


def _in_range(timestamp: int, value: object, what: str) -> int:
    if timestamp < 0:
        raise ConfigurationError(f"{what} must not be before 1970, not {value!r}")
    if timestamp > MAX_TIMESTAMP:
        raise ConfigurationError(f"{what} must not be after the year 9999, not {value!r}")
    return timestamp


def describe_dates(certificate: Any, verify_timestamp: int | None) -> str:
    """Words for a certificate (``cryptography`` or pyOpenSSL) that failed on its dates: the
    clock used and what it read, and the certificate's validity window, e.g. ``"local time
    2026-12-03 15:40:00 UTC (verify_time); the certificate is valid from 2025-01-01 00:00:00
    UTC to 2026-01-01 00:00:00 UTC"``."""
    if verify_timestamp is not None:
        now = datetime.fromtimestamp(verify_timestamp, timezone.utc)
        clock = "verify_time"
    else:
        now = datetime.now(timezone.utc)  # for the message only: OpenSSL read the same clock
        clock = "system clock"
    words = f"local time {_utc(now)} ({clock})"
    try:
        if hasattr(certificate, "to_cryptography"):  # pyOpenSSL's X509 (the verify callback's)
            certificate = certificate.to_cryptography()
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    except Exception:  # pragma: no cover - a certificate cryptography cannot read the dates of
        return words
    return f"{words}; the certificate is valid from {_utc(start)} to {_utc(end)}"


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
