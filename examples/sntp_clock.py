"""Device clocks: learn the time by SNTP, then check certificates against it (``verify_time``).

A device without a battery-backed clock boots in 1970, where every certificate is "not yet
valid". Like the ESP32's ``sntp_init()``, this asks a time server, then hands the answer to
dtlskit as ``verify_time``, so certificates are checked against the server's time and not the
device's clock.

**Plain SNTP is unauthenticated**: whoever can answer the query sets the device's idea of the
time, and with it which certificates look valid. Use NTS (RFC 8915), several servers, or a time
source you already trust where that matters.

    python examples/sntp_clock.py --server 127.0.0.1 --port 123

With no arguments it starts its own time server on loopback, chrony's ``chronyd -x`` (which
never touches the system clock) on a free port, asks it, shows a handshake failing with the
device's unset clock (1970) and succeeding with the SNTP time, then stops chronyd.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dtlskit
from dtlskit import sync
from dtlskit.certs import create_pki
from dtlskit.contrib import sntp


@contextlib.contextmanager
def chronyd_on_loopback(directory: Path) -> Iterator[int]:
    """chronyd serving NTP on 127.0.0.1 (a free port) from its own clock, never adjusting the
    system clock (``-x``); yields the port, then ends it by its PID."""
    chronyd = shutil.which("chronyd") or "/usr/sbin/chronyd"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = directory / "chrony.conf"
    config.write_text(
        f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\n"
        "local stratum 8\n"  # serve our own clock without an upstream server
        f"cmdport 0\nbindcmdaddress {directory / 'chronyd.sock'}\n"
        f"pidfile {directory / 'chronyd.pid'}\n"
        f"driftfile {directory / 'drift'}\nuser {getpass.getuser()}\n"
    )
    process = subprocess.Popen(
        [chronyd, "-x", "-d", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ready(process, deadline=time.monotonic() + 10)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def ready(process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until chronyd says it runs with its final privileges, which it does once its NTP
    socket is open; fail with what it printed if it exits or stays silent past ``deadline``.
    (Reads the pipe's descriptor directly: a buffered reader would hide lines from select.)"""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    printed = b""
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError("chronyd exited: " + printed.decode(errors="replace"))
        printed += chunk
        if b"privileges" in printed:  # "Running with root privileges" / "Dropped root ..."
            return
    raise RuntimeError("chronyd did not start in time: " + printed.decode(errors="replace"))


def echo(channel: sync.Channel) -> None:
    for message in channel:
        channel.send(message)


def handshake_with(clock: object) -> str:
    """A DTLS handshake whose client checks certificates against ``clock``."""
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client_config = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert,
            server_hostname="localhost",
            verify_time=clock,  # type: ignore[arg-type]
        )
        with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            try:
                with sync.connect("127.0.0.1", port, config=client_config, timeout=10) as channel:
                    channel.send(b"hello")
                    return f"connected, echoed {channel.recv(timeout=10)!r}"
            except dtlskit.CertificateVerificationError as exc:
                return f"refused ({exc.reason}): {exc}"


def run(host: str, port: int) -> None:
    clock = sntp.query(host, port)
    print(f"sntp: {host}:{port} says {clock():%Y-%m-%d %H:%M:%S} UTC (stratum {clock.stratum}, "
          f"offset {clock.offset * 1000:+.1f} ms, delay {clock.delay * 1000:.1f} ms)")  # fmt: skip
    print("sntp: plain SNTP is unauthenticated: anyone who can answer sets this time")
    print(f"device clock unset (1970): {handshake_with(0)}")
    print(f"verify_time from SNTP: {handshake_with(clock)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="SNTP server to ask (default: start chronyd on loopback)")
    parser.add_argument("--port", type=int, default=sntp.NTP_PORT, help="its UDP port (123)")
    args = parser.parse_args()
    if args.server is not None:
        run(args.server, args.port)
        return 0
    with tempfile.TemporaryDirectory() as tmp, chronyd_on_loopback(Path(tmp)) as port:
        print(f"chronyd: serving NTP on 127.0.0.1:{port} (-x: the system clock is never touched)")
        run("127.0.0.1", port)
    print("done: certificates checked against the SNTP time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
