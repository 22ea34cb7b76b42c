"""Adversarial review of issue 8's hardening: what a validated half-open peer can make the
server hold through OpenSSL's handshake reassembly.

Only a peer that passed the cookie exchange gets an association, but once it has one, every
epoch-0 handshake fragment it sends goes to OpenSSL, which buffers up to ten messages *ahead* of
the one it expects, each as large as its own cap (``max_cert_list``, 100 KiB), allocated from the
first fragment's declared length. A peer that then sends one byte per page of each made the
server hold ~1.3 MiB per half-open association (80 MiB per IPv4 address at 64 half-open, 1.3 GiB
for the pool), against ``Limits.max_client_hello_size`` (16 KiB) documented as the bound.

The memory is measured as the resident size of a child process (a byte count, not a time).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from dtlskit.certs import PKIFiles

CHILD = textwrap.dedent(
    """
    import struct, sys
    import dtlskit
    from dtlskit.core import DTLSConnection, ServerEngine

    cert, key, ca, mode = sys.argv[1:5]
    server_config = dtlskit.DTLSConfiguration.server(cert, key)
    client_config = dtlskit.DTLSConfiguration.client(cafile=ca, server_hostname="localhost")
    server = ServerEngine(server_config)
    now = 1000.0
    N = 40
    MESSAGE = 100_000

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def fragment(record_seq, msg_type, msg_len, msg_seq, offset, payload):
        body = (bytes([msg_type]) + msg_len.to_bytes(3, "big") + struct.pack(">H", msg_seq)
                + offset.to_bytes(3, "big") + len(payload).to_bytes(3, "big") + payload)
        return (bytes([22, 0xFE, 0xFD]) + struct.pack(">HHI", 0, 0, record_seq)
                + struct.pack(">H", len(body)) + body)

    addresses = []
    for i in range(N):
        address = (f"127.3.{i // 200}.{i % 200 + 1}", 5000)
        client = DTLSConnection(client_config, server=False)
        client.connect(now)
        (hello,) = client.datagrams_to_send()
        server.receive_datagram(hello, address, now)
        (verify,) = [data for data, to in server.datagrams_to_send() if to == address]
        client.receive_datagram(verify, now)
        (hello,) = client.datagrams_to_send()
        server.receive_datagram(hello, address, now)
        server.datagrams_to_send()
        addresses.append(address)
    assert server.statistics().associations_created == N
    before = rss()
    record_seq = 100
    for address in addresses:
        if mode == "fragments":
            # Each attacker declares 100 KiB messages of every sequence OpenSSL would buffer and
            # touches every page of them with one-byte fragments.
            for msg_seq in range(2, 13):
                for offset in range(0, MESSAGE - 1, 4096):
                    record_seq += 1
                    data = fragment(record_seq, 11, MESSAGE, msg_seq, offset, b"x")
                    server.receive_datagram(data, address, now)
        else:
            # Each attacker sends 16,000-byte records of the next epoch, which OpenSSL keeps
            # until the epoch starts (a ChangeCipherSpec that never comes).
            for record_seq in range(100):
                data = (bytes([23, 0xFE, 0xFD]) + struct.pack(">HHI", 1, 0, record_seq)
                        + struct.pack(">H", 16_000) + bytes(16_000))
                server.receive_datagram(data, address, now)
    server.datagrams_to_send()
    assert server.statistics().associations_created == N
    print((rss() - before) // N, dict(server.statistics().drops))
    """
)


def test_half_open_peer_cannot_make_openssl_buffer_megabytes(pki: PKIFiles, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    argv = [sys.executable, str(script)]
    argv += [str(pki.server_cert), str(pki.server_key), str(pki.ca_cert), "fragments"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split(" ", 1)
    per_association = int(out[0])
    # One Certificate (OpenSSL's own cap, 100 KiB) and two small messages may be in flight from a
    # client during its second flight; nothing more.
    assert per_association < 256 * 1024, out
    assert "handshake_fragment_out_of_window" in out[1], out


def test_half_open_peer_cannot_make_openssl_buffer_next_epoch_records(
    pki: PKIFiles, tmp_path: Path
) -> None:
    """Records of the next epoch before the handshake ends: OpenSSL keeps them (up to ~300 KiB
    per association before the fix); a client sends only its Finished there (and, rarely,
    application data right after it)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    argv = [sys.executable, str(script)]
    argv += [str(pki.server_cert), str(pki.server_key), str(pki.ca_cert), "records"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) < 128 * 1024, out  # ~60 KiB: one 16 KB record kept, as a client may send
    assert "half_open_next_epoch_budget" in out[1], out
