"""Seed 001: non-blocking ``connect()`` and ``accept()`` over TCP, around dtlskit's TLS engine.

The seed's recipe, step by step, on real sockets, in one thread:

* non-blocking connect: ``connect_ex`` returns ``EINPROGRESS``; ``select`` waits until the
  socket is *writable*; ``getsockopt(SOL_SOCKET, SO_ERROR)`` tells whether the three-way
  handshake (done by the kernel) succeeded;
* non-blocking accept: ``select`` waits until the *listening* socket is readable, which means
  the kernel's completed-connection queue holds one; ``accept()`` then returns at once.

On top, the TLS handshake and three messages run through two sans-I/O
:class:`dtlskit.core.tls.TLSConnection` engines: each wake-up of the one ``select`` loop feeds
an engine what its socket read (``receive_data``), drains its events (``next_event``), writes
``data_to_send()`` and sleeps no longer than ``get_timer()``. ``dtlskit.tls`` and
``dtlskit.sync.tls`` are this loop, written once for you. Run it with no arguments.
"""

from __future__ import annotations

import errno
import select
import socket
import tempfile
import time

import dtlskit
from dtlskit.certs import create_pki
from dtlskit.core.events import HandshakeCompleted, MessageReceived, SessionClosed
from dtlskit.core.tls import TLSConnection

MESSAGES = [b"first", b"second", b"third"]
DEADLINE = 10.0  # seconds for the whole exchange: every wait in an example is bounded


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_config = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert, server_hostname="localhost"
        )
        end = time.monotonic() + DEADLINE

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setblocking(False)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = listener.getsockname()

        # -- non-blocking connect ----------------------------------------------------------
        client_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client_sock.setblocking(False)
        code = client_sock.connect_ex(address)
        print(f"client: connect() returned {errno.errorcode.get(code, code)}")
        if code not in (0, errno.EINPROGRESS):
            raise SystemExit(f"connect failed at once: {errno.errorcode.get(code, code)}")

        # -- non-blocking accept: select() on the listening socket ---------------------------
        server_sock = None
        connected = code == 0
        while server_sock is None or not connected:
            readable, writable, _ = select.select(
                [listener] if server_sock is None else [],
                [client_sock] if not connected else [],
                [],
                max(end - time.monotonic(), 0),
            )
            if not readable and not writable:
                raise SystemExit("timed out waiting for the TCP handshake")
            if listener in readable:
                server_sock, peer = listener.accept()  # returns at once: select said so
                server_sock.setblocking(False)
                print(f"server: listening socket readable; accept() gave a socket from {peer}")
            if client_sock in writable:
                error = client_sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise SystemExit(f"connect failed: {errno.errorcode.get(error, error)}")
                connected = True
                print("client: socket writable and SO_ERROR is 0: TCP connection established")
        listener.close()

        # -- TLS through two engines, one select() loop ---------------------------------------
        now = time.monotonic()
        client = TLSConnection(client_config, server=False, peer_address=address)
        server = TLSConnection(server_config, server=True, peer_address=client_sock.getsockname())
        server.start_server(now)
        client.connect(now)
        pairs = {client_sock: client, server_sock: server}
        to_send = list(MESSAGES)
        echoed: list[bytes] = []
        done = False
        while not done:
            # Step 3 of the previous wake-up: write what each engine produced.
            for sock, engine in pairs.items():
                data = engine.data_to_send()
                if data:
                    sock.sendall(data)  # small writes to a fresh socket: never would block
            timers = [t for e in pairs.values() if (t := e.get_timer()) is not None]
            wait = min([end, *timers]) - time.monotonic()
            if time.monotonic() >= end:
                raise SystemExit("the exchange took longer than the deadline")
            readable, _, _ = select.select(list(pairs), [], [], max(wait, 0))
            now = time.monotonic()
            for sock in readable:  # step 1: feed the engine
                data = sock.recv(65536)
                engine = pairs[sock]
                engine.receive_data(data, now) if data else engine.receive_eof(now)
            for engine in pairs.values():
                if (timer := engine.get_timer()) is not None and now >= timer:
                    engine.handle_timer(now)
            # Step 2: drain the events.
            while (event := server.next_event()) is not None:
                if isinstance(event, MessageReceived):
                    server.send(event.data)  # echo
                elif isinstance(event, SessionClosed):
                    print("server: the client sent close_notify; answered with ours")
                    done = True
            while (event := client.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    print(f"client: handshake completed ({event.version}, {event.cipher})")
                    client.send(to_send.pop(0))
                elif isinstance(event, MessageReceived):
                    echoed.append(event.data)
                    print(f"client: got back {event.data!r}")
                    if to_send:
                        client.send(to_send.pop(0))
                    else:
                        client.close()
                        print("client: sent close_notify")
            for engine in pairs.values():
                failed = engine.error is not None and not isinstance(
                    engine.error, dtlskit.ConnectionClosed
                )
                if failed:
                    raise SystemExit(f"the connection failed: {engine.error}")
        server_sock.sendall(server.data_to_send())  # our close_notify answer
        for sock in pairs:
            sock.close()
        assert echoed == MESSAGES
        print(f"done: {len(echoed)} messages echoed over TLS, non-blocking connect and accept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
