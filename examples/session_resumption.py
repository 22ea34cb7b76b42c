"""Chapter 4: session resumption. Reconnect with the session of an earlier connection.

A full DTLS handshake costs two round trips plus the server's public-key work. After a first
connection, the client keeps its session (``channel.session``); offering it on the next
connection lets the server skip the certificate exchange and key agreement (RFC 5077 session
tickets, or the server's session cache) and ``channel.session_reused`` says it did.

A session can outlive the process: ``session.save(path)`` and ``Session.load(path)`` (or
``to_bytes``/``from_bytes``). The saved form holds the session's master secret: keep it as
private as a key file. The command line does the same with ``dtlskit client --session-file F``,
shown last. Run it with no arguments: it makes a throwaway PKI in a temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dtlskit
import dtlskit.sync
from dtlskit.certs import create_pki
from dtlskit.core.session import Session


def echo(channel: dtlskit.sync.Channel) -> None:
    for message in channel:
        channel.send(message)


def talk(
    port: int, config: dtlskit.DTLSConfiguration, session: Session | None
) -> tuple[Session | None, bool]:
    """Connect (offering ``session`` if any) and echo one message; return the session to keep
    and whether this connection resumed the one offered."""
    started = time.perf_counter()
    with dtlskit.sync.connect(
        "127.0.0.1", port, config=config, timeout=10, session=session
    ) as channel:
        elapsed = 1000 * (time.perf_counter() - started)
        reused = channel.session_reused
        print(f"client: connected in {elapsed:.1f} ms, session_reused={reused}")
        channel.send(b"hello again")
        print(f"client: echoed {channel.recv(timeout=5)!r}")
        return channel.session, reused


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_config = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert, server_hostname="localhost"
        )
        with dtlskit.sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            print(f"server: listening on 127.0.0.1:{port}")

            print("first connection:")
            session, _ = talk(port, client_config, None)
            if session is None:
                print("failed: the server gave no resumable session")
                return 1

            # Keep the session the way a device would between runs: in a private file.
            path = Path(tmp) / "session.bin"
            session.save(path)
            print(f"client: saved {session!r} to {path.name} ({path.stat().st_size} bytes)")

            print("second connection, offering the saved session:")
            _, reused = talk(port, client_config, Session.load(path))

            print("the same from the command line, twice with one --session-file:")
            cli_file = Path(tmp) / "cli-session.bin"
            for run in (1, 2):
                result = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "dtlskit",
                        "client",
                        "127.0.0.1",
                        str(port),
                        "--ca",
                        str(pki.ca_cert),
                        "--server-name",
                        "localhost",
                        "--session-file",
                        str(cli_file),
                        "-m",
                        f"run {run}",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                print(f"dtlskit client (run {run}): {result.stdout.splitlines()[:1]}")
    if reused:
        print("done: the second connection resumed the saved session (no certificate exchange)")
    else:
        print("done: the server did not resume the session: the second handshake was a full one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
