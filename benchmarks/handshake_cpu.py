"""CPU time per in-memory handshake: raw pyOpenSSL next to dtlskit, interleaved in one run.

:mod:`engine` measures rates over wall-clock windows of a few seconds each; on a shared machine
whatever else runs during one window and not the other skews the ratio. This script alternates
batches of ten handshakes of each kind and counts this process's CPU time only, so both sides
see the same conditions. The raw side is :func:`engine.raw_pair` (no cookie exchange); the
dtlskit side is a :class:`~dtlskit.testing.MemoryPair` through a :class:`ServerEngine` (with
the stateless cookie exchange), client and server both counted.

    python benchmarks/handshake_cpu.py [--rounds 30]

A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from OpenSSL import SSL

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine  # type: ignore[import-not-found]  # run as a script, beside engine.py

import dtlskit
from dtlskit.certs import create_pki
from dtlskit.core import ServerEngine
from dtlskit.testing import MemoryPair


def measure(rounds: int) -> tuple[float, float]:
    """CPU milliseconds per handshake: (raw pyOpenSSL, dtlskit)."""
    with tempfile.TemporaryDirectory() as directory:
        pki = create_pki(directory)
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_config = dtlskit.DTLSConfiguration.client(pki.ca_cert, "localhost")
        raw_server = SSL.Context(SSL.DTLS_METHOD)
        raw_server.use_certificate_chain_file(str(pki.server_cert))
        raw_server.use_privatekey_file(str(pki.server_key))
        raw_client = SSL.Context(SSL.DTLS_METHOD)
        raw_client.load_verify_locations(str(pki.ca_cert))
        for ctx in (raw_server, raw_client):
            ctx.set_cipher_list(dtlskit.DEFAULT_CIPHERS.encode())
            ctx.set_options(SSL.OP_NO_QUERY_MTU)
        server = ServerEngine(server_config)
        counter = [0]

        def raw() -> None:
            engine.raw_pair(raw_server, raw_client)

        def ours() -> None:
            counter[0] += 1
            n = counter[0]
            pair = MemoryPair(
                server_config,
                client_config,
                server=server,
                client_address=(f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 40000),
            )
            if not pair.handshake():
                raise RuntimeError(f"engine handshake failed: {pair.client.error}")
            pair.client.abort(dtlskit.ConnectionLost("benchmark done"))
            assert pair.server_connection is not None
            pair.server_connection.abort(dtlskit.ConnectionLost("benchmark done"))
            pair.pump()

        spent: dict[Callable[[], None], float] = {raw: 0.0, ours: 0.0}
        for run in (raw, ours, raw, ours):  # warm-up
            run()
        for _ in range(rounds):
            for run in (raw, ours):
                start = time.process_time()
                for _ in range(10):
                    run()
                spent[run] += time.process_time() - start
        count = rounds * 10
        return spent[raw] / count * 1e3, spent[ours] / count * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="batches of 10 of each kind")
    args = parser.parse_args()
    raw_ms, ours_ms = measure(args.rounds)
    print(
        f"CPU per in-memory handshake (client + server): raw pyOpenSSL {raw_ms:.2f} ms, "
        f"dtlskit {ours_ms:.2f} ms; dtlskit handshakes/s as a fraction of raw: "
        f"{raw_ms / ours_ms:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
