"""What the ``dtlskit`` subcommands share: usage errors, the one-line error description,
flag types and helpers, printing, and the logging flags."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from types import FrameType
from typing import Any

from OpenSSL import SSL

from ..config import DTLSConfiguration
from ..core import _verify_time
from ..exceptions import (
    CertificateVerificationError,
    ConfigurationError,
    ConnectionClosedByPeer,
    ConnectionLost,
    ConnectionRefused,
    DTLSError,
    DTLSTimeoutError,
    HandshakeFailure,
    HandshakeTimeout,
    TransportError,
    VerificationReason,
)

logger = logging.getLogger("dtlskit.cli")

DEFAULT_PORT = 4433
DEFAULT_TIMEOUT = 10.0
WILDCARDS = (None, "", "::", "0.0.0.0")


class UsageError(Exception):
    """Flags that contradict each other; reported like an argparse error (exit status 2)."""


def describe_error(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """One line naming the cause of a failure, in words, for the command line. With the
    command's ``args`` it also names the side (our certificate rejected by the server, or the
    server's rejected by us), the file involved and the flag to change."""
    if isinstance(exc, CertificateVerificationError):
        return _describe_verification(exc, args)
    if isinstance(exc, HandshakeTimeout | DTLSTimeoutError):
        hint = ""
        if _flag(args, "psk") and "different keys" in str(exc):
            hint = " (compare the HEXKEY part of --psk with the server's key for that identity)"
        return f"timed out: {exc}{hint}"
    if isinstance(exc, HandshakeFailure):
        return f"handshake failed: {exc}{_mismatch_hint(exc, args)}"
    if isinstance(exc, ConnectionRefused):
        return f"connection refused: {exc.strerror or exc}"
    if isinstance(exc, ConnectionClosedByPeer):
        return f"the peer closed the session: {exc}"
    if isinstance(exc, ConnectionLost):
        return f"connection lost: {exc}"
    if isinstance(exc, ConfigurationError):
        return f"configuration error: {exc}"
    if isinstance(exc, TransportError):
        return f"network error: {exc.strerror or exc}"
    if isinstance(exc, DTLSError):
        return str(exc)
    if isinstance(exc, SSL.Error):  # should not escape dtlskit; say what OpenSSL said anyway
        items = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        reasons = [str(item[-1]) for item in items if isinstance(item, tuple) and item]
        return f"OpenSSL: {', '.join(reasons) or exc}"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for a traceback)"


def _flag(args: argparse.Namespace | None, name: str) -> Any:
    return getattr(args, name, None) if args is not None else None


def _describe_verification(
    exc: CertificateVerificationError, args: argparse.Namespace | None
) -> str:
    reason = exc.reason
    if reason is VerificationReason.REJECTED_BY_PEER:
        cert = _flag(args, "cert")
        ours = f"our certificate {cert}" if cert else "our certificate"
        return (
            f"the server rejected {ours}: {exc} (is it issued by a CA the server trusts, its "
            "--ca, and still valid?)"
        )
    if reason is VerificationReason.CERTIFICATE_REQUIRED:
        return (
            f"the server requires a client certificate: {exc} (give --cert and --key, issued "
            "by a CA the server trusts)"
        )
    ca = _flag(args, "ca")
    hint = ""
    if reason is VerificationReason.UNKNOWN_ISSUER:
        hint = (
            f" (is --ca {ca} the CA that issued the server's certificate?)"
            if ca
            else " (no --ca given, so the system's CAs were used: give --ca with the CA that "
            "issued the server's certificate)"
        )
    elif reason in (VerificationReason.HOSTNAME_MISMATCH, VerificationReason.IP_ADDRESS_MISMATCH):
        hint = " (use --server-name with a name the certificate carries)"
    elif reason in (VerificationReason.EXPIRED, VerificationReason.NOT_YET_VALID):
        hint = " (the server's certificate, or one of its chain, is outside its validity dates)"
    return f"certificate verification failed: we rejected the server's certificate: {exc}{hint}"


def _mismatch_hint(exc: HandshakeFailure, args: argparse.Namespace | None) -> str:
    """What to change when the two sides' settings do not match (PSK, cipher suites, ALPN)."""
    alert = exc.alert or ""
    text = str(exc)
    psk = _flag(args, "psk")
    if alert == "unknown psk identity":
        return " (the server knows no such identity: check the IDENTITY part of --psk)"
    if alert in ("decrypt error", "bad record mac") and psk:
        return " (the HEXKEY part of --psk differs from the server's key for that identity)"
    if alert == "no application protocol":
        offered = _flag(args, "alpn")
        return (
            f" (the server accepts none of --alpn {' '.join(offered)}: offer one it accepts)"
            if offered
            else " (the server requires ALPN: offer a protocol it accepts with --alpn)"
        )
    if "no cipher suite in common" in text or alert in (
        "handshake failure",
        "insufficient security",
    ):
        if psk:
            return (
                " (no cipher suite in common: the server may not accept PSK clients; "
                "PSK clients offer only PSK suites)"
            )
        return (
            " (no cipher suite in common? a PSK-only server needs --psk IDENTITY:HEXKEY; "
            "a certificate server needs no --psk)"
        )
    return ""


def _setup_logging(args: argparse.Namespace) -> None:
    more = 10 * (2 if args.debug else args.verbose)
    level = max(logging.DEBUG, args.log_level - more)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )


def out(text: str = "") -> None:
    """Print a line to stdout at once (a parent process may be waiting for it)."""
    print(text, flush=True)


def with_keylog(config: DTLSConfiguration) -> DTLSConfiguration:
    """Honour SSLKEYLOGFILE (NSS key log, readable by Wireshark): debugging only. The library
    warns (logger ``dtlskit.security``, shown at the default verbosity) when it opens the file,
    and refuses a symbolic link or a file others may read."""
    path = os.environ.get("SSLKEYLOGFILE")
    if not path:
        return config
    return config.replace(keylog_file=path)


def subject(cert: Any) -> str:
    """A certificate's subject, or a note that there was none."""
    if cert is None:
        return "(none)"
    return str(cert.subject.rfc4514_string()) or "(empty subject)"


def client_command(host: str | None, port: int, flags: str) -> str:
    target = "localhost" if host in WILDCARDS else host
    return f"dtlskit client {target} {port} {flags}".rstrip()


@contextlib.contextmanager
def on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` on SIGINT/SIGTERM while the block runs; restore the handlers after it."""

    def handle(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def port_number(text: str) -> int:
    """argparse type of a UDP port number: a usage error (exit status 2) outside 0..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {port}")
    return port


def verify_time_value(text: str) -> datetime | float:
    """argparse type of ``--verify-time``: POSIX seconds, or an ISO 8601 time with its zone
    (``2026-12-03T18:00:00Z``); a usage error (exit status 2) otherwise."""
    value: datetime | float | None = None
    with contextlib.suppress(ValueError):
        value = float(text)
    if value is None:
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(text)
    if value is None:
        raise argparse.ArgumentTypeError(
            f"takes POSIX seconds or an ISO 8601 time such as 2026-12-03T18:00:00Z, not {text!r}"
        )
    if isinstance(value, datetime) and value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add one, e.g. Z for UTC")
    try:
        _verify_time.check(value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def add_verify_time_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verify-time",
        type=verify_time_value,
        metavar="TIME",
        help="check the peer's certificate dates against TIME instead of the system clock "
        "(config field verify_time): POSIX seconds or an ISO 8601 time with its zone, e.g. "
        "2026-12-03T18:00:00Z; for a device whose clock is unset or wrong (docs/iot.md)",
    )


def reject_tls_flags(args: argparse.Namespace, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value is not False and value != []:  # --verify-time 0 is given
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} has no meaning with --transport udp")


def add_transport_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=("dtls", "udp", "tls", "tcp", "quic"),
        default="dtls",
        help="dtls (default); plain udp: the same echo without any security, for comparison; "
        "tls: TLS 1.2/1.3 over TCP with the same flags (the client is interactive like "
        "openssl s_client), or plain tcp; "
        "quic: one stream per message, echoed on the same stream (needs aioquic; --alpn "
        "defaults to hq-interop and http/1.0 on a server, hq-interop on a client)",
    )


def psk_table(values: list[str] | None) -> dict[str, bytes]:
    """``IDENTITY:HEXKEY`` flags as an identity -> key table."""
    table: dict[str, bytes] = {}
    for value in values or ():
        identity, sep, hex_key = value.rpartition(":")
        if not sep or not identity:
            raise UsageError(f"--psk takes IDENTITY:HEXKEY, not {value!r}")
        try:
            key = bytes.fromhex(hex_key)
        except ValueError:
            raise UsageError(f"--psk key for {identity!r} is not hexadecimal") from None
        if not key:
            raise UsageError(f"--psk key for {identity!r} is empty")
        table[identity] = key
    return table


def print_reply(reply: bytes) -> None:
    sys.stdout.write(reply.decode("utf-8", "replace") + "\n")
    sys.stdout.flush()


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("logging")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: log the handshake (each flight sent and received, retransmissions, alerts, "
        "whether a session was resumed and why not) and the connection; -vv: also every "
        "datagram and the library's debug logs",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        help="log everything and show a traceback instead of a one-line error",
    )
    return common
