"""Service discovery for DTLS servers: mDNS/DNS-SD (RFC 6762, RFC 6763) with python-zeroconf.

A device advertises its running server as a DNS-SD service: ``_coaps._udp`` for CoAP over DTLS
(RFC 7252 §12.8) or ``_dtls._udp`` for anything else, with TXT records that say what to
expect: ``fp=sha256:<hex>``, the SHA-256 fingerprint of its certificate, and ``proto=dtls1.2``.
A gateway browses for the service type, resolves an instance to addresses and a port, and
connects; :func:`async_connect` / :func:`connect` then also check that the certificate the
server presented (verified against the CA as usual) is the one advertised.

mDNS is unauthenticated: anyone on the link can advertise anything. The TXT fingerprint is a
hint that lets a client notice a different device answering, never a substitute for verifying
the certificate against a CA (or a PSK).

Both flavours: ``advertise`` / ``find`` / ``browse`` / ``connect`` are blocking (zeroconf
runs its own thread); ``async_advertise`` / ``async_find`` / ``async_browse`` /
``async_connect`` are for asyncio. ``interfaces`` is zeroconf's (default: all; e.g.
``["127.0.0.1"]`` for loopback only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

import dtlskit
import dtlskit.asyncio
import dtlskit.sync
from dtlskit.config import DTLSConfiguration
from dtlskit.exceptions import CertificateVerificationError, ConfigurationError, VerificationReason

__all__ = [
    "COAPS",
    "DTLS",
    "Advertisement",
    "AsyncAdvertisement",
    "Found",
    "advertise",
    "async_advertise",
    "async_browse",
    "async_connect",
    "async_find",
    "browse",
    "certificate_fingerprint",
    "connect",
    "find",
]

COAPS = "_coaps._udp.local."
"""DNS-SD service type of CoAP over DTLS (RFC 7252 §12.8)."""
DTLS = "_dtls._udp.local."
"""DNS-SD service type for any other DTLS service."""

Interfaces = Sequence[str] | InterfaceChoice
_RESOLVE_MS = 3000


def certificate_fingerprint(certificate: x509.Certificate | str | Path) -> str:
    """SHA-256 of the DER certificate as lowercase hex; accepts a PEM file (its first
    certificate, the leaf of a chain file) or a ``cryptography`` certificate."""
    if not isinstance(certificate, x509.Certificate):
        certificate = x509.load_pem_x509_certificate(Path(certificate).read_bytes())
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class Found:
    """A resolved DNS-SD service instance."""

    name: str
    """The instance name, e.g. ``"sensor-1"`` (of ``sensor-1._coaps._udp.local.``)."""
    service_type: str
    """e.g. ``"_coaps._udp.local."``."""
    host: str
    """The target host name of its SRV record, without the final dot (``"sensor-1.local"``)."""
    addresses: tuple[str, ...]
    """Its IPv4 and IPv6 addresses."""
    port: int
    properties: Mapping[str, str] = field(default_factory=dict)
    """Its TXT record as text (keys without a value map to ``""``)."""

    @property
    def fingerprint(self) -> str | None:
        """The advertised SHA-256 certificate fingerprint (``fp=sha256:<hex>``), or None."""
        value = self.properties.get("fp", "")
        algorithm, _, digest = value.partition(":")
        return digest.lower() if algorithm.lower() == "sha256" and digest else None

    def certificate_matches(self, certificate: x509.Certificate) -> bool:
        """Whether ``certificate`` is the advertised one (False when none was advertised)."""
        return self.fingerprint is not None and self.fingerprint == certificate_fingerprint(
            certificate
        )


# -- advertising ---------------------------------------------------------------------------------


def _service_info(
    name: str,
    port: int,
    *,
    service_type: str,
    addresses: Iterable[str] | None,
    certificate: x509.Certificate | str | Path | None,
    properties: Mapping[str, str] | None,
    host: str | None,
) -> ServiceInfo:
    if not service_type.endswith("._udp.local."):
        raise ConfigurationError(
            f"service_type must be like '_coaps._udp.local.', not {service_type!r}"
        )
    if not 0 < port < 65536:
        raise ConfigurationError(f"port must be 1..65535, not {port!r}")
    txt: dict[str, str] = {"proto": "dtls1.2"}
    if certificate is not None:
        txt["fp"] = "sha256:" + certificate_fingerprint(certificate)
    txt.update(properties or {})
    packed = [ipaddress.ip_address(a).packed for a in (addresses or _local_addresses())]
    server = (host or f"{name}.local").rstrip(".") + "."
    return ServiceInfo(
        service_type,
        f"{name}.{service_type}",
        addresses=packed,
        port=port,
        properties=txt,
        server=server,
    )


def _local_addresses() -> list[str]:
    """This host's addresses for a server bound to every interface: non-loopback ones, or the
    loopback ones when there are no others."""
    import ifaddr  # a dependency of zeroconf

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            parsed = ipaddress.ip_address(address.split("%")[0])
            if not parsed.is_link_local:
                found.append(str(parsed))
    outside = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return outside or found


def server_endpoint(server: Any) -> tuple[int, list[str] | None]:
    """The port of a running dtlskit server (either flavour) and its addresses, or None for
    those when it listens on every interface."""
    addresses = list(server.addresses)
    if not addresses:
        raise ConfigurationError("the server listens on no address")
    port = int(addresses[0][1])
    specific = [a[0] for a in addresses if not ipaddress.ip_address(a[0]).is_unspecified]
    return port, specific or None


class Advertisement:
    """A service advertised with a blocking zeroconf instance; ``close()`` (or leaving the
    ``with`` block) withdraws it (a goodbye packet) and stops zeroconf."""

    def __init__(self, zeroconf: Zeroconf, info: ServiceInfo) -> None:
        self.zeroconf = zeroconf
        self.info = info
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.zeroconf.unregister_service(self.info)
        finally:
            self.zeroconf.close()

    def __enter__(self) -> Advertisement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncAdvertisement:
    """A service advertised with an asyncio zeroconf instance; ``await close()`` (or leaving
    the ``async with`` block) withdraws it."""

    def __init__(self, zeroconf: AsyncZeroconf, info: ServiceInfo) -> None:
        self.zeroconf = zeroconf
        self.info = info
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.zeroconf.async_unregister_service(self.info)
        finally:
            await self.zeroconf.async_close()

    async def __aenter__(self) -> AsyncAdvertisement:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _advertised(
    server: Any,
    name: str,
    service_type: str,
    addresses: Iterable[str] | None,
    certificate: x509.Certificate | str | Path | None,
    properties: Mapping[str, str] | None,
    host: str | None,
) -> ServiceInfo:
    port, bound = server_endpoint(server)
    if certificate is None:
        certificate = getattr(getattr(server, "_config", None), "certfile", None)
    return _service_info(
        name,
        port,
        service_type=service_type,
        addresses=addresses if addresses is not None else bound,
        certificate=certificate,
        properties=properties,
        host=host,
    )


def advertise(
    server: Any,
    name: str,
    *,
    service_type: str = COAPS,
    addresses: Iterable[str] | None = None,
    certificate: x509.Certificate | str | Path | None = None,
    properties: Mapping[str, str] | None = None,
    host: str | None = None,
    interfaces: Interfaces = InterfaceChoice.All,
) -> Advertisement:
    """Advertise a running dtlskit server (``sync.serve``/``listen`` or the asyncio ones,
    anything with ``addresses``) as ``name`` of ``service_type``, blocking until zeroconf has
    probed the name and announced it.

    ``addresses`` default to the server's own (every local address when it listens on all);
    ``certificate`` (a PEM file or a certificate; default: the server configuration's
    ``certfile``) goes into TXT as ``fp=sha256:<hex>``; ``properties`` add TXT keys; ``host``
    is the SRV target (default ``<name>.local``)."""
    info = _advertised(server, name, service_type, addresses, certificate, properties, host)
    zeroconf = Zeroconf(interfaces=interfaces, ip_version=_ip_version(info))
    try:
        zeroconf.register_service(info)
    except BaseException:
        zeroconf.close()
        raise
    return Advertisement(zeroconf, info)


async def async_advertise(
    server: Any,
    name: str,
    *,
    service_type: str = COAPS,
    addresses: Iterable[str] | None = None,
    certificate: x509.Certificate | str | Path | None = None,
    properties: Mapping[str, str] | None = None,
    host: str | None = None,
    interfaces: Interfaces = InterfaceChoice.All,
) -> AsyncAdvertisement:
    """:func:`advertise` for asyncio."""
    info = _advertised(server, name, service_type, addresses, certificate, properties, host)
    zeroconf = AsyncZeroconf(interfaces=interfaces, ip_version=_ip_version(info))
    try:
        await (await zeroconf.async_register_service(info))
    except BaseException:
        await zeroconf.async_close()
        raise
    return AsyncAdvertisement(zeroconf, info)


def _ip_version(info: ServiceInfo) -> IPVersion:
    versions = {ipaddress.ip_address(a).version for a in info.parsed_addresses()}
    if versions == {4}:
        return IPVersion.V4Only
    if versions == {6}:
        return IPVersion.V6Only
    return IPVersion.All


# -- browsing ------------------------------------------------------------------------------------


def _found(info: ServiceInfo, service_type: str) -> Found:
    properties = {
        key.decode("utf-8", "replace"): (value or b"").decode("utf-8", "replace")
        for key, value in info.properties.items()
    }
    suffix = "." + service_type
    name = info.name[: -len(suffix)] if info.name.endswith(suffix) else info.name
    return Found(
        name=name,
        service_type=service_type,
        host=(info.server or "").rstrip("."),
        addresses=tuple(info.parsed_scoped_addresses()),
        port=int(info.port or 0),
        properties=properties,
    )


_MAX_NAMES = 256  # instance names one browse keeps: anyone on the link can advertise names


class _Names:
    """Instance names a browser has seen, in order (at most ``_MAX_NAMES``; only ``only`` when
    given, so a flood of other names cannot delay finding it); waiters wake on each new one."""

    def __init__(self, only: str | None) -> None:
        self.only = only
        self.names: list[str] = []
        self.changed = threading.Event()

    def __call__(self, **kwargs: Any) -> None:
        name = kwargs["name"]
        if (
            kwargs["state_change"] is ServiceStateChange.Added
            and (self.only is None or name.lower() == self.only.lower())
            and name not in self.names
            and len(self.names) < _MAX_NAMES
        ):
            self.names.append(name)
            self.changed.set()


def browse(
    service_type: str = COAPS,
    *,
    timeout: float = 3.0,
    interfaces: Interfaces = InterfaceChoice.All,
) -> list[Found]:
    """Every instance of ``service_type`` that answers within ``timeout`` seconds, resolved
    (blocking). Browsing is a time window by nature: answers come when they come."""
    return _browse_sync(service_type, timeout, interfaces, wanted=None)


def find(
    service_type: str = COAPS,
    name: str | None = None,
    *,
    timeout: float = 10.0,
    interfaces: Interfaces = InterfaceChoice.All,
) -> Found:
    """The first instance of ``service_type`` (named ``name``, if given) to be resolved, as
    soon as it is; ``LookupError`` after ``timeout`` seconds."""
    found = _browse_sync(service_type, timeout, interfaces, wanted=name or "")
    if not found:
        raise LookupError(
            f"no {name or 'instance'} of {service_type} answered within {timeout:g} s"
        )
    return found[0]


def _resolve_budget_ms(remaining: float) -> int | None:
    """How long one resolution may take: ``_RESOLVE_MS``, but never past the caller's
    deadline (``remaining`` seconds; None once it has passed). Anyone on the link can announce
    names that never resolve; each would otherwise cost a whole ``_RESOLVE_MS`` after the
    timeout the caller asked for, and ``_MAX_NAMES`` of them minutes."""
    if remaining <= 0:
        return None
    return max(1, min(_RESOLVE_MS, int(remaining * 1000)))


def _browse_sync(
    service_type: str, timeout: float, interfaces: Interfaces, wanted: str | None
) -> list[Found]:
    zeroconf = Zeroconf(interfaces=interfaces)
    names = _Names(f"{wanted}.{service_type}" if wanted else None)
    browser = ServiceBrowser(zeroconf, service_type, handlers=[names])
    deadline = time.monotonic() + timeout
    results: dict[str, Found] = {}
    try:
        while True:
            names.changed.clear()  # before looking: a name added meanwhile wakes the wait
            for full in list(names.names):
                if full in results:
                    continue
                budget = _resolve_budget_ms(deadline - time.monotonic())
                if budget is None:
                    break
                info = zeroconf.get_service_info(service_type, full, timeout=budget)
                if info is not None:
                    found = results[full] = _found(info, service_type)
                    if wanted is not None and wanted in ("", found.name):
                        return [found]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            names.changed.wait(remaining)
    finally:
        browser.cancel()
        zeroconf.close()
    return [] if wanted is not None else list(results.values())


async def async_browse(
    service_type: str = COAPS,
    *,
    timeout: float = 3.0,
    interfaces: Interfaces = InterfaceChoice.All,
) -> list[Found]:
    """:func:`browse` for asyncio."""
    return await _browse_async(service_type, timeout, interfaces, wanted=None)


async def async_find(
    service_type: str = COAPS,
    name: str | None = None,
    *,
    timeout: float = 10.0,
    interfaces: Interfaces = InterfaceChoice.All,
) -> Found:
    """:func:`find` for asyncio."""
    found = await _browse_async(service_type, timeout, interfaces, wanted=name or "")
    if not found:
        raise LookupError(
            f"no {name or 'instance'} of {service_type} answered within {timeout:g} s"
        )
    return found[0]


async def _browse_async(
    service_type: str, timeout: float, interfaces: Interfaces, wanted: str | None
) -> list[Found]:
    loop = asyncio.get_running_loop()
    zeroconf = AsyncZeroconf(interfaces=interfaces)
    names = _Names(f"{wanted}.{service_type}" if wanted else None)
    changed = asyncio.Event()

    def on_change(**kwargs: Any) -> None:
        names(**kwargs)
        loop.call_soon_threadsafe(changed.set)

    browser = AsyncServiceBrowser(zeroconf.zeroconf, service_type, handlers=[on_change])
    deadline = loop.time() + timeout
    results: dict[str, Found] = {}
    try:
        while True:
            changed.clear()  # before looking: a name added meanwhile wakes the wait
            for full in list(names.names):
                if full in results:
                    continue
                budget = _resolve_budget_ms(deadline - loop.time())
                if budget is None:
                    break
                info = AsyncServiceInfo(service_type, full)
                if await info.async_request(zeroconf.zeroconf, budget):
                    found = results[full] = _found(info, service_type)
                    if wanted is not None and wanted in ("", found.name):
                        return [found]
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
    finally:
        await browser.async_cancel()
        await zeroconf.async_close()
    return [] if wanted is not None else list(results.values())


# -- connecting ----------------------------------------------------------------------------------


def _target(found: Found, config: DTLSConfiguration) -> tuple[str, str]:
    if not found.addresses:
        raise LookupError(f"{found.name} was resolved to no address")
    return found.addresses[0], config.server_hostname or found.host


def _check_pin(found: Found, channel: Any) -> None:
    certificate = channel.peer_certificate
    if found.fingerprint is None or certificate is None:
        return
    if not found.certificate_matches(certificate):
        channel.close()
        raise CertificateVerificationError(
            f"{found.name} ({found.addresses[0]}:{found.port}) presented a certificate with "
            f"SHA-256 {certificate_fingerprint(certificate)}, not the advertised "
            f"{found.fingerprint}",
            reason=VerificationReason.INVALID,
        )


async def async_connect(
    found: Found,
    *,
    config: DTLSConfiguration,
    check_fingerprint: bool = True,
    timeout: float | None = None,
) -> dtlskit.asyncio.Channel:
    """Connect to a found service (its first address) with :func:`dtlskit.connect`: the
    certificate is verified as ``config`` says (``server_hostname`` defaults to the SRV host
    name), then, with ``check_fingerprint``, compared with the advertised fingerprint (if one
    was advertised). Both come from the unauthenticated advertisement: where devices share a
    CA, set ``config.server_hostname`` to the name you expect (docs/iot.md)."""
    address, name = _target(found, config)
    channel = await dtlskit.connect(
        address, found.port, config=config, server_hostname=name, timeout=timeout
    )
    if check_fingerprint:
        try:
            _check_pin(found, channel)
        except CertificateVerificationError:
            await channel.wait_closed()
            raise
    return channel


def connect(
    found: Found,
    *,
    config: DTLSConfiguration,
    check_fingerprint: bool = True,
    timeout: float | None = None,
) -> dtlskit.sync.Channel:
    """:func:`async_connect` for the blocking flavour (:func:`dtlskit.sync.connect`)."""
    address, name = _target(found, config)
    channel = dtlskit.sync.connect(
        address, found.port, config=config, server_hostname=name, timeout=timeout
    )
    if check_fingerprint:
        _check_pin(found, channel)
    return channel
