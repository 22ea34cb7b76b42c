"""Socket plumbing shared by the asyncio and blocking front ends.

Both flavours create their UDP sockets here, expose the same socket-level capabilities (the
``bindToDevice / setTTL / setIPv6Only / get/setRecvBufferSize ...`` of the EdgerOS ``dtls``
module) through :class:`SocketOptions`, translate ``OSError`` through :func:`translate_os_error`,
and fork ``SO_REUSEPORT`` workers through :func:`run_workers`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .exceptions import ConfigurationError, ConnectionRefused, DTLSError, TransportError

__all__ = [
    "MAX_BUFFER_SIZE",
    "MIN_BUFFER_SIZE",
    "SocketOptions",
    "format_address",
    "make_udp_socket",
    "resolve",
    "run_workers",
    "sort_addresses",
    "translate_os_error",
]

Address = tuple[Any, ...]
AddrInfo = tuple[int, Address]

MIN_BUFFER_SIZE = 1024
MAX_BUFFER_SIZE = 16 * 1024 * 1024


def format_address(address: Address | None) -> str:
    """``host:port`` or ``[v6host]:port``."""
    if not address:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


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


def resolve(host: str | None, port: int, *, passive: bool = False) -> list[AddrInfo]:
    """Blocking name resolution for UDP. Raises :class:`TransportError` naming the host."""
    flags = socket.AI_PASSIVE if passive else 0
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
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
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

    Subclasses provide :meth:`_options_socket`. On a server-side channel the socket is the
    listening socket, shared by every peer: an option set there applies to all of them.
    """

    def _options_socket(self) -> socket.socket:
        raise NotImplementedError

    def getsockname(self) -> Address:
        """The local address of the socket."""
        return tuple(self._options_socket().getsockname())

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._options_socket().fileno()

    def error(self) -> int:
        """The socket's pending error (``SO_ERROR``), which reading clears; 0 when none."""
        return int(self._options_socket().getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def bind_to_device(self, ifname: str) -> None:
        """Send and receive only through interface ``ifname`` (``SO_BINDTODEVICE``).

        Linux requires CAP_NET_RAW; without it a :class:`TransportError` says so.
        """
        if not hasattr(socket, "SO_BINDTODEVICE"):
            raise TransportError(errno.EOPNOTSUPP, "SO_BINDTODEVICE is not supported here")
        try:
            self._options_socket().setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode()
            )
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
        """Set the IPv4 TTL or IPv6 hop limit of outgoing datagrams (0..255)."""
        if not isinstance(ttl, int) or not 0 <= ttl <= 255:
            raise ConfigurationError(f"TTL must be an integer from 0 to 255, not {ttl!r}")
        sock = self._options_socket()
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)

    def get_ttl(self) -> int:
        """The IPv4 TTL or IPv6 hop limit of outgoing datagrams."""
        sock = self._options_socket()
        if sock.family == socket.AF_INET6:
            return int(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS))
        return int(sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL))

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
        sock = self._options_socket()
        if sock.family != socket.AF_INET6:
            return False
        return bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))

    def _set_buffer(self, option: int, size: int, what: str) -> None:
        if not isinstance(size, int) or not MIN_BUFFER_SIZE <= size <= MAX_BUFFER_SIZE:
            raise ConfigurationError(
                f"{what} buffer size must be from {MIN_BUFFER_SIZE} bytes (1 KiB) to "
                f"{MAX_BUFFER_SIZE} bytes (16 MiB), not {size!r}"
            )
        self._options_socket().setsockopt(socket.SOL_SOCKET, option, size)

    def set_recv_buffer_size(self, size: int) -> None:
        """Set ``SO_RCVBUF`` (1 KiB..16 MiB; the kernel may double or cap it)."""
        self._set_buffer(socket.SO_RCVBUF, size, "receive")

    def get_recv_buffer_size(self) -> int:
        """``SO_RCVBUF`` as the kernel reports it."""
        return int(self._options_socket().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def set_send_buffer_size(self, size: int) -> None:
        """Set ``SO_SNDBUF`` (1 KiB..16 MiB; the kernel may double or cap it)."""
        self._set_buffer(socket.SO_SNDBUF, size, "send")

    def get_send_buffer_size(self) -> int:
        """``SO_SNDBUF`` as the kernel reports it."""
        return int(self._options_socket().getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def run_workers(count: int, run_one: Callable[[int], None]) -> int:
    """Fork ``count`` worker processes each running ``run_one(index)``; wait for all.

    Call it before any thread or event loop exists (fork copies only the calling thread). Build
    the OpenSSL context and cookie secret first: the children inherit them, so session tickets
    and cookies issued by one worker are accepted by every other. SIGINT and SIGTERM received
    by the parent are forwarded to every worker. Returns 0 if every worker exited 0, else 1.
    """
    if count < 1:
        raise ConfigurationError(f"workers must be at least 1, not {count}")
    if not hasattr(os, "fork"):
        raise ConfigurationError("workers need os.fork, which this platform lacks")
    children: list[int] = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the worker tests
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                run_one(index)
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        children.append(pid)

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for child in children:
            while True:
                try:
                    _, raw = os.waitpid(child, 0)
                except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                    continue
                break
            if os.waitstatus_to_exitcode(raw) != 0:
                status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
