"""Chapter 5: a non-blocking DTLS client and server in one thread, around one select() loop.

The C tutorial turns its sockets non-blocking and loops on select(), feeding wolfSSL whenever a
socket is readable and calling its timeout handler when select() times out. dtlskit's core
engines make that contract explicit: they never touch a socket or a clock. Each wake-up of our
loop is the same three steps, for every engine:

1. feed it: ``receive_datagram(data, now)`` for each datagram read, or ``handle_timer(now)``
   when its deadline (``get_timer()``) has passed;
2. drain its events: ``next_event()`` (handshake completed, message received, closed, ...);
3. transmit ``datagrams_to_send()`` and sleep in select() no longer than the next deadline.

Both the server (a ``ServerEngine``: cookies, one association per peer address) and the client
(a ``DTLSConnection``) run in this one thread; no call ever waits except select() itself.
(``dtlskit.asyncio`` is this same loop, written once for you.) Run it with no arguments.
"""

from __future__ import annotations

import selectors
import socket
import tempfile
import time

import dtlskit
from dtlskit.certs import create_pki
from dtlskit.core import (
    ConnectionTerminated,
    DTLSConnection,
    HandshakeCompleted,
    MessageReceived,
    ServerEngine,
    SessionClosed,
)

MESSAGES = [b"first", b"second", b"third"]
DEADLINE = 10.0  # seconds for the whole exchange: every wait in an example is bounded


def read_all(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram waiting on a non-blocking socket (returns as soon as there is none)."""
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recvfrom(65535))
        except BlockingIOError:
            return datagrams


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_config = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert)

        # Two non-blocking UDP sockets on loopback; select() watches both.
        server_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server_sock.setblocking(False)
        server_sock.bind(("127.0.0.1", 0))
        server_address = server_sock.getsockname()
        client_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client_sock.setblocking(False)
        client_sock.connect(server_address)
        selector = selectors.DefaultSelector()
        selector.register(server_sock, selectors.EVENT_READ, "server")
        selector.register(client_sock, selectors.EVENT_READ, "client")
        print(f"server: listening on {server_address[0]}:{server_address[1]} (non-blocking)")

        server = ServerEngine(server_config)
        client = DTLSConnection(
            client_config, server=False, peer_address=server_address, server_hostname="127.0.0.1"
        )
        to_send = list(MESSAGES)
        done = False
        wakeups = 0
        client.connect(time.monotonic())  # queues the ClientHello; nothing is sent yet

        start = time.monotonic()
        while not done and time.monotonic() - start < DEADLINE:
            now = time.monotonic()
            # Step 3 of the previous round (and the first ClientHello): transmit.
            for datagram, address in server.datagrams_to_send(now):
                server_sock.sendto(datagram, address)
            for datagram in client.datagrams_to_send(now):
                client_sock.send(datagram)

            # Wait for a datagram, but never past the earliest retransmission deadline.
            deadlines = [t for t in (server.get_timer(), client.get_timer()) if t is not None]
            timeout = max(0.0, min(deadlines) - now) if deadlines else 1.0
            ready = selector.select(min(timeout, 1.0))
            wakeups += 1
            now = time.monotonic()

            # Step 1: feed the engines what arrived, or tell them their timer expired.
            for key, _ in ready:
                if key.data == "server":
                    for data, address in read_all(server_sock):
                        server.receive_datagram(data, address, now)
                else:
                    for data, _address in read_all(client_sock):
                        client.receive_datagram(data, now)
            for engine in (server, client):
                deadline = engine.get_timer()
                if deadline is not None and deadline <= now:
                    engine.handle_timer(now)

            # Step 2: drain events. The server's come with the peer's address and engine.
            while (item := server.next_event()) is not None:
                address, connection, event = item
                if isinstance(event, HandshakeCompleted):
                    print(f"server: handshake with {address[0]}:{address[1]} completed")
                elif isinstance(event, MessageReceived):
                    print(f"server: echoing {event.data!r}")
                    connection.send(event.data)  # queued; transmitted at the top of the loop
                elif isinstance(event, SessionClosed):
                    print(f"server: {address[0]}:{address[1]} sent close_notify")
                    done = True
            while (news := client.next_event()) is not None:
                if isinstance(news, HandshakeCompleted):
                    print(f"client: handshake completed ({news.version}, {news.cipher})")
                elif isinstance(news, MessageReceived):
                    print(f"client: got back {news.data!r}")
                elif isinstance(news, ConnectionTerminated):
                    print(f"client: failed: {news.error}")
                    done = True
                if isinstance(news, HandshakeCompleted | MessageReceived) and not done:
                    if to_send:
                        client.send(to_send.pop(0))
                    else:
                        print("client: all replies received, closing")
                        client.close()  # queues close_notify

        # One last transmit so the server's final datagrams are not left queued, then clean up.
        for datagram, address in server.datagrams_to_send(time.monotonic()):
            server_sock.sendto(datagram, address)
        selector.close()
        server_sock.close()
        client_sock.close()
    if not done or to_send:
        print("failed: the exchange did not finish in time")
        return 1
    print(f"done: {len(MESSAGES)} messages echoed in {wakeups} wake-ups of one select() loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
