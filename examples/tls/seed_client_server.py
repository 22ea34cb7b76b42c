"""Seed 001: the classic OpenSSL TLS client and server, on dtlskit's TLS-over-TCP API.

The tutorial makes a CA, a server and a client certificate with ``openssl`` commands, each key
protected by a ``-des3`` pass phrase, then runs a server that verifies its clients and a client
that verifies the server. This example does the same twice:

* ``--ca openssl``: the seed's own commands (``genrsa -des3``, ``req -new -x509``, ``req -new``,
  ``x509 -req -CA ...``), made non-interactive only by ``-subj`` and ``-passout``/``-passin``;
  the pass phrase is then given to our API (``DTLSConfiguration.server(..., password=...)``);
* ``--ca dtlskit``: the same PKI from ``dtlskit certs`` (encrypted keys too).

Then a blocking server (``dtlskit.sync.tls.serve``, one thread per client, client certificates
required) and a client (``dtlskit.sync.tls.connect``) exchange a greeting, like the seed's
programs. With no arguments both ways run. Files go to a temporary directory.
"""

from __future__ import annotations

import argparse
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import dtlskit
from dtlskit.sync import tls

PASS_PHRASE = "seed001 pass phrase"
TIMEOUT = 20.0  # every wait in an example is bounded


def openssl_ca(directory: Path) -> dict[str, Path]:
    """The seed's commands, verbatim but for -subj and the pass phrase options."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("the openssl command is needed for --ca openssl")
    pw = f"pass:{PASS_PHRASE}"
    steps = [
        # generate CA cert and key files
        ["genrsa", "-des3", "-passout", pw, "-out", "ca.key", "4096"],
        [
            "req",
            "-new",
            "-x509",
            "-days",
            "365",
            "-key",
            "ca.key",
            "-passin",
            pw,
            "-subj",
            "/CN=seed001 CA",
            "-out",
            "ca.crt",
        ],
        # generate Server cert and key files
        ["genrsa", "-des3", "-passout", pw, "-out", "ssl_server.key", "4096"],
        [
            "req",
            "-new",
            "-key",
            "ssl_server.key",
            "-passin",
            pw,
            "-subj",
            "/CN=localhost",
            "-out",
            "ssl_server.csr",
        ],
        # Sign using CA
        [
            "x509",
            "-req",
            "-days",
            "365",
            "-in",
            "ssl_server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-passin",
            pw,
            "-set_serial",
            "01",
            "-out",
            "ssl_server.crt",
        ],
        # generate Client cert and key files
        ["genrsa", "-des3", "-passout", pw, "-out", "ssl_client.key", "4096"],
        [
            "req",
            "-new",
            "-key",
            "ssl_client.key",
            "-passin",
            pw,
            "-subj",
            "/CN=seed001 client",
            "-out",
            "ssl_client.csr",
        ],
        # Sign using CA
        [
            "x509",
            "-req",
            "-days",
            "365",
            "-in",
            "ssl_client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-passin",
            pw,
            "-set_serial",
            "01",
            "-out",
            "ssl_client.crt",
        ],
    ]
    for step in steps:
        subprocess.run(
            [openssl, *step], cwd=directory, check=True, capture_output=True, timeout=120
        )
    return {
        "ca": directory / "ca.crt",
        "server_cert": directory / "ssl_server.crt",
        "server_key": directory / "ssl_server.key",
        "client_cert": directory / "ssl_client.crt",
        "client_key": directory / "ssl_client.key",
    }


def dtlskit_ca(directory: Path) -> dict[str, Path]:
    """The same PKI from ``dtlskit certs`` (keys encrypted with the pass phrase)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dtlskit",
            "certs",
            "init",
            "--password",
            PASS_PHRASE,
            str(directory),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }


def run(files: dict[str, Path], how: str) -> None:
    server_config = dtlskit.DTLSConfiguration.server(
        files["server_cert"],
        files["server_key"],
        PASS_PHRASE,
        cafile=files["ca"],
        verify_mode=ssl.CERT_REQUIRED,
    )
    client_config = dtlskit.DTLSConfiguration.client(
        cafile=files["ca"],
        server_hostname="localhost",
        certfile=files["client_cert"],
        keyfile=files["client_key"],
        password=PASS_PHRASE,
    )

    def handle(channel: tls.Channel) -> None:  # the seed's server: read a request, answer
        request = channel.read_until(b"\n", timeout=TIMEOUT)
        who = channel.peer_certificate.subject.rfc4514_string()
        print(f"server: {who} said {request.strip().decode()!r}")
        channel.send(b"Hello from the TLS server\n")

    with (
        tls.serve(handle, "127.0.0.1", 0, config=server_config) as server,
        tls.connect("127.0.0.1", server.port, config=client_config, timeout=TIMEOUT) as channel,
    ):
        subject = channel.peer_certificate.subject.rfc4514_string()
        print(
            f"client ({how} CA): connected with {channel.version}, {channel.cipher}; "
            f"server certificate {subject} verified"
        )
        channel.send(b"Hello from the TLS client\n")
        reply = channel.read_until(b"\n", timeout=TIMEOUT)
        print(f"client: server replied {reply.strip().decode()!r}")
    print(f"done: mutual authentication with the {how} CA (pass-phrase-protected keys)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ca",
        choices=["openssl", "dtlskit", "both"],
        default="both",
        help="who makes the CA and certificates (default: both, in turn)",
    )
    args = parser.parse_args()
    for how in ("openssl", "dtlskit") if args.ca == "both" else (args.ca,):
        with tempfile.TemporaryDirectory() as tmp:
            files = (openssl_ca if how == "openssl" else dtlskit_ca)(Path(tmp))
            run(files, how)
    return 0


if __name__ == "__main__":
    sys.exit(main())
