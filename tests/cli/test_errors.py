"""``dtlskit`` errors and warnings name the side, the file and the flag to change: our
certificate rejected by the server or the server's rejected by us, PSK / cipher / ALPN
mismatches, an encrypted client key (``--key-password``), a server certificate outside its
validity dates, and a ``--session-file`` that could not be saved (refused before any
handshake). Real servers (in this process) and a real client child process."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dtlskit
from dtlskit import certs, sync
from dtlskit.certs import PKIFiles
from tests.cli.test_client import server_with
from tests.helpers import WAIT
from tests.peers import Peer

KEY = "00112233445566778899aabbccddeeff"


def echo(channel: sync.Channel) -> None:
    for message in channel:
        channel.send(message)


def run_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtlskit", "client", "127.0.0.1", str(port), "-m", "hi", *args],
        capture_output=True,
        text=True,
        timeout=3 * WAIT,
        stdin=subprocess.DEVNULL,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("dtlskit: error: ")]
    return line


def verifying(pki: PKIFiles, *extra: str) -> tuple[str, ...]:
    return ("--ca", str(pki.ca_cert), "--server-name", "localhost", *extra)


def test_our_certificate_rejected_by_the_server_names_our_file(pki, other_pki):
    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, cafile=pki.ca_cert, verify_mode=ssl.CERT_REQUIRED
    )
    with server_with(echo, config) as port:
        cert, key = str(other_pki.client_cert), str(other_pki.client_key)
        line = error_line(run_client(port, *verifying(pki, "--cert", cert, "--key", key)))
    assert f"the server rejected our certificate {cert}" in line
    assert "a CA the server trusts" in line


def test_the_servers_certificate_rejected_by_us_names_our_ca_file(pki, other_pki, server_config):
    with server_with(echo, server_config) as port:
        line = error_line(run_client(port, *verifying(other_pki)))
    assert "we rejected the server's certificate" in line
    assert f"is --ca {other_pki.ca_cert} the CA that issued" in line


def test_psk_mismatches_say_which_part_differs(pki):
    config = dtlskit.DTLSConfiguration.server(psk_lookup={"sensor-7": bytes.fromhex(KEY)})
    with server_with(echo, config) as port:
        # A wrong key is silence (DTLS drops the peer's Finished): the handshake deadline
        # ends it, and the message says what most likely differs.
        wrong_key = error_line(run_client(port, "--psk", "sensor-7:" + "ff" * 16, "--timeout", "2"))
        wrong_identity = error_line(run_client(port, "--psk", "sensor-8:" + KEY))
        no_psk = error_line(run_client(port, *verifying(pki)))
        assert run_client(port, "--psk", "sensor-7:" + KEY).stdout == "hi\n"
    assert "hold different keys" in wrong_key
    assert "compare the HEXKEY part of --psk" in wrong_key
    assert "check the IDENTITY part of --psk" in wrong_identity
    assert "a PSK-only server needs --psk IDENTITY:HEXKEY" in no_psk


def test_alpn_mismatch_names_what_was_offered(pki, server_config):
    with server_with(echo, server_config.replace(alpn_protocols=["coap"])) as port:
        line = error_line(run_client(port, *verifying(pki, "--alpn", "h2", "--alpn", "h3")))
        agreed = run_client(port, *verifying(pki, "--alpn", "coap", "-v"))
    assert "the server accepts none of --alpn h2 h3" in line
    assert agreed.returncode == 0 and "ALPN protocol: coap" in agreed.stderr


def test_client_key_password(tmp_path: Path):
    pki = certs.create_pki(tmp_path / "pki", password="s3cret")
    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        "s3cret",
        cafile=pki.ca_cert,
        verify_mode=ssl.CERT_REQUIRED,
    )
    client_flags = verifying(pki, "--cert", str(pki.client_cert), "--key", str(pki.client_key))
    with server_with(echo, config) as port:
        missing = error_line(run_client(port, *client_flags))
        ok = run_client(port, *client_flags, "--key-password", "s3cret")
    assert f"private key {pki.client_key} is encrypted: give its password" in missing
    assert ok.returncode == 0 and ok.stdout == "hi\n", ok.stderr


def test_session_file_in_a_missing_folder_fails_before_any_handshake(tmp_path: Path):
    # Nothing listens on this port: a handshake would end in an error of exit status 1 after
    # a wait; the refusal comes first, as a usage error.
    with SilentPort() as port:
        result = run_client(port, "--session-file", str(tmp_path / "missing" / "session"))
    assert result.returncode == 2, result
    assert f"the folder {tmp_path / 'missing'} does not exist" in result.stderr


class SilentPort:
    """A bound UDP port that never answers."""

    def __enter__(self) -> int:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_server_warns_that_its_own_certificate_expired(tmp_path: Path):
    now = datetime.now(timezone.utc)
    ca = certs.create_ca("test CA")
    cert, key = certs.issue_certificate(
        ca,
        "localhost",
        hosts=["localhost"],
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(certs.certificate_pem(cert))
    key_path.write_bytes(certs.private_key_pem(key))
    key_path.chmod(0o600)
    server = Peer(
        [
            sys.executable,
            "-m",
            "dtlskit",
            "server",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--cert",
            str(cert_path),
            "--key",
            str(key_path),
        ],
        stdin=False,
    )
    try:
        line = server.wait_for("expired on", timeout=WAIT)
        server.wait_for("dtlskit server: DTLS echo on", timeout=WAIT)  # it still serves
    finally:
        server.stop()
    assert f"the server certificate {cert_path} expired on " in line
    assert "WARNING" in line
