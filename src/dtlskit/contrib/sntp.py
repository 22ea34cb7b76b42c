"""A small SNTP client (RFC 4330, NTPv4 packets of RFC 5905) for devices that must learn the
time before they can check a certificate.

A device without a battery-backed clock boots in 1970: every certificate is "not yet valid".
Ask an (S)NTP server for the time and hand it to dtlskit as ``verify_time``::

    clock = sntp.query("ntp.gateway.lan")          # blocking; sntp.async_query for asyncio
    config = dtlskit.DTLSConfiguration.client(cafile="ca.pem", verify_time=clock)

:class:`Clock` is callable: it returns the server's time advanced by the local monotonic clock
since the answer, so one query keeps serving later handshakes.

**Plain SNTP is unauthenticated.** Anyone on the path can answer with any time, and so make an
expired (or revoked-then-expired) certificate look valid, or a valid one look expired. The
checks here (the answer must echo our random transmit timestamp, come from the address asked,
be a server-mode packet of a synchronised server) only stop blind off-path spoofing. Where it
matters, use NTS (RFC 8915), several servers, or a time source you already trust (e.g. a
gateway reached over DTLS), and bound how far the device's clock may jump.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from dtlskit.exceptions import DTLSError, DTLSTimeoutError

__all__ = ["Clock", "SNTPError", "SNTPTimeout", "async_query", "query"]

NTP_PORT = 123
_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_PACKET = struct.Struct("!BBbb4xI4s8s8s8s8s")  # RFC 5905 §7.3 header, 48 bytes
_VERSION = 4
_MODE_CLIENT, _MODE_SERVER = 3, 4
_LEAP_UNSYNCHRONISED = 3


class SNTPError(DTLSError):
    """The time server's answer was unusable: the message names why."""


class SNTPTimeout(SNTPError, DTLSTimeoutError):
    """No usable answer arrived in time."""


@dataclass(frozen=True)
class Clock:
    """The time one SNTP answer gave, kept running with the local monotonic clock.

    Call it (``clock()``) for the current time as an aware UTC ``datetime``: pass the clock
    itself as ``DTLSConfiguration(verify_time=clock)``."""

    server_time: datetime
    """The server's time when its answer arrived, corrected by half the round trip."""
    received_monotonic: float
    """``time.monotonic()`` when the answer arrived."""
    offset: float
    """Server time minus this host's wall clock, in seconds (RFC 4330 §5)."""
    delay: float
    """Round-trip delay, in seconds."""
    stratum: int
    server: tuple[str, int]

    def __call__(self) -> datetime:
        return self.server_time + timedelta(seconds=time.monotonic() - self.received_monotonic)


def _request() -> tuple[bytes, bytes]:
    """A client-mode packet whose transmit timestamp is random (RFC 4330 §6 allows any value
    here; a random one is a nonce the answer must echo)."""
    nonce = os.urandom(8)
    zero = bytes(8)
    return _PACKET.pack(
        (_VERSION << 3) | _MODE_CLIENT, 0, 0, 0, 0, zero, zero, zero, zero, nonce
    ), nonce


def _timestamp(raw: bytes) -> float:
    """POSIX seconds of an NTP timestamp. RFC 4330 §3: seconds with the top bit set are of
    1968-2036 (era 0), without it of 2036-2104 (era 1): the 32-bit field wraps on
    2036-02-07, and a device running past that date must not read its time as 1900."""
    seconds, fraction = struct.unpack("!II", raw)
    if not seconds & 0x8000_0000:
        seconds += 2**32
    return float(seconds - _NTP_EPOCH_OFFSET + fraction / 2**32)


def _parse_untrusted(
    data: bytes, nonce: bytes, sent_wall: float, received_wall: float, received_monotonic: float,
    server: tuple[str, int],
) -> Clock:  # fmt: skip
    """A :class:`Clock` from a server's answer; :class:`SNTPError` for anything else."""
    if len(data) < _PACKET.size:
        raise SNTPError(f"{server[0]}:{server[1]} sent {len(data)} bytes, not an NTP packet")
    first, stratum, _, _, _, _, _, originate, receive, transmit = _PACKET.unpack_from(data)
    leap, mode = first >> 6, first & 7
    if originate != nonce:
        raise SNTPError(f"{server[0]}:{server[1]} answered another request (originate mismatch)")
    if mode != _MODE_SERVER:
        raise SNTPError(f"{server[0]}:{server[1]} sent mode {mode}, not a server answer (4)")
    if stratum == 0:
        code = data[12:16].decode("ascii", "replace")
        raise SNTPError(f"{server[0]}:{server[1]} sent a kiss-o'-death ({code!r})")
    if leap == _LEAP_UNSYNCHRONISED or stratum > 15:
        raise SNTPError(f"{server[0]}:{server[1]} is not synchronised (stratum {stratum})")
    if transmit == bytes(8):
        raise SNTPError(f"{server[0]}:{server[1]} sent no transmit timestamp")
    t2, t3 = _timestamp(receive), _timestamp(transmit)
    if t3 < 0:
        raise SNTPError(f"{server[0]}:{server[1]} sent a time before 1970")
    # RFC 4330 §5, with our own send/receive times (the originate field holds our nonce).
    delay = max(0.0, (received_wall - sent_wall) - (t3 - t2))
    offset = ((t2 - sent_wall) + (t3 - received_wall)) / 2
    server_time = datetime.fromtimestamp(t3 + delay / 2, timezone.utc)
    return Clock(server_time, received_monotonic, offset, delay, stratum, server)


def query(host: str, port: int = NTP_PORT, *, timeout: float = 5.0) -> Clock:
    """Ask ``host``:``port`` for the time (blocking); answers that do not match the request are
    ignored until ``timeout`` (then :class:`SNTPTimeout`)."""
    deadline = time.monotonic() + timeout
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise SNTPError(f"cannot reach {host}:{port}: {exc}") from exc
    with sock:
        packet, nonce = _request()
        sent_wall = time.time()
        try:
            sock.connect(address)
            sock.send(packet)
        except OSError as exc:
            raise SNTPError(f"cannot reach {host}:{port}: {exc}") from exc
        last: SNTPError | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data = sock.recv(512)
            except TimeoutError:
                break
            except OSError as exc:
                raise SNTPError(f"no answer from {host}:{port}: {exc}") from exc
            try:
                return _parse_untrusted(
                    data, nonce, sent_wall, time.time(), time.monotonic(), (str(address[0]), port)
                )
            except SNTPError as exc:
                last = exc
    raise SNTPTimeout(
        f"no usable SNTP answer from {host}:{port} within {timeout:g} s"
        + (f" ({last})" if last else "")
    )


class _Answer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: asyncio.Queue[bytes | OSError] = asyncio.Queue(maxsize=16)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.datagrams.full():
            self.datagrams.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and not self.datagrams.full():
            self.datagrams.put_nowait(exc)


async def async_query(host: str, port: int = NTP_PORT, *, timeout: float = 5.0) -> Clock:
    """:func:`query` for asyncio."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        transport, answer = await loop.create_datagram_endpoint(_Answer, remote_addr=(host, port))
    except OSError as exc:
        raise SNTPError(f"cannot reach {host}:{port}: {exc}") from exc
    try:
        peer = transport.get_extra_info("peername")
        packet, nonce = _request()
        sent_wall = time.time()
        transport.sendto(packet)
        last: SNTPError | None = None
        while (remaining := deadline - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(answer.datagrams.get(), remaining)
            except asyncio.TimeoutError:
                break
            if isinstance(data, OSError):
                raise SNTPError(f"no answer from {host}:{port}: {data}") from data
            try:
                return _parse_untrusted(
                    data, nonce, sent_wall, time.time(), time.monotonic(), (peer[0], port)
                )
            except SNTPError as exc:
                last = exc
    finally:
        transport.close()
    raise SNTPTimeout(
        f"no usable SNTP answer from {host}:{port} within {timeout:g} s"
        + (f" ({last})" if last else "")
    )
