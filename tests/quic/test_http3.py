"""HTTP/3 GET smoke test against ngtcp2's server (Debian ``ngtcp2-server``: ``gtlsserver``,
h3 only), with aioquic's HTTP/3 layer as the client on top of our sans-I/O QUIC session."""

from __future__ import annotations

import os
import select
import shutil
import socket
import time
from typing import Any

import pytest

import dtlskit
from dtlskit.quic.sansio import client_session

from .peers import free_udp_port, running

pytestmark = pytest.mark.interop

GTLSSERVER = shutil.which("gtlsserver") or (
    "/usr/sbin/gtlsserver" if os.path.exists("/usr/sbin/gtlsserver") else None
)


def http3_get(
    port: int, cafile: str, path: str, deadline: float
) -> tuple[dict[bytes, bytes], bytes]:
    from aioquic.h3.connection import H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic import events as quic_events

    config = dtlskit.DTLSConfiguration.client(
        cafile=cafile, server_hostname="localhost", alpn_protocols=["h3"], handshake_timeout=5
    )
    address = ("127.0.0.1", port)
    headers: dict[bytes, bytes] = {}
    body = bytearray()
    done = False
    h3: list[Any] = []

    def on_event(event: Any) -> bool:
        nonlocal done
        if isinstance(event, quic_events.ProtocolNegotiated) and not h3:
            h3.append(H3Connection(session.quic))  # before any stream of the server's
            return False
        if not h3 or not isinstance(
            event, quic_events.StreamDataReceived | quic_events.StreamReset
        ):
            return False
        for h3_event in h3[0].handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                headers.update(dict(h3_event.headers))
            elif isinstance(h3_event, DataReceived):
                body.extend(h3_event.data)
                done = done or h3_event.stream_ended
        return True

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        session = client_session(config, server_name="localhost", now=time.monotonic())
        session.on_event = on_event
        session.connect(address, time.monotonic())
        sent = False
        while not done:
            now = time.monotonic()
            assert now < deadline, "no HTTP/3 response in time"
            for datagram, to in session.datagrams_to_send(now):
                sock.sendto(datagram, to)
            timer = session.get_timer()
            wait = min(deadline, timer if timer is not None else deadline) - now
            if select.select([sock], [], [], max(0.0, wait))[0]:
                while True:
                    try:
                        data, sender = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    session.receive_datagram(data, sender, time.monotonic())
            timer = session.get_timer()
            if timer is not None and timer <= time.monotonic():
                session.handle_timer(time.monotonic())
            session.check_open()
            if session.handshake_complete and not sent:
                assert session.alpn_protocol == "h3"
                stream_id = session.quic.get_next_available_stream_id()
                h3[0].send_headers(
                    stream_id,
                    [(b":method", b"GET"), (b":scheme", b"https"),
                     (b":authority", b"localhost"), (b":path", path.encode()),
                     (b"user-agent", b"dtlskit-test")],
                    end_stream=True,
                )
                sent = True
        session.close(0, "done")
        for datagram, to in session.datagrams_to_send(time.monotonic()):
            sock.sendto(datagram, to)
    return headers, bytes(body)


@pytest.mark.skipif(
    GTLSSERVER is None,
    reason="ngtcp2's gtlsserver is not installed (Debian package ngtcp2-server; .ci/run "
    "installs it)",
)
def test_http3_get_against_ngtcp2(pki, tmp_path):
    htdocs = tmp_path / "htdocs"
    htdocs.mkdir()
    content = b"hello over HTTP/3 from ngtcp2\n" * 50
    (htdocs / "index.html").write_bytes(content)
    port = free_udp_port()
    assert GTLSSERVER is not None
    with running([GTLSSERVER, "-q", "-d", str(htdocs), "127.0.0.1", str(port),
                  str(pki.server_key), str(pki.server_cert)]):
        deadline = time.monotonic() + 60
        last: Exception | None = None
        for _ in range(10):  # the server may still be starting: retry, bounded
            try:
                headers, body = http3_get(port, str(pki.ca_cert), "/index.html", deadline)
                break
            except dtlskit.HandshakeTimeout as exc:
                last = exc
        else:
            raise AssertionError(f"ngtcp2 never answered: {last}")
    assert headers[b":status"] == b"200"
    assert body == content
