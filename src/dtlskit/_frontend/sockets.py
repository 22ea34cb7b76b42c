"""Socket plumbing shared by the asyncio and blocking front ends.

Both flavours create their UDP sockets here, bind servers by one rule (:func:`bind_udp_sockets`),
expose the same socket-level capabilities (the ``bindToDevice / setTTL / setIPv6Only /
get/setRecvBufferSize ...`` of the EdgerOS ``dtls`` module) through :class:`SocketOptions`,
and translate ``OSError`` through :func:`translate_os_error`. Worker processes are in
:mod:`dtlskit._frontend.workers`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..exceptions import ConfigurationError, ConnectionRefused, DTLSError, TransportError

_logger = logging.getLogger("dtlskit")

__all__ = [
    "MAX_BUFFER_SIZE",
    "MIN_BUFFER_SIZE",
    "SocketOptions",
    "bind_udp_sockets",
    "check_port",
    "format_address",
    "kernel_drops",
    "make_udp_socket",
    "probe_bind",
    "resolve",
    "size_receive_buffer",
    "sort_addresses",
    "translate_os_error",
]

Address = tuple[Any, ...]
AddrInfo = tuple[int, Address]

MIN_BUFFER_SIZE = 1024
MAX_BUFFER_SIZE = 16 * 1024 * 1024

_PORT_ATTEMPTS = 8
"""Tries at finding one free port for every socket of a server asked to bind port 0."""


def format_address(address: Address | None) -> str:
    """``host:port`` or ``[v6host]:port``."""
    if not address:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def check_port(port: object) -> int:
    """``port`` if it is a UDP port number; :class:`ConfigurationError` otherwise.

    getaddrinfo would silently take a port modulo 65536 (70000 becomes 4464).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be 0..65535, not {port!r}")
    return port


def sort_addresses(infos: Sequence[tuple[Any, ...]]) -> list[AddrInfo]:
    """``(family, sockaddr)`` from getaddrinfo results, duplicates removed, order kept."""
    seen: set[tuple[int, Address]] = set()
    result: list[AddrInfo] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        key = (int(family), tuple(sockaddr))
        if key not in seen:
            seen.add(key)
            result.append(key)
    return result


def resolve(
    host: str | None, port: int, *, passive: bool = False, numeric: bool = False
) -> list[AddrInfo]:
    """Blocking name resolution for UDP. Raises :class:`TransportError` naming the host.

    ``numeric`` accepts only IP address literals (no DNS query, so it never blocks).
    """
    check_port(port)
    flags = (socket.AI_PASSIVE if passive else 0) | (socket.AI_NUMERICHOST if numeric else 0)
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, socket.IPPROTO_UDP, flags)
    except socket.gaierror as exc:
        raise TransportError(exc.errno, f"cannot resolve {host!r}: {exc.strerror}") from exc
    return sort_addresses(infos)


def make_udp_socket(
    family: int,
    *,
    bind: Address | None = None,
    connect: Address | None = None,
    reuse_port: bool = False,
    ipv6_only: bool | None = None,
    blocking: bool = False,
) -> socket.socket:
    """A UDP socket, bound and/or connected. Raises :class:`TransportError` naming the address."""
    for address in (bind, connect):
        if address is not None:
            check_port(address[1])
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except OSError as exc:
        raise translate_os_error(exc, "open a socket for", bind or connect) from exc
    try:
        sock.setblocking(blocking)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise ConfigurationError("workers need SO_REUSEPORT, which this platform lacks")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and ipv6_only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ipv6_only))
        if bind is not None:
            try:
                sock.bind(bind)
            except OSError as exc:
                raise translate_os_error(exc, "bind to", bind) from exc
        if connect is not None:
            try:
                sock.connect(connect)
            except OSError as exc:
                raise translate_os_error(exc, "connect to", connect) from exc
    except BaseException:
        sock.close()
        raise
    return sock


# -- binding a server ----------------------------------------------------------------------------


def bind_udp_sockets(
    host: str | None,
    port: int,
    *,
    ipv6_only: bool | None = None,
    reuse_port: bool = False,
    resolved: Sequence[AddrInfo] | None = None,
) -> list[socket.socket]:
    """Bind the listening sockets of a server. Every dtlskit server binds by this one rule:

    * ``host`` None or ``""``: every interface, one socket per address family (``0.0.0.0``
      and, where the kernel has IPv6, ``::``). The IPv6 socket gets ``IPV6_V6ONLY=1`` so the
      two never overlap; ``ipv6_only=False`` is refused (ask for host ``"::"`` instead).
    * ``"::"`` alone: one dual-stack socket (IPv4 peers arrive IPv4-mapped) unless
      ``ipv6_only=True``.
    * any other host: one socket per resolved address; when there are several, IPv6 ones get
      ``IPV6_V6ONLY=1`` unless ``ipv6_only`` says otherwise; a single one gets ``ipv6_only``
      as given (the kernel's default when None).

    With port 0 every socket gets the port the first one got. ``resolved`` is the passive
    resolution of ``host`` already made (the asyncio flavour resolves without blocking);
    otherwise this resolves, blocking. Raises :class:`TransportError` naming the address that
    could not be bound, :class:`ConfigurationError` for an invalid port or option.
    """
    check_port(port)
    wildcard = host in (None, "")
    if wildcard and ipv6_only is False:
        raise ConfigurationError(
            "ipv6_only=False asks for one dual-stack socket: use host '::' for that (host None "
            "binds one socket per address family)"
        )
    infos = list(resolved) if resolved is not None else resolve(host or None, port, passive=True)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise TransportError(errno.EADDRNOTAVAIL, f"{host!r} resolved to no address")
    several = len(infos) > 1
    attempts = _PORT_ATTEMPTS if port == 0 and several else 1
    for attempt in range(attempts):
        try:
            return _bind_each(infos, port, wildcard, ipv6_only, several, reuse_port)
        except TransportError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _bind_each(
    infos: Sequence[AddrInfo],
    port: int,
    wildcard: bool,
    ipv6_only: bool | None,
    several: bool,
    reuse_port: bool,
) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    skipped: TransportError | None = None
    try:
        for family, address in infos:
            v6only = ipv6_only
            if family == socket.AF_INET6 and v6only is None:
                v6only = True if several else (False if address[0] == "::" else None)
            chosen = port or (int(sockets[0].getsockname()[1]) if sockets else 0)
            bind = (address[0], chosen, *address[2:])
            try:
                sock = make_udp_socket(family, bind=bind, reuse_port=reuse_port, ipv6_only=v6only)
            except TransportError as exc:
                # All interfaces on a host without IPv6 (or IPv4): the other family will do.
                if wildcard and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    skipped = exc
                    continue
                raise
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets and skipped is not None:
        raise skipped
    return sockets


def probe_bind(host: str | None, port: int, *, ipv6_only: bool | None = None) -> list[Address]:
    """Bind what ``SO_REUSEPORT`` workers will bind, close it again, and return the addresses.

    A supervisor calls it before forking, so that a port already taken (or a host that does
    not resolve) is one error in the parent rather than one traceback per worker.
    """
    sockets = bind_udp_sockets(host, port, ipv6_only=ipv6_only, reuse_port=True)
    try:
        return [tuple(sock.getsockname()) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def size_receive_buffer(sock: socket.socket, size: int | None) -> int:
    """Ask for a receive buffer of ``size`` bytes (``None``: keep the kernel's default) and
    return what the kernel granted (``SO_RCVBUF`` as read back).

    UDP has no flow control: datagrams that arrive while the buffer is full are dropped by the
    kernel. Plain ``SO_RCVBUF`` is used, never ``SO_RCVBUFFORCE`` (which would let a process
    running as root override the administrator's ``net.core.rmem_max``): when the kernel grants
    less than asked, a log line says so and how to raise the cap.
    """
    if size is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    try:
        granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError:  # pragma: no cover - every UDP socket answers it
        return 0
    if size is not None and granted < size:
        _logger.info(
            "socket receive buffer: asked for %d bytes, the kernel granted %d (raise "
            "net.core.rmem_max to allow more; datagrams arriving faster than they are read "
            "are dropped and counted in statistics().kernel_drops)",
            size,
            granted,
        )
    return granted


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on ``sock`` (receive buffer full), from the ``drops``
    column of ``/proc/net/udp`` or ``/proc/net/udp6`` matched by the socket's inode: read
    when asked, at no cost per datagram. None where that is not available."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except (OSError, ValueError):
        return None
    wanted = str(inode)
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name, encoding="ascii") as table:
                next(table, None)
                for line in table:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == wanted:
                        return int(fields[-1])
        except (OSError, ValueError):
            continue
    return None


def translate_os_error(exc: OSError, action: str, address: Address | None) -> DTLSError:
    """The dtlskit exception for a socket error, naming what was attempted and where."""
    where = format_address(address)
    code = exc.errno
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return ConnectionRefused(
            errno.ECONNREFUSED,
            f"nothing is listening at {where} (the host answered: port unreachable)",
        )
    if code == errno.EMSGSIZE:
        return TransportError(
            code, f"datagram too large for the path to {where}: lower the MTU setting"
        )
    if code == errno.EADDRINUSE:
        return TransportError(code, f"cannot {action} {where}: address already in use")
    if code in (errno.EPERM, errno.EACCES):
        return TransportError(code, f"cannot {action} {where}: permission denied")
    return TransportError(code, f"cannot {action} {where}: {exc.strerror or exc}")


class SocketOptions:
    """Socket-level capabilities shared by channels and listeners of both flavours.

    Subclasses provide :meth:`_bound_socket`. On a server-side channel the socket is the
    listening socket, shared by every peer: an option set there applies to all of them. Every
    method raises :class:`TransportError` (``EBADF``) once the socket is closed, and translates
    any other socket error: no raw ``OSError`` escapes.
    """

    _socket_owner = "channel"
    """Who owns the socket, for the message of a closed one ("the channel's socket is closed")."""

    def _bound_socket(self) -> socket.socket | None:
        """The socket the options apply to (None when there is none)."""
        raise NotImplementedError

    def _options_socket(self) -> socket.socket:
        sock = self._bound_socket()
        if sock is None or sock.fileno() < 0:
            raise TransportError(errno.EBADF, f"the {self._socket_owner}'s socket is closed")
        return sock

    def _socket_call(self, what: str, call: Callable[[socket.socket], Any]) -> Any:
        """``call(sock)``, its ``OSError`` translated into :class:`TransportError`."""
        sock = self._options_socket()
        try:
            return call(sock)
        except OSError as exc:
            where: Address | None = None
            with contextlib.suppress(OSError):
                where = tuple(sock.getsockname())
            raise translate_os_error(exc, what, where) from exc

    def _getsockopt(self, what: str, level: int, option: int) -> int:
        return int(self._socket_call(f"read {what} of", lambda s: s.getsockopt(level, option)))

    def _setsockopt(self, what: str, level: int, option: int, value: int | bytes) -> None:
        self._socket_call(f"set {what} on", lambda s: s.setsockopt(level, option, value))

    def getsockname(self) -> Address:
        """The local address of the socket."""
        return tuple(self._socket_call("read the address of", lambda s: s.getsockname()))

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._options_socket().fileno()

    def error(self) -> int:
        """The socket's pending error (``SO_ERROR``), which reading clears; 0 when none."""
        return self._getsockopt("SO_ERROR", socket.SOL_SOCKET, socket.SO_ERROR)

    def bind_to_device(self, ifname: str) -> None:
        """Send and receive only through interface ``ifname`` (``SO_BINDTODEVICE``).

        Linux requires CAP_NET_RAW; without it a :class:`TransportError` says so.
        """
        if not hasattr(socket, "SO_BINDTODEVICE"):
            raise TransportError(errno.EOPNOTSUPP, "SO_BINDTODEVICE is not supported here")
        sock = self._options_socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise TransportError(
                    exc.errno,
                    f"cannot bind to device {ifname!r}: permission denied (needs CAP_NET_RAW)",
                ) from exc
            raise TransportError(
                exc.errno, f"cannot bind to device {ifname!r}: {exc.strerror}"
            ) from exc

    def set_ttl(self, ttl: int) -> None:
        """Set the IPv4 TTL (1..255) or IPv6 hop limit (0..255) of outgoing datagrams."""
        sock = self._options_socket()
        ipv6 = sock.family == socket.AF_INET6
        low = 0 if ipv6 else 1
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not low <= ttl <= 255:
            what = "an IPv6 hop limit" if ipv6 else "an IPv4 TTL"
            raise ConfigurationError(f"{what} must be {low}..255, not {ttl!r}")
        if ipv6:
            self._setsockopt("the hop limit", socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        else:
            self._setsockopt("the TTL", socket.IPPROTO_IP, socket.IP_TTL, ttl)

    def get_ttl(self) -> int:
        """The IPv4 TTL or IPv6 hop limit of outgoing datagrams."""
        if self._options_socket().family == socket.AF_INET6:
            return self._getsockopt("the hop limit", socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
        return self._getsockopt("the TTL", socket.IPPROTO_IP, socket.IP_TTL)

    def set_ipv6_only(self, flag: bool) -> None:
        """Set ``IPV6_V6ONLY`` (an IPv6 socket then refuses IPv4-mapped peers).

        Linux only accepts this before the socket is bound; afterwards it raises
        :class:`TransportError`. Use the ``ipv6_only`` argument of serve/listen to set it early.
        """
        sock = self._options_socket()
        if sock.family != socket.AF_INET6:
            raise TransportError(errno.EINVAL, "set_ipv6_only applies to IPv6 sockets only")
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(bool(flag)))
        except OSError as exc:
            raise TransportError(
                exc.errno, f"cannot change IPV6_V6ONLY on a bound socket: {exc.strerror}"
            ) from exc

    def get_ipv6_only(self) -> bool:
        """Whether ``IPV6_V6ONLY`` is set (False for IPv4 sockets)."""
        if self._options_socket().family != socket.AF_INET6:
            return False
        return bool(self._getsockopt("IPV6_V6ONLY", socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))

    def _set_buffer(self, option: int, size: int, what: str) -> None:
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or not MIN_BUFFER_SIZE <= size <= MAX_BUFFER_SIZE
        ):
            raise ConfigurationError(
                f"{what} buffer size must be from {MIN_BUFFER_SIZE} bytes (1 KiB) to "
                f"{MAX_BUFFER_SIZE} bytes (16 MiB), not {size!r}"
            )
        self._setsockopt(f"the {what} buffer size", socket.SOL_SOCKET, option, size)

    def set_recv_buffer_size(self, size: int) -> None:
        """Set ``SO_RCVBUF`` (1 KiB..16 MiB; the kernel may double or cap it)."""
        self._set_buffer(socket.SO_RCVBUF, size, "receive")

    def get_recv_buffer_size(self) -> int:
        """``SO_RCVBUF`` as the kernel reports it."""
        return self._getsockopt("the receive buffer size", socket.SOL_SOCKET, socket.SO_RCVBUF)

    def set_send_buffer_size(self, size: int) -> None:
        """Set ``SO_SNDBUF`` (1 KiB..16 MiB; the kernel may double or cap it)."""
        self._set_buffer(socket.SO_SNDBUF, size, "send")

    def get_send_buffer_size(self) -> int:
        """``SO_SNDBUF`` as the kernel reports it."""
        return self._getsockopt("the send buffer size", socket.SOL_SOCKET, socket.SO_SNDBUF)
