"""In-memory throughput of the dtlskit engine next to raw pyOpenSSL, measured in one run.

The ceiling is pyOpenSSL driven directly on memory BIOs: two ``SSL.Connection`` objects
handing bytes to each other, no cookie exchange, no record re-packing, no events. The dtlskit
figure is a :class:`~dtlskit.testing.MemoryPair` (client engine + server demultiplexer with a
stateless cookie exchange) on the same certificates. Both run on one core in this process.

    python benchmarks/engine.py [--seconds 3] [--json out.json]

A benchmark, not a test: it prints figures and ratios and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

import dtlskit
from dtlskit.certs import PKIFiles, create_pki
from dtlskit.testing import MemoryPair


def _rate(run_once: Callable[[], None], seconds: float) -> float:
    """Operations per second of ``run_once`` over about ``seconds`` (after one warm-up)."""
    run_once()
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        run_once()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def _drain(conn: SSL.Connection) -> bytes:
    out = []
    while True:
        try:
            out.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(out)


def raw_pair(server_ctx: SSL.Context, client_ctx: SSL.Context) -> tuple[Any, Any]:
    """A raw pyOpenSSL client and server, handshaken on memory BIOs."""
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_verify(SSL.VERIFY_PEER)  # the chain is verified, as dtlskit does
    client.set_tlsext_host_name(b"localhost")
    for conn in (server, client):
        conn.set_ciphertext_mtu(1200)
    done = [False, False]
    for _ in range(50):
        for index, (me, peer) in enumerate(((client, server), (server, client))):
            if not done[index]:
                try:
                    me.do_handshake()
                    done[index] = True
                except SSL.WantReadError:
                    pass
            data = _drain(me)
            if data:
                peer.bio_write(data)
        if all(done):
            return client, server
    raise RuntimeError("raw handshake did not complete")


def measure(seconds: float = 3.0, pki: PKIFiles | None = None) -> dict[str, float]:
    """Handshakes and records per second, raw and through dtlskit, and their ratios.

    ``pki``: the certificates to use (the same as the servers measured next to these figures);
    a throwaway PKI by default.
    """
    with tempfile.TemporaryDirectory() as directory:
        if pki is None:
            pki = create_pki(directory)
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_config = dtlskit.DTLSConfiguration.client(pki.ca_cert, "localhost")
        server_ctx = server_config.build_context(server=True)
        # The raw ceiling gets no cookie callbacks and no verification work we would skip.
        raw_server_ctx = SSL.Context(SSL.DTLS_METHOD)
        raw_server_ctx.use_certificate_chain_file(str(pki.server_cert))
        raw_server_ctx.use_privatekey_file(str(pki.server_key))
        raw_server_ctx.set_cipher_list(dtlskit.DEFAULT_CIPHERS.encode())
        raw_server_ctx.set_options(SSL.OP_NO_QUERY_MTU)
        # Nor does its client get dtlskit's info callback; it verifies the chain like dtlskit.
        raw_client_ctx = SSL.Context(SSL.DTLS_METHOD)
        raw_client_ctx.load_verify_locations(str(pki.ca_cert))
        raw_client_ctx.set_cipher_list(dtlskit.DEFAULT_CIPHERS.encode())
        raw_client_ctx.set_options(SSL.OP_NO_QUERY_MTU)

        def raw_handshake() -> None:
            raw_pair(raw_server_ctx, raw_client_ctx)

        from dtlskit.core import ServerEngine

        server_engine = ServerEngine(server_config, context=server_ctx)
        counter = [0]

        def engine_handshake() -> None:
            counter[0] += 1
            pair = MemoryPair(
                server_config,
                client_config,
                server=server_engine,
                # One address per client, as from a real population of peers (the per-source
                # HelloVerifyRequest rate limit would otherwise throttle a frozen clock).
                client_address=(
                    f"127.{counter[0] >> 16 & 255}.{counter[0] >> 8 & 255}.{counter[0] & 255}",
                    40000,
                ),
            )
            if not pair.handshake():
                raise RuntimeError(f"engine handshake failed: {pair.client.error}")
            pair.client.abort(dtlskit.ConnectionLost("benchmark done"))
            assert pair.server_connection is not None
            pair.server_connection.abort(dtlskit.ConnectionLost("benchmark done"))
            pair.pump()

        raw_hs = _rate(raw_handshake, seconds)
        engine_hs = _rate(engine_handshake, seconds)

        # Records: one 64-byte message client -> server, decrypted.
        raw_client, raw_server = raw_pair(raw_server_ctx, raw_client_ctx)
        payload = b"x" * 64

        def raw_record() -> None:
            raw_client.write(payload)
            raw_server.bio_write(_drain(raw_client))
            raw_server.read(65536)

        pair = MemoryPair(server_config, client_config)
        if not pair.handshake():
            raise RuntimeError("engine handshake failed")
        assert pair.server_connection is not None
        server_side = pair.server_connection

        def engine_record() -> None:
            pair.client.send(payload)
            for datagram in pair.client.datagrams_to_send():
                server_side.receive_datagram(datagram, 0.0)
            server_side.next_event()

        raw_rec = _rate(raw_record, seconds)
        engine_rec = _rate(engine_record, seconds)
    return {
        "raw_pyopenssl_handshakes_per_s": raw_hs,
        "dtlskit_engine_handshakes_per_s": engine_hs,
        "handshake_ratio": engine_hs / raw_hs,
        "raw_pyopenssl_records_per_s": raw_rec,
        "dtlskit_engine_records_per_s": engine_rec,
        "record_ratio": engine_rec / raw_rec,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = measure(args.seconds)
    print(f"{'in-memory, one core':<40}{'raw pyOpenSSL':>15}{'dtlskit':>12}{'ratio':>8}")
    print(
        f"{'handshakes/s (dtlskit: with cookie)':<40}"
        f"{figures['raw_pyopenssl_handshakes_per_s']:>15.0f}"
        f"{figures['dtlskit_engine_handshakes_per_s']:>12.0f}"
        f"{figures['handshake_ratio']:>8.2f}"
    )
    print(
        f"{'64-byte records/s':<40}"
        f"{figures['raw_pyopenssl_records_per_s']:>15.0f}"
        f"{figures['dtlskit_engine_records_per_s']:>12.0f}"
        f"{figures['record_ratio']:>8.2f}"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
