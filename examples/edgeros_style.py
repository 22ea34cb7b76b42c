"""The EdgerOS / JSRE ``dtls`` module's model in Python: listen, accept, recv with a timeout.

The EdgerOS API has no callbacks in its synchronous mode: ``Dtls.createServer(opt, saddr)``
makes a listening object, ``server.accept(remote, timeout)`` returns the next client whose
handshake completed, and ``client.recv(buffer, offset, length, timeout)`` fills a buffer. The
same calls in ``dtlskit.sync``:

=======================================  ===================================================
EdgerOS ``dtls``                          dtlskit
=======================================  ===================================================
``Dtls.createServer(opt, saddr)``        ``sync.listen(host, port, config=...)``
``Dtls.createClient(opt, saddr, tmo)``   ``sync.connect(host, port, config=..., timeout=)``
``server.accept(undefined, tmo)``        ``listener.accept(timeout=)``
``client.recv(buf, off, len, tmo)``      ``channel.recv_into(buf, offset=, length=, timeout=)``
``pending() / peerName() / sockName()``  ``pending() / getpeername() / getsockname()``
``opt.ca / cert / key``                  ``DTLSConfiguration(cafile=, certfile=, keyfile=)``
=======================================  ===================================================

Here a server "task" (a thread) accepts two clients one after the other. Run it with no
arguments: it makes a throwaway PKI in a temporary directory.
"""

from __future__ import annotations

import tempfile
import threading

import dtlskit
import dtlskit.sync
from dtlskit.certs import create_pki


def server_task(listener: dtlskit.sync.Listener, stop: threading.Event) -> None:
    buffer = bytearray(4096)  # one receive buffer, reused, as in the EdgerOS examples
    while not stop.is_set():
        try:
            client = listener.accept(timeout=0.5)  # server.accept(undefined, 500)
        except dtlskit.DTLSTimeoutError:
            continue  # nobody yet: check `stop`, then wait again
        except dtlskit.ConnectionClosed:
            break  # the listener was closed
        with client:
            host, port = client.getpeername()[:2]
            print(f"server: new client {host}:{port}")
            while True:
                try:
                    size = client.recv_into(buffer, offset=0, length=len(buffer), timeout=5)
                except dtlskit.DTLSTimeoutError:
                    print("server: client idle for 5 s, dropping it")
                    break
                except dtlskit.ConnectionClosedByPeer:
                    print(f"server: client {host}:{port} closed the session")
                    break
                text = buffer[:size].decode()
                print(f"server: client says {text!r} ({client.pending()} more waiting)")
                client.send(buffer[:size])


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        server_options = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_options = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert, server_hostname="localhost"
        )
        stop = threading.Event()
        with dtlskit.sync.listen("127.0.0.1", 0, config=server_options) as listener:
            host, port = listener.getsockname()[:2]
            print(f"server: listening on {host}:{port}")
            task = threading.Thread(target=server_task, args=(listener, stop), name="server")
            task.start()
            for number in (1, 2):
                # Dtls.createClient(opt, saddr, 5000): the handshake must finish within 5 s.
                with dtlskit.sync.connect(
                    "127.0.0.1", port, config=client_options, timeout=5
                ) as client:
                    print(f"client {number}: connected from port {client.getsockname()[1]}")
                    for word in ("ping", "pong"):
                        client.send(f"{word} from client {number}".encode())
                        reply = client.recv(timeout=5)
                        print(f"client {number}: echoed {reply.decode()!r}")
            stop.set()
            task.join(timeout=10)
    if task.is_alive():
        print("failed: the server task did not stop")
        return 1
    print("done: 2 clients accepted, 4 messages echoed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
