"""Chapter 2, blocking flavour: the DTLS echo server and client with ``dtlskit.sync``.

Same exchange as ``dtls_echo.py``, written the way the C tutorials are: calls block until they
are done. ``sync.serve()`` runs the server's socket on an I/O thread and each peer's handler on a
thread of its own; ``sync.connect()`` returns after the handshake, and ``recv(timeout=...)``
waits at most that long (UDP may lose a datagram; DTLS only retransmits the handshake).

Run it with no arguments: it makes a throwaway PKI in a temporary directory.
"""

from __future__ import annotations

import tempfile
import threading

import dtlskit
import dtlskit.sync
from dtlskit.certs import create_pki


def echo(channel: dtlskit.sync.Channel) -> None:
    """Runs on a thread per peer: send every message back until the peer closes."""
    for message in channel:
        channel.send(message)
    peer = channel.getpeername()
    print(f"server: {peer[0]}:{peer[1]} closed the session")
    session_done.set()


session_done = threading.Event()  # set by the handler, so main() can wait for its last line


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_config = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert, server_hostname="localhost"
        )
        # The server is serving as soon as serve() returns; `with` closes it at the end.
        with dtlskit.sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            print(f"server: listening on 127.0.0.1:{port}")
            with dtlskit.sync.connect(
                "127.0.0.1", port, config=client_config, timeout=10
            ) as channel:
                print(f"client: connected ({channel.version}, {channel.cipher})")
                for text in ("hello, blocking DTLS", "one message per datagram", "bye"):
                    channel.send(text.encode())
                    reply = channel.recv(timeout=5)
                    print(f"client: sent {text!r}, echoed {reply.decode()!r}")
            # Leaving `with` sent close_notify; wait (bounded) until the handler saw it.
            if not session_done.wait(timeout=5):
                raise SystemExit("the server never saw the client's close_notify")
    print("done: 3 messages echoed over DTLS, blocking calls only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
