"""Seed 003: an ESP32-style HTTPS GET client, on dtlskit's blocking TLS API and h11.

The seed connects to a web server over TLS, writes ``GET / HTTP/1.1`` with a ``Host`` header,
and prints what comes back. Here the TLS is ``dtlskit.sync.tls.connect`` (the server's
certificate verified against a CA, SNI and ALPN ``http/1.1``), and the HTTP is h11, a
well-kept sans-I/O HTTP/1.1 library (``pip install 'dtlskit[https]'``), not hand-written
parsing. It prints the status, the headers and the size of the body.

With no arguments it starts ``openssl s_server -WWW`` on loopback (serving a file from a
temporary directory, with a certificate from ``dtlskit.certs``) and fetches that file. With a
URL (``https_get.py https://example.org/``) it fetches that instead, trusting the system's CAs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import h11

import dtlskit
from dtlskit.certs import create_pki
from dtlskit.sync import tls

TIMEOUT = 15.0  # every wait in an example is bounded


def https_get(url: str, config: dtlskit.DTLSConfiguration) -> tuple[h11.Response, int]:
    """GET ``url``; return the response head and the number of body bytes."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise SystemExit(f"not an https:// URL: {url}")
    host, port = parts.hostname, parts.port or 443
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    http = h11.Connection(our_role=h11.CLIENT)
    config = config.replace(alpn_protocols=("http/1.1",))
    with tls.connect(host, port, config=config, timeout=TIMEOUT) as channel:
        print(f"connected to {host}:{port} with {channel.version}, {channel.cipher}")
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", host), ("User-Agent", "dtlskit-https-get"), ("Connection", "close")],
        )
        channel.send(http.send(request) + http.send(h11.EndOfMessage()))
        response: h11.Response | None = None
        size = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = channel.recv(timeout=TIMEOUT)
                except dtlskit.ConnectionClosedByPeer:
                    data = b""  # close_notify: the end of a response delimited by the close
                http.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        assert response is not None
        return response, size


@contextlib.contextmanager
def local_https_server(directory: Path) -> Iterator[tuple[str, dtlskit.DTLSConfiguration]]:
    """``openssl s_server -WWW`` on 127.0.0.1 (port 0), serving ``directory``; ended by PID."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("the openssl command is needed to run the local HTTPS server")
    pki = create_pki(directory / "pki")
    (directory / "www").mkdir()
    page = directory / "www" / "index.html"
    page.write_text("<html><body>" + "hello from openssl s_server -WWW\n" * 100 + "</body></html>")
    process = subprocess.Popen(
        [
            openssl,
            "s_server",
            "-WWW",
            "-accept",
            "127.0.0.1:0",
            "-cert",
            str(pki.server_cert),
            "-key",
            str(pki.server_key),
            "-alpn",
            "http/1.1",
        ],
        cwd=directory / "www",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        port = None
        for raw in iter(process.stdout.readline, b""):  # "ACCEPT 127.0.0.1:PORT", then quiet
            line = raw.decode(errors="replace").strip()
            if line.startswith("ACCEPT"):
                port = int(line.rsplit(":", 1)[1])
                break
        if port is None:
            raise SystemExit("openssl s_server did not start")
        config = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert)
        yield f"https://localhost:{port}/index.html", config
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="https:// URL (default: a local s_server -WWW)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.url:
            url, config = args.url, dtlskit.DTLSConfiguration.client()
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url, config = stack.enter_context(local_https_server(tmp))
        print(f"GET {url}")
        response, size = https_get(url, config)
        print(f"status: {response.status_code} {response.reason.decode(errors='replace')}")
        for name, value in response.headers:
            print(f"header: {name.decode()}: {value.decode(errors='replace')}")
        print(f"body: {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
