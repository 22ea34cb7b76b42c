"""What a handshake negotiated: resumable sessions, ALPN, SRTP, PSK identity, exported keys.

Resumption (RFC 5077 tickets and RFC 5246 §7.3 session IDs). After a handshake a client takes
:attr:`DTLSConnection.session <NegotiatedSession.session>`, keeps it (in memory, or as bytes with
:meth:`Session.to_bytes` / :meth:`Session.save`) and offers it to a later connection with
``DTLSConnection(..., session=s)``. The server resumes it when it still knows it: by ticket (its
context's ticket keys; on by default, ``session_tickets=False`` turns tickets off) or by session ID
(its context's session cache). Both live in the server's ``SSL.Context``: every association of one
:class:`~dtlskit.core.ServerEngine` shares it, and worker processes share it when the context is
built before they fork and handed to each ``ServerEngine(config, context=ctx)``. A session the
server does not know (another server, restarted, expired) just costs a full handshake.

A :class:`Session` remembers the server name and the verification policy it was made under
(:meth:`DTLSConfiguration.verification_policy`): a connection to another name, or one that
trusts differently (another CA, stricter verify mode, hostname checking on), does not offer it,
so resumption never skips a certificate check the full handshake would have made. A resumed
client also refuses a session whose certificate OpenSSL did not verify when it was made. The
serialised form holds the session's master secret: store it like a private key, and as
carefully as the trust configuration itself.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL

from .._secrets import write_private_file
from ..exceptions import (
    ConfigurationError,
    ConnectionLost,
    DTLSError,
    HandshakeTimeout,
    InvalidArgument,
)
from . import _bindings, _verify_time
from .hibernation import Hibernated
from .state import State

if TYPE_CHECKING:
    from ..config import DTLSConfiguration

__all__ = ["NegotiatedSession", "Session"]

_MAGIC = b"dtlskit-session\x02"
_RESERVED_LABELS = (
    b"client finished",
    b"server finished",
    b"master secret",
    b"extended master secret",
    b"key expansion",
)


class Session:
    """An opaque, resumable DTLS session. Take it from a connection's ``session`` property, or
    rebuild it with :meth:`from_bytes` / :meth:`load`.

    It holds the session in its serialised form, and each connection it is offered to gets its
    own OpenSSL copy: OpenSSL marks a session object it shares "not resumable" when any
    connection using it is freed without close_notify, which would otherwise silently spoil a
    Session taken from (or offered to) a connection that later failed or was dropped.
    """

    def __init__(
        self, der: bytes, server_name: str | None = None, policy: bytes | None = None
    ) -> None:
        self._der = bytes(der)
        self.server_name = server_name
        """The server name (SNI / checked host name) the session was established for."""
        self.policy = policy
        """Digest of the verification policy it was established under (None: offered to no
        connection that verifies the server)."""

    def _ssl_session(self) -> Any:
        """A fresh ``SSL_SESSION *`` for one connection."""
        return _bindings.session_from_der(self._der)

    def __repr__(self) -> str:
        return f"<Session for {self.server_name or 'an unnamed server'}>"

    def to_bytes(self) -> bytes:
        """Serialise (includes the master secret: keep it private)."""
        name = (self.server_name or "").encode()
        policy = self.policy or b""
        return (
            _MAGIC + struct.pack("!H", len(name)) + name + bytes([len(policy)]) + policy + self._der
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        """A session from :meth:`to_bytes` output. Raises :class:`ConfigurationError`."""
        data = bytes(data)
        header = len(_MAGIC) + 2
        if not data.startswith(_MAGIC) or len(data) < header:
            raise ConfigurationError("not a serialised dtlskit session (bad header)")
        (length,) = struct.unpack("!H", data[len(_MAGIC) : header])
        if len(data) < header + length + 2:
            raise ConfigurationError("serialised dtlskit session is truncated")
        try:
            name = data[header : header + length].decode()
        except UnicodeDecodeError:
            raise ConfigurationError("serialised dtlskit session has a bad server name") from None
        offset = header + length
        policy_length = data[offset]
        policy = data[offset + 1 : offset + 1 + policy_length]
        der = data[offset + 1 + policy_length :]
        if len(policy) != policy_length or not der:
            raise ConfigurationError("serialised dtlskit session is truncated")
        _bindings.session_from_der(der)  # decodable: fail here rather than when offered
        return cls(der, name or None, policy or None)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_bytes` to ``path``: mode 0600 (whatever the old file's mode was),
        atomically (a temporary file in the same directory renamed over it: readers see the old
        session or the new one, and a failure leaves the old file), and never through a
        symbolic link (refused). Raises :class:`ConfigurationError` naming the file."""
        write_private_file(path, self.to_bytes(), "session file")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Session:
        """Read a session written by :meth:`save`. Raises :class:`ConfigurationError`."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read session file {path}: {exc.strerror}") from exc
        try:
            return cls.from_bytes(data)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: {exc}") from exc


class NegotiatedSession:
    """Engine properties describing what the handshake negotiated (mixed into DTLSConnection)."""

    __slots__ = (
        "_clock_failure",
        "_notes",
        "_policy",
        "_resume",
        "_server_name",
        "_verify_code",
        "_verify_reason",
        "_verify_timestamp",
    )

    _ssl: SSL.Connection
    _config: DTLSConfiguration
    _clock_failure: ConfigurationError | None
    _verify_code: int | None
    _verify_reason: str | None
    _verify_timestamp: int | None
    _hib: Hibernated | None
    _notes: _bindings.HandshakeNotes
    _server: bool
    _server_name: str | None
    error: DTLSError | None
    state: State

    def _setup_verification(self, server_hostname: str | None) -> None:
        """Certificate verification of the peer as the configuration asks (both engines):
        verify mode, a device clock (``verify_time``), and for a client SNI and the host
        name checked (``server_hostname``, else the configuration's)."""
        mode = self._config.effective_verify_mode(self._server)
        if mode == ssl.CERT_NONE:
            self._ssl.set_verify(SSL.VERIFY_NONE, None)
        else:
            flags = SSL.VERIFY_PEER
            if self._server and mode == ssl.CERT_REQUIRED:
                flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            self._ssl.set_verify(flags, self._verify_callback)
            if self._config.verify_time is not None:  # a device clock (docs/iot.md)
                try:
                    self._verify_timestamp = _verify_time.resolve(self._config.verify_time)
                except ConfigurationError as exc:
                    if not self._server:
                        raise
                    self._clock_failure = exc  # start_server() fails this handshake alone
                else:
                    _bindings.set_verify_time(self._ssl, self._verify_timestamp)
        if self._server:
            return
        name = server_hostname or self._config.server_hostname
        if name:
            if not _is_ip_literal(name):
                try:
                    encoded = name.encode("idna")
                    self._ssl.set_tlsext_host_name(encoded)
                except (UnicodeError, TypeError, ValueError) as exc:
                    raise ConfigurationError(
                        f"server_hostname {name!r} is not a valid host name: {exc}"
                    ) from exc
            if mode != ssl.CERT_NONE and self._config.check_hostname:
                _bindings.set_expected_peer_name(self._ssl, name)
        elif mode != ssl.CERT_NONE and self._config.check_hostname:
            raise ConfigurationError(
                "check_hostname is on but no server_hostname is known: pass server_hostname, "
                "or set check_hostname=False to accept any name the CA vouches for"
            )

    def _verify_callback(self, conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        """OpenSSL's verdict on each certificate: the first failure is kept, in words, for the
        handshake's error."""
        if not ok and self._verify_reason is None:
            subject = ""
            try:
                subject = cert.to_cryptography().subject.rfc4514_string()
            except Exception:  # pragma: no cover - a certificate pyOpenSSL cannot convert
                subject = "?"
            self._verify_reason = (
                f"{_bindings.verify_error_string(errno)} (depth {depth}, subject {subject})"
            )
            if errno in _verify_time.EXPIRED_CODES | _verify_time.NOT_YET_VALID_CODES:
                dates = _verify_time.describe_dates(cert, self._verify_timestamp)
                self._verify_reason += f": {dates}"
            self._verify_code = errno
        return bool(ok)

    @property
    def _peer_text(self) -> str:
        raise NotImplementedError  # DTLSConnection's

    def _setup_negotiation(
        self,
        server_hostname: str | None,
        alpn: Sequence[str],
        session: Session | None,
        policy: bytes | None,
    ) -> None:
        """Constructor part: notes for the callbacks; offer ``session`` if it was made for this
        name under this verification ``policy``."""
        self._notes = _bindings.attach_notes(self._ssl)
        # None: no session given; True: offered; a str: why it was not offered (for logs)
        self._resume: bool | str | None = None
        self._server_name = server_hostname
        self._policy = policy
        if not self._server:
            self._notes.alpn_offered = tuple(alpn)
        if session is None:
            return
        if self._server:
            raise ConfigurationError("session= is for client engines; servers resume on their own")
        if not isinstance(session, Session):
            raise ConfigurationError(f"session must be a dtlskit Session, not {session!r}")
        if session.server_name != server_hostname:
            self._resume = (
                f"the session was made for server name {session.server_name!r}, "
                f"not {server_hostname!r}"
            )
        elif session.policy != policy:
            self._resume = (
                "the session was made under other verification settings (verify mode, host "
                "name check, CA files or PSK identity differ), so it was not offered"
            )
        else:
            _bindings.set_session(self._ssl, session._ssl_session())
            self._resume = True

    def _resumption_note(self) -> str:
        """For logs: whether a session given to a client was resumed, and if not why."""
        if isinstance(self._resume, str):
            return f"; session not resumed: {self._resume}"
        if self._resume is None:
            return ""
        if _bindings.session_reused(self._ssl):
            return "; session resumed"
        return (
            "; session not resumed: the server started a full handshake (it no longer holds "
            "the session: restarted, another worker without shared tickets, cache expired, "
            "or its settings changed)"
        )

    def _explain_failure(self, error: DTLSError) -> DTLSError:
        """Add what only the negotiation knows to a terminal error (called on termination)."""
        if isinstance(error, HandshakeTimeout) and self._notes.psk_identity is not None:
            # DTLS drops records that fail to decrypt (RFC 6347 §4.1.2.7): with a PSK that
            # differs between the peers, each side discards the other's Finished and waits.
            return HandshakeTimeout(
                f"{error} after the PSK key exchange for identity "
                f"{self._notes.psk_identity!r}: the two sides most likely hold different keys "
                "for it (DTLS silently drops the Finished message of a peer whose PSK differs)"
            )
        if isinstance(error, ConnectionLost) and self._notes.renegotiation_refused:
            return ConnectionLost(
                f"{self._peer_text} tried to renegotiate, which this side refuses "
                f"(allow_renegotiation=False), and then ended the session: {error}",
                alert=error.alert,
            )
        return error

    @property
    def session(self) -> Session | None:
        """The session, for resuming later (clients), once the handshake has completed."""
        if self.state not in (State.ESTABLISHED, State.CLOSED):
            return None
        if self._hib is not None:
            der = self._hib.session_der
            return None if der is None else Session(der, self._server_name, self._policy)
        ssl_session = _bindings.get_session(self._ssl)
        if ssl_session is None:
            return None
        return Session(_bindings.session_to_der(ssl_session), self._server_name, self._policy)

    @property
    def peer_verified_chain(self) -> list[Any]:
        """The peer's chain as OpenSSL verified it, leaf to trusted root (``cryptography``
        certificates); empty when the peer sent none or it was not verified."""
        if self._hib is not None:
            return list(self._hib.peer_verified_chain)
        chain = self._ssl.get_verified_chain(as_cryptography=True)
        return list(chain or [])

    @property
    def alpn_protocol(self) -> str | None:
        """The application protocol agreed with ALPN (RFC 7301), or None."""
        if self._hib is not None:
            return self._hib.alpn
        selected = self._ssl.get_alpn_proto_negotiated()
        return selected.decode("utf-8", "replace") if selected else None

    @property
    def srtp_profile(self) -> str | None:
        """The SRTP protection profile agreed (RFC 5764), e.g. ``"SRTP_AES128_CM_SHA1_80"``."""
        if self._hib is not None:
            return self._hib.srtp
        profile = self._ssl.get_selected_srtp_profile()
        return profile.decode("ascii", "replace") if profile else None

    @property
    def psk_identity(self) -> str | None:
        """PSK identity in use: the one the client sent (server) or sends (client)."""
        return self._notes.psk_identity

    @property
    def psk_identity_hint(self) -> str | None:
        """Client: the PSK identity hint the server sent, if any."""
        return self._notes.psk_identity_hint

    @property
    def server_name(self) -> str | None:
        """Server: the SNI host name the client asked for. Client: the name it sent/checks."""
        if self._server:
            if self._notes.server_name is not None:
                return self._notes.server_name
            # no SNI callback installed (no sni_certificates/sni_callback): ask OpenSSL
            if self._hib is not None:
                return self._hib.server_name
            name = self._ssl.get_servername()
            return name.decode("utf-8", "replace") if name else None
        return self._server_name

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        """Keying material exported from the session (RFC 5705); both peers get the same bytes.

        ``label`` names the use (e.g. ``b"EXTRACTOR-dtls_srtp"``, RFC 5764 §4.2); ``context``
        binds it to a value both sides know. Needs an established session.
        """
        if not isinstance(label, bytes) or not label:
            raise InvalidArgument("label must be non-empty bytes")
        if not isinstance(length, int) or not 1 <= length <= 65535:
            raise InvalidArgument(f"length must be from 1 to 65535 bytes, not {length!r}")
        if context is not None and not isinstance(context, bytes):
            raise InvalidArgument("context must be bytes or None")
        if context is not None and len(context) >= 1 << 16:
            raise InvalidArgument("context must be shorter than 65536 bytes (RFC 5705 §4)")
        if label.startswith(_RESERVED_LABELS):
            # RFC 5705 §4: no collision with the TLS 1.2 handshake's own PRF labels (OpenSSL
            # refuses these too; checked here so that both paths, and hibernated sessions,
            # agree; a TLS 1.3 session, which would allow them, is refused them as well).
            raise InvalidArgument(f"OpenSSL refused to export keying material for {label!r}")
        if self.state is not State.ESTABLISHED:
            if self.error is not None:
                raise self.error
            raise ConnectionLost("keying material can be exported only after the handshake")
        if self._hib is not None:
            return self._hib.export(label, length, context)
        try:
            return bytes(self._ssl.export_keying_material(label, length, context))
        except SSL.Error as exc:
            raise InvalidArgument(
                f"OpenSSL refused to export keying material for {label!r}"
            ) from exc


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
