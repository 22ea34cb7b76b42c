"""The properties every channel reads from its engine's negotiated session, whatever the
protocol (DTLS or TLS) and the flavour (asyncio or blocking).

:class:`NegotiatedProperties` is a mixin: a channel class that keeps its engine (a
:class:`~dtlskit.core.session.NegotiatedSession`: :class:`~dtlskit.core.connection.DTLSConnection`
or :class:`~dtlskit.core.tls.TLSConnection`) in ``self._engine`` gets the properties here, each a
plain read of the engine, so every channel answers them the same way. A flavour overrides one
only where it must do more (the blocking TLS channel reads tickets that already arrived before
it answers ``session``).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..core.session import Session

__all__ = ["NegotiatedEngine", "NegotiatedProperties"]


class NegotiatedEngine(Protocol):
    """What the properties read: both engines have it."""

    @property
    def version(self) -> str | None: ...
    @property
    def cipher(self) -> str | None: ...
    @property
    def alpn_protocol(self) -> str | None: ...
    @property
    def peer_certificate(self) -> Any: ...
    @property
    def peer_certificate_chain(self) -> list[Any]: ...
    @property
    def session(self) -> Session | None: ...
    @property
    def session_reused(self) -> bool: ...
    @property
    def psk_identity(self) -> str | None: ...
    @property
    def server_name(self) -> str | None: ...
    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes: ...


class NegotiatedProperties:
    """Properties of the negotiated session, read from ``self._engine``."""

    __slots__ = ()

    _engine: NegotiatedEngine

    @property
    def version(self) -> str | None:
        """Negotiated protocol version, e.g. ``"DTLSv1.2"`` or ``"TLSv1.3"``."""
        return self._engine.version

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite (OpenSSL name)."""
        return self._engine.cipher

    @property
    def alpn_protocol(self) -> str | None:
        """The application protocol negotiated with ALPN, if any."""
        return self._engine.alpn_protocol

    @property
    def peer_certificate(self) -> Any:
        """The peer's certificate (``cryptography.x509.Certificate``), or None."""
        return self._engine.peer_certificate

    @property
    def peer_certificate_chain(self) -> list[Any]:
        """The certificates the peer sent, leaf first."""
        return self._engine.peer_certificate_chain

    @property
    def session(self) -> Session | None:
        """The negotiated session, to pass as ``connect(..., session=)`` to resume it later
        (serialisable with ``to_bytes()`` / ``save(path)``); None before the handshake. Over
        TLS 1.3 the newest one: tickets arrive after the handshake and are read with the
        data."""
        return self._engine.session

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        return self._engine.session_reused

    @property
    def psk_identity(self) -> str | None:
        """The PSK identity of the session: the one the client sent (server side) or sends
        (client side); None for certificate suites."""
        return self._engine.psk_identity

    @property
    def server_name(self) -> str | None:
        """Server side: the host name the client asked for with SNI (None if it sent none).
        Client side: the name it sent and checks the certificate against."""
        return self._engine.server_name

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        """``length`` bytes of keying material exported from the session (RFC 5705, RFC 8446
        §7.5); both peers get the same bytes for the same ``label`` and ``context``.

        ``label`` names the use (e.g. ``b"EXTRACTOR-dtls_srtp"``, RFC 5764 §4.2); ``context``
        binds it to a value both sides know. Once the session has ended, raises the error
        that ended it.
        """
        return self._engine.export_keying_material(label, length, context)
