"""Reading a client's ALPN offer out of its Initial packets, for error messages only.

When a server refuses a client for want of a common ALPN protocol, aioquic forgets what the
client offered. To name both sides' protocols, a server connection keeps the first few
datagrams of its handshake (bounded: :data:`MAX_KEPT_BYTES`) and, only if the handshake fails
that way, decrypts them again here. Initial packets are protected with keys derived from the
client's destination connection ID and a published salt (RFC 9001 §5.2), so anyone on the path
can read them: this is no secret, and nothing here is trusted for anything but a message.

:func:`offered_alpn_untrusted` parses network bytes: it returns ``None`` for anything it cannot
read, never raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

__all__ = ["MAX_KEPT_BYTES", "MAX_KEPT_DATAGRAMS", "offered_alpn_untrusted"]

MAX_KEPT_DATAGRAMS = 4
MAX_KEPT_BYTES = 8192

_PADDING, _PING, _ACK, _ACK_ECN, _CRYPTO = 0x00, 0x01, 0x02, 0x03, 0x06


def offered_alpn_untrusted(datagrams: Sequence[bytes], cid_length: int = 8) -> list[str] | None:
    """The ALPN protocols of the ClientHello carried by these client datagrams, or None."""
    try:
        chunks: dict[int, bytes] = {}
        for datagram in datagrams:
            with contextlib.suppress(Exception):  # what follows a bad packet is not read
                _crypto_frames(datagram, cid_length, chunks)
        stream = b""
        while len(stream) in chunks:
            piece = chunks.pop(len(stream))
            if not piece:
                break
            stream += piece
        from aioquic.buffer import Buffer  # type: ignore[attr-defined]
        from aioquic.tls import pull_client_hello

        hello = pull_client_hello(Buffer(data=stream))
        return [str(name) for name in hello.alpn_protocols or []]
    except Exception:  # untrusted bytes: any failure means "could not read it"
        return None


def _crypto_frames(datagram: bytes, cid_length: int, chunks: dict[int, bytes]) -> None:
    from aioquic.buffer import Buffer  # type: ignore[attr-defined]
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicPacketType, pull_quic_header

    offset = 0
    while offset < len(datagram):
        buf = Buffer(data=datagram[offset:])
        header = pull_quic_header(buf, host_cid_length=cid_length)
        end = header.packet_length
        if header.packet_type == QuicPacketType.INITIAL and header.version is not None:
            crypto = CryptoPair()
            crypto.setup_initial(header.destination_cid, is_client=False, version=header.version)
            _, payload, _ = crypto.decrypt_packet(
                datagram[offset : offset + end], buf.tell(), 0
            )
            _read_frames(payload, chunks)
        if end <= 0 or header.version is None:
            return
        offset += end


def _read_frames(payload: bytes, chunks: dict[int, bytes]) -> None:
    from aioquic.buffer import Buffer  # type: ignore[attr-defined]

    buf = Buffer(data=payload)
    while not buf.eof():
        kind = buf.pull_uint_var()
        if kind in (_PADDING, _PING):
            continue
        if kind in (_ACK, _ACK_ECN):
            buf.pull_uint_var()  # largest acknowledged
            buf.pull_uint_var()  # delay
            ranges = buf.pull_uint_var()
            buf.pull_uint_var()  # first range
            for _ in range(min(ranges, 256) * 2):
                buf.pull_uint_var()
            if kind == _ACK_ECN:
                for _ in range(3):
                    buf.pull_uint_var()
            continue
        if kind == _CRYPTO:
            start = buf.pull_uint_var()
            length = buf.pull_uint_var()
            if len(chunks) < 64:
                chunks[start] = buf.pull_bytes(length)
            continue
        return  # any other frame: stop reading this packet
