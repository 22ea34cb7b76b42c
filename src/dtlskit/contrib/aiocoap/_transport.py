"""The hook into aiocoap: a ``MessageInterface`` whose datagrams travel in dtlskit sessions.

Theory of operation
-------------------

aiocoap stacks a request on three layers: a ``TokenManager`` (requests and responses), a
``MessageManager`` (CoAP message IDs, confirmable retransmission and deduplication, RFC 7252
§4) and a ``MessageInterface`` that moves encoded messages to and from *remotes*
(``EndpointAddress`` objects). CoAP over DTLS (RFC 7252 §9) is CoAP over UDP with each message
in one DTLS record, so this module only replaces the bottom layer:

* **Server side**: :func:`dtlskit.serve` with a :class:`dtlskit.SessionProtocol` (the callback
  style: no task per peer). Each session is one remote, so a new handshake from the same address
  is a new remote (RFC 7252 §9.1.2: messages of different epochs never match). Received
  messages are decoded and handed to the message manager; replies leave with
  ``channel.send_nowait``.
* **Client side**: one remote per ``(host, port, configuration)``, kept in a pool while it is
  used. The first message starts :func:`dtlskit.connect`; messages sent meanwhile wait (a few;
  CoAP retransmits confirmable ones anyway). A reader task feeds received messages to the
  message manager. A failed handshake or a lost session is handed to the message manager as
  the error of every request on that remote: aiocoap raises ``aiocoap.error.NetworkError``
  with the dtlskit exception as its ``__cause__``.
* **Ended sessions are let go.** aiocoap remembers a remote for its deduplication
  (``EXCHANGE_LIFETIME``, 247 s) long after the session ended, so a remote drops its channel
  (and with it the OpenSSL connection) as soon as the session is over: otherwise any peer
  opening and ending sessions would pin one per session for four minutes, past the server's
  ``limits.max_sessions``.
* **Who the peer is**: a remote's ``authenticated_claims`` hold a
  :class:`~dtlskit.contrib.aiocoap.CertificateClaim` (a certificate OpenSSL verified) and/or a
  :class:`~dtlskit.contrib.aiocoap.PSKClaim` (the PSK identity of the session).

What this module takes from aiocoap beyond its documented interfaces (``MessageInterface``,
``EndpointAddress``, ``MessageManager.dispatch_message/dispatch_error``, ``Message.encode/
decode``): ``Context._append_tokenmanaged_messagemanaged_transport`` (private) to stack a
``TokenManager`` and ``MessageManager`` on our interface, and, for clients given no dtlskit
configuration, ``CredentialsMap.credentials_from_request(...).as_dtls_psk()`` (the credentials
aiocoap's tinydtls transport reads). Both are kept here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiocoap import error, interfaces
from aiocoap.message import Message
from aiocoap.numbers import COAPS_PORT
from aiocoap.util import hostportjoin, hostportsplit

import dtlskit
from dtlskit.config import DTLSConfiguration
from dtlskit.exceptions import ConnectionClosedLocally, DTLSError, MessageTooLarge

from ._claims import claims_of

logger = logging.getLogger("dtlskit.coap")

ClientConfig = DTLSConfiguration | Callable[[str, int], "DTLSConfiguration | None"]
"""What a client uses for a ``coaps://host:port`` URI: one configuration for every server, or a
callable given ``(host, port)`` returning one (``None``: aiocoap's credentials, then the
system's CAs)."""

MAX_CLIENT_SESSIONS = 64
"""Client sessions a transport keeps open at once (one per server and configuration); the
least recently used one is closed to make room for another."""

MAX_WAITING_MESSAGES = 32
"""Messages a client remote keeps while its handshake runs; more are dropped (counted as
``"handshake_backlog_full"``) and confirmable ones are sent again by aiocoap's retransmission."""


class _Remote(interfaces.EndpointAddress):  # type: ignore[misc]
    """One DTLS session (or, on a client, the session being set up) seen as a CoAP remote.

    No ``__eq__``/``__hash__`` of its own: two remotes are the same only if they are the same
    object, i.e. the same session (RFC 7252 §9.1.2)."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False

    def __init__(self, transport: CoapsTransport, hostinfo: str) -> None:
        self._transport = transport
        self._hostinfo = hostinfo
        self._channel: Any = None
        self._local: tuple[Any, ...] | None = None
        self._claims: tuple[Any, ...] = ()
        self.ended = False

    # -- EndpointAddress --------------------------------------------------------------------

    @property
    def hostinfo(self) -> str:
        return self._hostinfo

    @property
    def hostinfo_local(self) -> str:
        if self._local is None:
            raise error.AnonymousHost(f"the session to {self._hostinfo} is not established yet")
        host, port = self._local
        return str(hostportjoin(host, None if port == COAPS_PORT else port))

    @property
    def uri_base(self) -> str:
        return "coaps://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        return "coaps://" + self.hostinfo_local

    @property
    def authenticated_claims(self) -> tuple[Any, ...]:
        return self._claims

    @property
    def blockwise_key(self) -> object:
        return self  # one session: blocks never combine across sessions

    # -- ours -------------------------------------------------------------------------------

    @property
    def channel(self) -> Any:
        """The dtlskit channel of this session (``None`` while a client still handshakes, and
        once the session has ended)."""
        return self._channel

    def _established(self, channel: Any) -> None:
        self._channel = channel
        self._local = tuple(channel.getsockname()[:2])
        self._claims = claims_of(channel)

    def _release(self) -> None:
        """The session is over: let its channel go (aiocoap may keep this remote for minutes)."""
        self._channel = None

    def send(self, data: bytes) -> None:
        channel = self._channel
        if self.ended or channel is None:
            self._transport._count("send_after_end" if self.ended else "not_established")
            return
        try:
            channel.send_nowait(data)
        except MessageTooLarge:  # this message only: the session goes on
            self._transport._count("message_too_large")
            logger.warning(
                "dropped a CoAP message of %d bytes to %s: larger than the session's %d-byte "
                "cleartext MTU",
                len(data),
                self._hostinfo,
                channel.cleartext_mtu,
            )
        except DTLSError as exc:
            self._transport._end(self, exc)

    def __repr__(self) -> str:
        return f"<coaps remote {self._hostinfo}{' (ended)' if self.ended else ''}>"


class _ClientRemote(_Remote):
    """A client's session to one server: connects on first use, queues until then."""

    def __init__(
        self, transport: CoapsTransport, host: str, port: int, config: DTLSConfiguration
    ) -> None:
        super().__init__(transport, str(hostportjoin(host, None if port == COAPS_PORT else port)))
        self._waiting: list[bytes] = []
        self._task = asyncio.get_running_loop().create_task(
            self._run(host, port, config), name=f"coaps session to {self.hostinfo}"
        )

    def send(self, data: bytes) -> None:
        if self._channel is None and not self.ended:
            if len(self._waiting) < MAX_WAITING_MESSAGES:
                self._waiting.append(data)
            else:
                self._transport._count("handshake_backlog_full")
            return
        super().send(data)

    async def _run(self, host: str, port: int, config: DTLSConfiguration) -> None:
        try:
            channel = await dtlskit.connect(host, port, config=config)
        except DTLSError as exc:
            logger.info("coaps handshake with %s failed: %s", self.hostinfo, exc)
            self._transport._end(self, exc)
            return
        self._established(channel)
        waiting, self._waiting = self._waiting, []
        for data in waiting:
            self.send(data)
        failure: Exception = dtlskit.ConnectionClosedByPeer(
            f"{self.hostinfo} closed the coaps session (close_notify)"
        )
        try:
            async for data in channel:
                self._transport._received(self, data)
        except DTLSError as exc:
            failure = exc
        finally:
            channel.close()
            self._channel = None
        self._transport._end(self, failure)

    def _release(self) -> None:
        if self._task.done():  # else the task lets the channel go when it ends (or _close)
            self._channel = None

    async def _close(self) -> None:
        channel = self._channel
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._channel = None
        if channel is not None:
            channel.close()
            await channel.wait_closed()


class _ServerSession(dtlskit.SessionProtocol):
    """One accepted session of a :class:`CoapsTransport` server (callback style)."""

    transport: CoapsTransport  # set on the subclass each transport makes

    def connection_made(self, channel: Any) -> None:
        host, port = channel.getpeername()[:2]
        self.remote = _Remote(self.transport, str(hostportjoin(host, port)))
        self.remote._established(channel)

    def message_received(self, data: bytes) -> None:
        self.transport._received(self.remote, data)

    def connection_lost(self, exc: DTLSError | None) -> None:
        self.transport._end(
            self.remote,
            exc or dtlskit.ConnectionClosed(f"the coaps session with {self.remote.hostinfo} ended"),
        )


class CoapsTransport(interfaces.MessageInterface):  # type: ignore[misc]
    """aiocoap's ``MessageInterface`` for ``coaps://`` on dtlskit: a server on one address
    (optional) and clients to any number of servers.

    Get it with :func:`dtlskit.contrib.aiocoap.coaps_transport`. ``server`` is the running
    :class:`dtlskit.asyncio.Server` (its ``addresses``, ``statistics()``), ``drops`` counts
    what this layer dropped, by reason.
    """

    def __init__(
        self,
        manager: Any,
        loop: asyncio.AbstractEventLoop,
        client_config: ClientConfig | None,
        client_credentials: Any,
    ) -> None:
        self._manager: Any = manager
        self._loop = loop
        self._client_config = client_config
        self._client_credentials = client_credentials
        # Client sessions, least recently used first: (host, port, configuration, remote).
        self._pool: list[tuple[str, int, DTLSConfiguration, _ClientRemote]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self.server: dtlskit.asyncio.Server | None = None
        self.drops: dict[str, int] = {}

    async def _serve(self, host: str | None, port: int, config: DTLSConfiguration) -> None:
        session = type("CoapsSession", (_ServerSession,), {"transport": self})
        self.server = await dtlskit.serve(session, host, port, config=config)

    # -- what the sessions call -------------------------------------------------------------

    def _count(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _received(self, remote: _Remote, data: bytes) -> None:
        manager = self._manager
        if manager is None:
            self._count("shut_down")
            return
        try:
            message = Message.decode(data, remote)
        except Exception:  # untrusted bytes: UnparsableMessage, but also e.g.
            # UnicodeDecodeError for a string option (Uri-Path) that is not UTF-8
            self._count("unparsable_coap_message")
            logger.debug("dropped an unparsable CoAP message from %s", remote.hostinfo)
            return
        manager.dispatch_message(message)

    def _end(self, remote: _Remote, exc: Exception) -> None:
        if remote.ended:
            return
        remote.ended = True
        remote._release()
        if isinstance(remote, _ClientRemote):
            self._pool = [entry for entry in self._pool if entry[3] is not remote]
        if self._manager is not None:
            # Not from inside a send(): aiocoap is in the middle of that request's bookkeeping.
            self._loop.call_soon(self._dispatch_error, remote, exc)

    def _dispatch_error(self, remote: _Remote, exc: Exception) -> None:
        if self._manager is not None:
            self._manager.dispatch_error(exc, remote)

    # -- MessageInterface -------------------------------------------------------------------

    def send(self, message: Any) -> None:
        message.remote.send(message.encode())

    async def recognize_remote(self, remote: object) -> bool:
        return isinstance(remote, _Remote) and remote._transport is self and not remote.ended

    async def determine_remote(self, request: Any) -> _Remote | None:
        if request.requested_scheme != "coaps":
            return None
        if self._manager is None:
            raise error.LibraryShutdown()
        if request.unresolved_remote:
            host, port = hostportsplit(request.unresolved_remote)
        elif request.opt.uri_host:
            host, port = request.opt.uri_host, request.opt.uri_port
        else:
            raise ValueError("no coaps host in the request (neither .opt.uri_host nor .remote)")
        port = port or COAPS_PORT
        config = self._config_for(host, port, request)
        for index, (pooled_host, pooled_port, pooled_config, pooled) in enumerate(self._pool):
            if (
                (pooled_host, pooled_port) == (host, port)
                and (pooled_config is config or pooled_config == config)
                and not pooled.ended
            ):
                self._pool.append(self._pool.pop(index))  # most recently used last
                return pooled
        remote = _ClientRemote(self, host, port, config)
        self._pool.append((host, port, config, remote))
        if len(self._pool) > MAX_CLIENT_SESSIONS:
            oldest = self._pool[0][3]
            self._count("client_session_evicted")
            self._end(oldest, ConnectionClosedLocally(
                f"the coaps session to {oldest.hostinfo} was closed to make room for another "
                f"(at most {MAX_CLIENT_SESSIONS} client sessions)"
            ))  # fmt: skip
            closing = self._loop.create_task(oldest._close(), name=f"closing {oldest.hostinfo}")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return remote

    def _config_for(self, host: str, port: int, request: Any) -> DTLSConfiguration:
        chosen = self._client_config
        if callable(chosen) and not isinstance(chosen, DTLSConfiguration):
            chosen = chosen(host, port)
        if isinstance(chosen, DTLSConfiguration):
            return chosen
        if chosen is not None:
            raise TypeError(f"the coaps client configuration for {host} is not a DTLSConfiguration")
        psk = self._aiocoap_psk(request)
        if psk is not None:
            return _psk_configs(psk)
        return _default_config()

    def _aiocoap_psk(self, request: Any) -> tuple[bytes, bytes] | None:
        """``(identity, key)`` from aiocoap's client credentials (``{"coaps://host/*": {"dtls":
        {"psk": ..., "client-identity": ...}}}``, as for its tinydtls transport), or None."""
        credentials = self._client_credentials
        if credentials is None:
            return None
        try:
            identity, key = credentials.credentials_from_request(request).as_dtls_psk()
        except (LookupError, AttributeError, ValueError, RuntimeError):
            return None
        return bytes(identity), bytes(key)

    async def shutdown(self) -> None:
        self._manager = None
        server, self.server = self.server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        remotes = [entry[3] for entry in self._pool]
        self._pool.clear()
        for remote in remotes:
            remote.ended = True
            await remote._close()
        for task in list(self._closing):
            await task


_PSK_CONFIGS: dict[tuple[bytes, bytes], DTLSConfiguration] = {}


def _psk_configs(psk: tuple[bytes, bytes]) -> DTLSConfiguration:
    """One configuration per aiocoap PSK credential, so that requests share a session."""
    config = _PSK_CONFIGS.get(psk)
    if config is None:
        if len(_PSK_CONFIGS) >= 64:
            _PSK_CONFIGS.clear()
        config = _PSK_CONFIGS[psk] = DTLSConfiguration.client(psk=psk)
    return config


_DEFAULT: list[DTLSConfiguration] = []


def _default_config() -> DTLSConfiguration:
    if not _DEFAULT:
        _DEFAULT.append(DTLSConfiguration.client())
    return _DEFAULT[0]


async def attach(
    context: Any,
    *,
    client_config: ClientConfig | None,
    server: tuple[str | None, int, DTLSConfiguration] | None,
) -> CoapsTransport:
    """Stack a :class:`CoapsTransport` on an aiocoap ``Context`` (its private
    ``_append_tokenmanaged_messagemanaged_transport``) and start its server, if any."""
    made: list[CoapsTransport] = []

    async def construct(manager: Any) -> CoapsTransport:
        transport = CoapsTransport(
            manager, asyncio.get_running_loop(), client_config, context.client_credentials
        )
        if server is not None:
            await transport._serve(*server)
        made.append(transport)
        return transport

    await context._append_tokenmanaged_messagemanaged_transport(construct)
    return made[0]
