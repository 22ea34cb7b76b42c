"""Chapter 1: a plain UDP echo server and client, before any DTLS.

UDP has no connection and no handshake: the server reads a datagram with ``recvfrom``, which also
tells it who sent it, and answers that address with ``sendto``. The client sends a line and reads
the echo. Nothing is encrypted, and nothing is retransmitted: a lost datagram is simply gone,
which is why the client waits with a timeout.

Run it with no arguments; it uses loopback and a port the kernel picks. The next examples layer
DTLS onto exactly this exchange (``dtls_echo.py``).
"""

from __future__ import annotations

import socket
import threading

MSGLEN = 4096  # the largest datagram we read in one call


def serve(sock: socket.socket, stop: threading.Event) -> None:
    """The server loop: wait for a datagram, send it back to its sender, repeat."""
    sock.settimeout(0.2)  # wake up now and then to notice `stop`
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(MSGLEN)
        except TimeoutError:
            continue
        print(f"server: heard {len(data)} bytes from {peer[0]}:{peer[1]}: {data.decode()!r}")
        sock.sendto(data, peer)


def main() -> int:
    # 1. Create the socket (AF_INET, SOCK_DGRAM) and 2. name it: bind to a loopback address.
    #    Port 0 asks the kernel for any free port; getsockname() tells us which one.
    server_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server_sock.bind(("127.0.0.1", 0))
    address = server_sock.getsockname()
    print(f"server: waiting for datagrams on {address[0]}:{address[1]}")
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server_sock, stop), name="udp-server")
    thread.start()

    # The client: a "connected" UDP socket only remembers the peer address, so plain send/recv
    # can be used and an ICMP "port unreachable" is reported as ConnectionRefusedError.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(2.0)  # UDP gives no guarantee: never wait forever for a reply
        client.connect(address)
        for line in ("hello over plain UDP", "anyone on the path can read this", "bye"):
            client.send(line.encode())
            reply = client.recv(MSGLEN)
            print(f"client: sent {line!r}, echoed {reply.decode()!r}")

    stop.set()
    thread.join(timeout=5)
    server_sock.close()
    print("done: 3 datagrams echoed, none of them encrypted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
