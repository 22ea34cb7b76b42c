"""Hand a not-yet-handshaken peer to another process (EdgerOS ``accept`` → ``flyAway`` →
``Dtls.createByFd``), and the plumbing both front ends share for it.

The flow::

    # main process                                # worker process
    listener = dtlskit.sync.listen_handoff(...)    handoff = dtlskit.handoff.receive(unix_sock)
    handoff = listener.accept()                    channel = dtlskit.sync.from_handoff(
    handoff.send(unix_sock)   # flyAway                handoff, config=cfg, timeout=10)
                                                   # or: await dtlskit.from_handoff(...)

A hand-off listener (``listen_handoff``, both flavours) answers ClientHellos with stateless
cookies and does no handshakes (:class:`dtlskit.core.handoff.HandoffGate`). For a peer whose
cookie verifies it opens a UDP socket bound to the same local address and port
(``SO_REUSEPORT``; on a wildcard listener, the address the client sent to, learnt from
``IP_PKTINFO``/``IPV6_PKTINFO``) and ``connect()``-ed to the peer: from then on the kernel
delivers that peer's datagrams to the new socket. :class:`Handoff` is that socket plus the
cookie-carrying ClientHello. :meth:`Handoff.send` passes both over a Unix socket
(``SCM_RIGHTS``, :func:`socket.send_fds`) and closes this process's copy (``flyAway``);
:func:`receive` (or :func:`receive_async`) takes them in the other process, checking the
message and the socket as untrusted input; ``from_handoff`` finishes the handshake there.

Races (see :mod:`dtlskit.core.handoff` for the reasoning): datagrams of other peers that land
on the new socket before its ``connect()`` are fed back to the listener; a ClientHello the peer
retransmitted before the ``connect()`` is not a second hand-off; one arriving after the
hand-off's socket went away (its worker died mid-handshake) is handed off again. In the
receiving process a *new* ClientHello from the same address and port (the client restarted)
gets a cookie exchange there; once its cookie verifies, the old session ends with
:class:`~dtlskit.exceptions.ConnectionLost` and the socket is closed, so the client's next
retransmission reaches the listener and a new hand-off. That needs the listener and the
workers to share ``cookie_secret``; the example does.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ipaddress
import os
import select
import socket
import time
import warnings
from collections import deque
from typing import Any

from ._frontend.channel_base import check_server_config
from ._frontend.sockets import format_address, size_receive_buffer, translate_os_error
from .config import DTLSConfiguration
from .core.connection import DTLSConnection
from .core.cookies import CookieJar
from .core.handoff import (
    MAX_HANDOFF_MESSAGE,
    Accepted,
    HandoffGate,
    HandoffStatistics,
    decode_handoff_untrusted,
    encode_handoff,
)
from .core.records import BadPacket, build_hello_verify_request, parse_client_hello_untrusted
from .core.server import cookie_jar_for
from .exceptions import (
    ConfigurationError,
    ConnectionLost,
    DTLSTimeoutError,
    HandshakeFailure,
    InvalidArgument,
    TransportError,
    UsageError,
)

__all__ = ["Handoff", "HandoffStatistics", "receive", "receive_async"]

Address = tuple[Any, ...]
_Socket = socket.socket  # for annotations inside Handoff, whose ``socket`` is an attribute

BATCH = 64
"""Datagrams a listener reads per wake-up."""

# Linux values where the socket module lacks the names.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_ANCILLARY = socket.CMSG_SPACE(32)
_DRAIN_LIMIT = 4096  # datagrams read back from a new socket (its receive buffer bounds them)


class Handoff:
    """A peer accepted by a hand-off listener: its connected UDP socket and the cookie-carrying
    ClientHello. Pass it on with :meth:`send` (or :meth:`detach`), or finish the handshake in
    this process with ``from_handoff``. Closing it (or dropping it) closes the socket."""

    def __init__(
        self,
        sock: socket.socket,
        local_address: Address,
        peer_address: Address,
        client_hello: bytes,
    ) -> None:
        self._sock: socket.socket | None = sock
        self.local_address = local_address
        """The listener's address and port the client sent to (the socket is bound to it)."""
        self.peer_address = peer_address
        """The client's address and port (the socket is connected to it)."""
        self.client_hello = client_hello
        """The ClientHello datagram whose cookie the listener verified."""

    @property
    def socket(self) -> _Socket:
        """The connected socket (:class:`UsageError` once sent, detached or closed)."""
        if self._sock is None:
            raise UsageError("this hand-off was sent, detached or closed: its socket is gone")
        return self._sock

    def fileno(self) -> int:
        return self.socket.fileno()

    def message(self) -> bytes:
        """The hand-off message that travels with the socket (addresses and ClientHello)."""
        return encode_handoff(self.local_address, self.peer_address, self.client_hello)

    def detach(self) -> tuple[int, bytes]:
        """EdgerOS ``flyAway``: give up the socket without closing it. Returns its file
        descriptor (now the caller's to close) and the hand-off message; this object is
        unusable after it. Rebuild it elsewhere with :meth:`from_fd`."""
        message = self.message()
        fd = self.socket.detach()
        self._sock = None
        return fd, message

    def send(self, unix_sock: _Socket) -> None:
        """Pass the socket and the message over a Unix socket (``SOCK_SEQPACKET`` or
        ``SOCK_DGRAM``, which keep message boundaries) with ``SCM_RIGHTS``, then close this
        process's copy: the peer is the receiver's from now on. Blocks until sent."""
        if unix_sock.type not in (socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
            raise InvalidArgument(
                "hand-offs travel over a SOCK_SEQPACKET or SOCK_DGRAM Unix socket"
            )
        sock = self.socket
        try:
            socket.send_fds(unix_sock, [self.message()], [sock.fileno()])
        except OSError as exc:
            raise translate_os_error(exc, "pass a hand-off of", self.peer_address) from exc
        self.close()

    def close(self) -> None:
        """Close the socket (idempotent). The peer's next datagrams reach the listener again."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Handoff:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)
            sock.close()

    def __repr__(self) -> str:
        state = "open" if self._sock is not None else "gone"
        peer, local = format_address(self.peer_address), format_address(self.local_address)
        return f"<Handoff {peer} -> {local} {state}>"

    @classmethod
    def from_fd(cls, fd: int, message: bytes) -> Handoff:
        """EdgerOS ``createByFd``'s first half: rebuild a hand-off from a file descriptor and
        its message, both received from another process and checked here as untrusted input:
        the message must parse, the descriptor must be a UDP socket of that family bound to
        the message's local port and connected to its peer. Takes ownership of ``fd`` (closed
        on failure); raises :class:`InvalidArgument` naming what is wrong."""
        try:
            parsed = decode_handoff_untrusted(message)
        except BadPacket as exc:
            os.close(fd)
            raise InvalidArgument(f"not a valid hand-off message: {exc}") from None
        try:
            sock = _Socket(fileno=fd)
        except OSError as exc:
            os.close(fd)
            raise InvalidArgument(f"the handed-off descriptor is not a socket: {exc}") from None
        try:
            family = socket.AF_INET if ":" not in parsed.peer_address[0] else socket.AF_INET6
            if sock.type != socket.SOCK_DGRAM or sock.family != family:
                raise InvalidArgument(
                    "the handed-off descriptor is not a UDP socket of the message's family"
                )
            try:
                peer = sock.getpeername()
                local = sock.getsockname()
            except OSError as exc:
                raise InvalidArgument(f"the handed-off socket is not connected: {exc}") from None
            if not _same_endpoint(peer, parsed.peer_address):
                raise InvalidArgument(
                    f"the handed-off socket is connected to {format_address(peer)}, the message "
                    f"names {format_address(parsed.peer_address)}"
                )
            if not _same_endpoint(local, parsed.local_address):
                raise InvalidArgument(
                    f"the handed-off socket is bound to {format_address(local)}, the message "
                    f"names {format_address(parsed.local_address)}"
                )
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return cls(sock, local, peer, parsed.client_hello)


def receive(unix_sock: socket.socket, timeout: float | None = None) -> Handoff:
    """Take one hand-off from a Unix socket (blocking; :class:`DTLSTimeoutError` after
    ``timeout`` seconds). A malformed one raises :class:`InvalidArgument` and is discarded
    (its descriptors closed); the next call takes the next one."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return _receive_now(unix_sock)
        except BlockingIOError:
            pass
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise DTLSTimeoutError(f"no hand-off arrived within {timeout:g} s")
        select.select([unix_sock], [], [], remaining)


async def receive_async(unix_sock: socket.socket) -> Handoff:
    """:func:`receive` for asyncio (the Unix socket is made non-blocking); wrap it in
    ``asyncio.wait_for`` for a timeout."""
    loop = asyncio.get_running_loop()
    unix_sock.setblocking(False)
    while True:
        try:
            return _receive_now(unix_sock)
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(unix_sock, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(unix_sock)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _receive_now(unix_sock: socket.socket) -> Handoff:
    """One hand-off if one is waiting (BlockingIOError otherwise)."""
    fds_size = socket.CMSG_SPACE(4 * array.array("i").itemsize)
    flags = socket.MSG_DONTWAIT | getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    try:
        message, ancillary, msg_flags, _ = unix_sock.recvmsg(
            MAX_HANDOFF_MESSAGE + 1, fds_size, flags
        )
    except (BlockingIOError, InterruptedError):
        raise BlockingIOError from None
    except OSError as exc:
        raise TransportError(exc.errno, f"cannot receive a hand-off: {exc.strerror}") from exc
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    if not message and not fds:
        if unix_sock.type == socket.SOCK_DGRAM:  # no end of stream: an empty message
            raise InvalidArgument("an empty hand-off message (discarded)")
        raise ConnectionLost("the Unix socket carrying hand-offs was closed by the other side")
    problem = None
    if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        problem = "a hand-off message or its descriptors were cut short"
    elif len(fds) != 1:
        problem = f"a hand-off message came with {len(fds)} descriptors, not 1"
    if problem is not None:
        for fd in fds:
            os.close(fd)
        raise InvalidArgument(problem)
    return Handoff.from_fd(fds[0], message)


def _same_endpoint(a: Address, b: Address) -> bool:
    try:
        return bool(
            ipaddress.ip_address(str(a[0]).split("%", 1)[0])
            == ipaddress.ip_address(str(b[0]).split("%", 1)[0])
            and a[1] == b[1]
        )
    except ValueError:
        return False


# -- the listener's I/O, shared by both flavours -------------------------------------------------


class HandoffListenerCore:
    """One listening socket and its :class:`HandoffGate`, never blocking: the flavours wait
    for readability and call :meth:`read` (blocking ``accept(timeout=)`` in
    :mod:`dtlskit.sync.handoff`, ``loop.add_reader`` in :mod:`dtlskit.asyncio.handoff`)."""

    def __init__(self, sock: socket.socket, config: DTLSConfiguration, backlog: int) -> None:
        self.sock = sock
        self.config = config
        self.gate = HandoffGate(
            cookie_jar_for(config),
            max_client_hello_size=config.limits.max_client_hello_size,
            hello_verify_per_second=config.limits.hello_verify_per_second,
        )
        self.ready: deque[Handoff] = deque()
        self._backlog = backlog
        self._closed = False
        bound = sock.getsockname()
        self._bound = bound
        self._wildcard = ipaddress.ip_address(str(bound[0]).split("%", 1)[0]).is_unspecified
        if self._wildcard:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
                with contextlib.suppress(OSError):  # dual-stack: IPv4 packets' destination
                    sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)

    @classmethod
    def bind(
        cls, host: str, port: int, config: DTLSConfiguration, backlog: int
    ) -> HandoffListenerCore:
        """A listener bound to ``host``:``port`` (an IP literal, ``""``/``"0.0.0.0"``/``"::"``
        for a wildcard) with ``SO_REUSEPORT`` (its per-peer sockets share the port)."""
        if not isinstance(config, DTLSConfiguration):
            raise ConfigurationError(
                "config must be a DTLSConfiguration (DTLSConfiguration.server())"
            )
        if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux has it
            raise ConfigurationError(
                "hand-off listeners need SO_REUSEPORT, which this platform lacks"
            )
        if not isinstance(backlog, int) or backlog < 1:
            raise InvalidArgument(f"backlog must be a positive integer, not {backlog!r}")
        host = host or "0.0.0.0"
        try:
            family = (
                socket.AF_INET6
                if ipaddress.ip_address(host.split("%", 1)[0]).version == 6
                else socket.AF_INET
            )
        except ValueError:
            raise InvalidArgument(
                f"a hand-off listener binds an IP address, not {host!r}"
            ) from None
        sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise translate_os_error(exc, "bind to", (host, port)) from exc
            size_receive_buffer(sock, config.recv_buffer_size)
            return cls(sock, config, backlog)
        except BaseException:
            sock.close()
            raise

    def getsockname(self) -> Address:
        return tuple(self._bound)

    def statistics(self) -> HandoffStatistics:
        return self.gate.statistics()

    def read(self, now: float) -> None:
        """Read up to :data:`BATCH` datagrams, answer, and open sockets for accepted peers
        (queued in :attr:`ready`)."""
        if self._closed:
            return
        gate = self.gate
        for _ in range(BATCH):
            try:
                data, ancillary, _, address = self.sock.recvmsg(65536, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                gate.seal()
                break
            except OSError:
                continue  # an ICMP error reported on the listening socket: nothing to do
            destination = self._destination(ancillary)
            accepted = gate.receive_datagram(data, address, now)
            self.flush(destination)
            if accepted is not None:
                self._take(accepted, destination, now)

    def flush(self, source: str) -> None:
        """Send the gate's HelloVerifyRequests from ``source`` (the address their ClientHellos
        were sent to: on a wildcard listener, named in an ``IP_PKTINFO`` message, or the
        kernel could pick another address of the host, which the client would ignore)."""
        ancillary = self._source_ancillary(source)
        for reply, address in self.gate.datagrams_to_send():
            with contextlib.suppress(OSError):  # a HelloVerifyRequest is best effort
                if ancillary:
                    self.sock.sendmsg([reply], ancillary, 0, address)
                else:
                    self.sock.sendto(reply, address)

    def _source_ancillary(self, source: str) -> list[tuple[int, int, bytes]]:
        if not self._wildcard:
            return []
        ip = ipaddress.ip_address(source)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            return [(socket.IPPROTO_IPV6, _IPV6_PKTINFO, ip.packed + b"\0\0\0\0")]
        v4 = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip
        packed = v4.packed if v4 is not None else ip.packed[-4:]
        return [(socket.IPPROTO_IP, _IP_PKTINFO, b"\0\0\0\0" + packed + b"\0\0\0\0")]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sock.close()
        while self.ready:
            self.ready.popleft().close()

    def _destination(self, ancillary: list[tuple[int, int, bytes]]) -> str:
        """The address the datagram was sent to (the listener's own unless it is a wildcard)."""
        if not self._wildcard:
            return str(self._bound[0])
        for level, kind, data in ancillary:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
                ip = str(ipaddress.IPv4Address(data[8:12]))  # in_pktinfo.ipi_addr
                return ip if self.sock.family == socket.AF_INET else "::ffff:" + ip
            if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(data) >= 16:
                return str(ipaddress.IPv6Address(data[:16]))  # in6_pktinfo.ipi6_addr
        return str(self._bound[0])  # pragma: no cover - the kernel always sends it when asked

    def _take(self, accepted: Accepted, destination: str, now: float) -> None:
        """Open the sockets of an accepted peer (and of any peer accepted from datagrams taken
        back from its socket: a work list, not recursion)."""
        work = [accepted]
        while work:
            self._open(work.pop(), destination, now, work)

    def _open(self, accepted: Accepted, destination: str, now: float, work: list[Accepted]) -> None:
        gate = self.gate
        if len(self.ready) >= self._backlog:
            gate.refused("accept_queue_full")  # the client retransmits; it may fit then
            return
        peer = accepted.address
        local: Address = (destination, self._bound[1])
        if self.sock.family == socket.AF_INET6:
            link_local = ipaddress.ip_address(destination).is_link_local
            scope = peer[3] if link_local and len(peer) > 3 else 0
            local = (destination, self._bound[1], 0, scope)
        try:
            sock = socket.socket(self.sock.family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        except OSError:
            gate.refused("socket_failed")
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(local)
            self._between_bind_and_connect(sock)
            sock.connect(peer)
        except OSError:
            sock.close()
            gate.refused("socket_failed")
            return
        gate.handed_off(accepted, now)
        # Before connect() the socket could be given any peer's datagram: take those back.
        # (It was bound to ``destination``, so they were all sent there.)
        for _ in range(_DRAIN_LIMIT):
            try:
                data, source = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if _same_endpoint(source, peer):
                # The peer's own retransmission: nothing has been sent to it yet.
                gate.refused("duplicate_client_hello")
                continue
            gate.returned()
            again = gate.receive_datagram(data, source, now)
            self.flush(destination)
            if again is not None:
                work.append(again)
        with contextlib.suppress(OSError):
            size_receive_buffer(sock, self.config.recv_buffer_size)
        self.ready.append(Handoff(sock, sock.getsockname(), peer, accepted.client_hello))

    def _between_bind_and_connect(self, sock: socket.socket) -> None:
        """A hook for tests of the race between ``bind()`` and ``connect()``."""


# -- the receiving side's guard, shared by both flavours -----------------------------------------


class ReconnectGuard:
    """In the receiving process: watches the handed-off socket for a *new* ClientHello from
    the same address and port (the client restarted, RFC 6347 §4.2.8) and does its cookie
    exchange; once one verifies, the session is ended (:class:`ConnectionLost`, "replaced")
    and the driver closes the socket, so that the client's next retransmission reaches the
    listener."""

    def __init__(self, engine: DTLSConnection, handoff: Handoff, cookies: CookieJar) -> None:
        self._engine = engine
        self._peer = handoff.peer_address
        self._random = parse_client_hello_untrusted(handoff.client_hello).random
        self._cookies = cookies
        self.replaced = False

    def screen(self, data: bytes, now: float) -> bytes | None:
        """None: give ``data`` to the engine. Otherwise it was taken here; send the returned
        bytes (a HelloVerifyRequest) if not empty."""
        try:
            hello = parse_client_hello_untrusted(data)
        except BadPacket:
            return None
        if hello.random == self._random:
            return None  # a retransmission of the ClientHello the session started from
        if not hello.cookie or not self._cookies.verify(
            hello.cookie, self._peer, hello.bound_fields, now
        ):
            if hello.message_sequence != 0:
                self._engine.note_drop("bad_cookie")
                return b""
            return build_hello_verify_request(
                hello, self._cookies.issue(self._peer, hello.bound_fields, now)
            )
        self.replaced = True
        self._engine.abort(
            ConnectionLost(f"replaced by a new handshake from {format_address(self._peer)}")
        )
        return b""


def prepare(
    handoff: Handoff, config: DTLSConfiguration, now: float, verify_cookie: bool | None
) -> tuple[DTLSConnection, ReconnectGuard]:
    """The receiving side's engine for a hand-off (not started), after checking its cookie
    when the configuration has a ``cookie_secret`` (or ``verify_cookie`` asks)."""
    check_server_config(config)
    cookies = cookie_jar_for(config)
    hello = parse_client_hello_untrusted(handoff.client_hello)
    check = config.cookie_secret is not None if verify_cookie is None else verify_cookie
    if check and not cookies.verify(hello.cookie, handoff.peer_address, hello.bound_fields, now):
        raise HandshakeFailure(
            f"the ClientHello handed off for {format_address(handoff.peer_address)} carries a "
            "cookie this configuration's cookie_secret does not verify (give the listener and "
            "the workers the same cookie_secret), or one that expired"
        )
    if config.idle_timeout is None:
        # As a listening server's sessions do (ServerEngine): idle peers are dropped after
        # ``limits.idle_timeout``, so a worker's memory stays bounded.
        config = config.replace(idle_timeout=config.limits.idle_timeout)
    engine = DTLSConnection(
        config, server=True, peer_address=handoff.peer_address, context=config.context(server=True)
    )
    return engine, ReconnectGuard(engine, handoff, cookies)


def may_be_client_hello(data: bytes) -> bool:
    """Cheap pre-check for :meth:`ReconnectGuard.screen`: an epoch-0 handshake record whose
    first message is a ClientHello."""
    return len(data) > 13 and data[0] == 22 and data[3:5] == b"\x00\x00" and data[13] == 1
