"""Chapter 3: a multi-threaded DTLS server, one thread per client (``dtlskit.sync.serve``).

In the C tutorial the main thread waits for a datagram, hands the new client to a fresh pthread
and goes back to listening. ``sync.serve()`` does the same split: one I/O thread owns the UDP
socket (cookies, handshakes, demultiplexing every peer's datagrams), and each client whose
handshake completes gets a thread of its own running ``handler(channel)``. A slow client only
slows its own thread.

Here three clients, each on its own thread, talk to the server at the same time. Run it with no
arguments: it makes a throwaway PKI in a temporary directory.
"""

from __future__ import annotations

import tempfile
import threading

import dtlskit
import dtlskit.sync
from dtlskit.certs import create_pki

CLIENTS = 3
MESSAGES = 3

print_lock = threading.Lock()  # keep lines from different threads whole


def say(text: str) -> None:
    with print_lock:
        print(text, flush=True)


def handler(channel: dtlskit.sync.Channel) -> None:
    """Runs on a server thread of its own, for one client."""
    me = threading.current_thread().name  # named after the peer's address
    say(f"server [{me}]: handshake done, serving this client")
    count = 0
    for message in channel:  # ends when the client sends close_notify
        channel.send(message.upper())  # upper-case, to show the reply came from the server
        count += 1
    say(f"server [{me}]: client left after {count} messages")


def client(number: int, port: int, config: dtlskit.DTLSConfiguration, errors: list[str]) -> None:
    try:
        with dtlskit.sync.connect("127.0.0.1", port, config=config, timeout=10) as channel:
            for index in range(MESSAGES):
                channel.send(f"client {number} message {index}".encode())
                reply = channel.recv(timeout=5)
                say(f"client {number}: got {reply.decode()!r}")
    except dtlskit.DTLSError as exc:
        errors.append(f"client {number}: {exc}")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_config = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert, server_hostname="localhost"
        )
        errors: list[str] = []
        with dtlskit.sync.serve(handler, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            say(f"server: listening on 127.0.0.1:{port}, one thread per client")
            threads = [
                threading.Thread(target=client, args=(n, port, client_config, errors))
                for n in range(1, CLIENTS + 1)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            stats = server.statistics()
        # Leaving `with` closed the server: close_notify to anyone left, handler threads joined.
    if errors or any(thread.is_alive() for thread in threads):
        say(f"failed: {errors or 'a client thread is stuck'}")
        return 1
    say(f"done: {stats.handshakes_completed} clients served concurrently")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
