"""Chapter 2: the echo server and client again, now over DTLS 1.2 with CA verification (asyncio).

The server presents a certificate issued by our own CA; the client trusts only that CA and checks
that the certificate names the host it connected to. Compared with ``udp_echo.py``:

* ``serve()`` replaces the recvfrom/sendto loop: it answers each new peer's ClientHello with a
  stateless cookie, runs the handshake, and then calls ``echo(channel)`` in a task of its own.
* ``connect()`` replaces the client socket: it returns once the handshake has completed, so the
  channel already knows the negotiated version, cipher and the server's certificate.
* Each ``send()`` is one encrypted datagram and each ``recv()`` returns one whole message.

Run it with no arguments: it makes a throwaway PKI in a temporary directory.
"""

from __future__ import annotations

import asyncio
import tempfile

import dtlskit
import dtlskit.asyncio
from dtlskit.certs import create_pki


async def echo(channel: dtlskit.asyncio.Channel) -> None:
    """One task per peer: send every message back; the loop ends when the peer closes."""
    peer = channel.getpeername()
    print(f"server: {peer[0]}:{peer[1]} connected ({channel.version}, {channel.cipher})")
    async for message in channel:
        await channel.send(message)
    print(f"server: {peer[0]}:{peer[1]} closed the session")
    sessions_done.set()


sessions_done = asyncio.Event()  # set by the handler, so main() can wait for its last line


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)  # ca.pem, server.pem/key, client.pem/key for localhost
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        # The client trusts our CA only, and checks the certificate against "localhost".
        client_config = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert, server_hostname="localhost"
        )

        async with dtlskit.asyncio.serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            print(f"server: listening on 127.0.0.1:{port}")
            async with dtlskit.asyncio.connect(
                "127.0.0.1", port, config=client_config, timeout=10
            ) as channel:
                subject = channel.peer_certificate.subject.rfc4514_string()
                print(f"client: connected, server certificate {subject} verified by our CA")
                for text in ("hello over DTLS", "this datagram is encrypted", "bye"):
                    await channel.send(text.encode())
                    reply = await asyncio.wait_for(channel.recv(), timeout=5)
                    print(f"client: sent {text!r}, echoed {reply.decode()!r}")
            # Leaving `async with` sent close_notify; wait (bounded) until the server saw it.
            await asyncio.wait_for(sessions_done.wait(), timeout=5)
    print("done: 3 messages echoed over DTLS")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
