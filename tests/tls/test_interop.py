"""Interop over TCP, both roles, with peers nobody here wrote: ``openssl s_server/s_client``
and GnuTLS ``gnutls-serv/gnutls-cli``. Certificates, mutual auth, PSK (TLS 1.2 and 1.3),
ALPN, resumption, wrong CA, expired certificate, host-name mismatch."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import dtlskit
from dtlskit import certs
from dtlskit.certs import PKIFiles
from dtlskit.sync import tls

from ..peers import GNUTLS_CLI, GNUTLS_SERV, OPENSSL, Peer, needs_gnutls, needs_openssl

PSK_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``condition`` holds within ``timeout`` seconds: the server's thread records a
    peer's end after the peer process printed its verdict (polled; a bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def s_server(*extra: str) -> Iterator[tuple[Peer, int]]:
    """``openssl s_server`` over TCP on 127.0.0.1, port 0 (read back from its ACCEPT line)."""
    assert OPENSSL is not None
    peer = Peer([OPENSSL, "s_server", "-accept", "127.0.0.1:0", *extra])
    try:
        line = peer.wait_for("ACCEPT")
        yield peer, int(line.rsplit(":", 1)[1])
    finally:
        peer.stop()


@contextlib.contextmanager
def gnutls_serv(*extra: str) -> Iterator[tuple[Peer, int]]:
    """``gnutls-serv --echo`` over TCP on a port that was free a moment ago (retried)."""
    assert GNUTLS_SERV is not None
    for _ in range(5):
        port = free_tcp_port()
        peer = Peer([GNUTLS_SERV, "--echo", "-p", str(port), *extra])
        try:
            line = peer.wait_for("listening on IPv4")
            if not line.endswith("done"):
                continue
            yield peer, port
            return
        finally:
            peer.stop()
    raise AssertionError("gnutls-serv found no free port")


def client_cfg(pki: PKIFiles, **kw: object) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost", **kw)  # type: ignore[arg-type]


def echo(channel: tls.Channel) -> None:
    for data in channel:
        channel.send(data)


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory, pki: PKIFiles) -> tuple[Path, Path]:
    """A server certificate for localhost, issued by ``pki``'s CA, expired last month."""
    directory = tmp_path_factory.mktemp("expired")
    ca = (certs.load_certificate(pki.ca_cert), certs.load_private_key(pki.ca_key, pki.password))
    past = datetime.now(timezone.utc) - timedelta(days=60)
    cert, key = certs.issue_certificate(
        ca,
        "localhost",
        hosts=["localhost", "127.0.0.1"],
        not_before=past,
        not_after=past + timedelta(days=30),
    )
    (directory / "cert.pem").write_bytes(certs.certificate_pem(cert))
    (directory / "key.pem").write_bytes(certs.private_key_pem(key))
    return directory / "cert.pem", directory / "key.pem"


# -- our client, openssl s_server -----------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_client_to_openssl_certificates(pki: PKIFiles, version: str) -> None:
    with (
        s_server("-cert", str(pki.server_cert), "-key", str(pki.server_key), version) as (
            peer,
            port,
        ),
        tls.connect("127.0.0.1", port, config=client_cfg(pki)) as channel,
    ):
        assert channel.version == ("TLSv1.3" if version == "-tls1_3" else "TLSv1.2")
        channel.send(b"hello from dtlskit\n")
        peer.wait_for("hello from dtlskit")
        peer.write(b"hello from openssl\n")
        assert channel.read_until(b"\n", timeout=10) == b"hello from openssl\n"


@needs_openssl
def test_client_to_openssl_mutual_auth(pki: PKIFiles) -> None:
    args = (
        "-cert",
        str(pki.server_cert),
        "-key",
        str(pki.server_key),
        "-Verify",
        "1",
        "-CAfile",
        str(pki.ca_cert),
        "-verify_return_error",
    )
    with s_server(*args) as (peer, port), pytest.raises(dtlskit.CertificateVerificationError):
        channel = tls.connect("127.0.0.1", port, config=client_cfg(pki))
        channel.recv(timeout=10)  # TLS 1.3: the refusal comes after our Finished
    with s_server(*args) as (peer, port):
        cfg = client_cfg(pki, certfile=pki.client_cert, keyfile=pki.client_key)
        with tls.connect("127.0.0.1", port, config=cfg) as channel:
            channel.send(b"with a certificate\n")
            peer.wait_for("with a certificate")


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_client_to_openssl_psk(version: str) -> None:
    args = ("-nocert", "-psk", PSK_KEY.hex(), "-psk_identity", "dev1", version)
    with s_server(*args) as (peer, port):
        cfg = dtlskit.DTLSConfiguration.client(psk=("dev1", PSK_KEY))
        with tls.connect("127.0.0.1", port, config=cfg) as channel:
            assert channel.psk_identity == "dev1"
            channel.send(b"psk data\n")
            peer.wait_for("psk data")


@needs_openssl
def test_client_to_openssl_alpn_and_resumption(pki: PKIFiles) -> None:
    args = ("-cert", str(pki.server_cert), "-key", str(pki.server_key), "-alpn", "h2,http/1.1")
    with s_server(*args) as (peer, port):
        cfg = client_cfg(pki, alpn_protocols=["http/1.1"])
        with tls.connect("127.0.0.1", port, config=cfg) as first:
            assert first.alpn_protocol == "http/1.1"
            first.send(b"one\n")
            peer.wait_for("one")
            peer.write(b"ack\n")
            first.read_until(b"\n", timeout=10)  # the tickets came before it
            session = first.session
        assert session is not None
        with tls.connect("127.0.0.1", port, config=cfg, session=session) as second:
            assert second.session_reused
            second.send(b"two\n")
            peer.wait_for("two")


@needs_openssl
@pytest.mark.parametrize("case", ["wrong ca", "hostname", "expired"])
def test_client_rejects_bad_openssl_server(
    pki: PKIFiles, other_pki: PKIFiles, expired: tuple[Path, Path], case: str
) -> None:
    cert, key = (pki.server_cert, pki.server_key) if case != "expired" else expired
    cfg = {
        "wrong ca": client_cfg(other_pki),
        "hostname": client_cfg(pki).replace(server_hostname="wrong.example"),
        "expired": client_cfg(pki),
    }[case]
    reason = {
        "wrong ca": dtlskit.VerificationReason.UNKNOWN_ISSUER,
        "hostname": dtlskit.VerificationReason.HOSTNAME_MISMATCH,
        "expired": dtlskit.VerificationReason.EXPIRED,
    }[case]
    with (
        s_server("-cert", str(cert), "-key", str(key)) as (_, port),
        pytest.raises(dtlskit.CertificateVerificationError) as info,
    ):
        tls.connect("127.0.0.1", port, config=cfg)
    assert info.value.reason is reason


# -- openssl s_client, our server -----------------------------------------------------------------


def s_client(port: int, *extra: str) -> list[str]:
    assert OPENSSL is not None
    return [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *extra]


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_client_to_server_certificates(pki: PKIFiles, version: str) -> None:
    cfg = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    with tls.serve(echo, "127.0.0.1", 0, config=cfg) as server:
        peer = Peer(
            s_client(
                server.port,
                "-CAfile",
                str(pki.ca_cert),
                "-verify_return_error",
                "-servername",
                "localhost",
                "-verify_hostname",
                "localhost",
                version,
            )
        )
        try:
            peer.wait_for("Verify return code: 0 (ok)")
            peer.write(b"echo me\n")
            peer.wait_for("echo me")
        finally:
            peer.stop()
        assert eventually(lambda: server.statistics().handshakes_completed == 1)


@needs_openssl
def test_openssl_client_mutual_auth(pki: PKIFiles) -> None:
    cfg = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, cafile=pki.ca_cert, verify_mode=ssl.CERT_REQUIRED
    )
    seen: list[object] = []

    def who(channel: tls.Channel) -> None:
        seen.append(channel.peer_certificate)
        echo(channel)

    with tls.serve(who, "127.0.0.1", 0, config=cfg) as server:
        peer = Peer(
            s_client(
                server.port,
                "-CAfile",
                str(pki.ca_cert),
                "-cert",
                str(pki.client_cert),
                "-key",
                str(pki.client_key),
            )
        )
        try:
            peer.write(b"mutual\n")
            peer.wait_for("mutual")
        finally:
            peer.stop()
        bare = Peer(s_client(server.port, "-CAfile", str(pki.ca_cert), "-tls1_2"))
        try:
            bare.wait_for("alert")  # handshake failure / certificate required
        finally:
            bare.stop()
    assert seen and seen[0] is not None
    assert eventually(lambda: server.statistics().handshakes_failed == 1)


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_client_psk(version: str) -> None:
    cfg = dtlskit.DTLSConfiguration.server(psk_lookup={"dev1": PSK_KEY})
    with tls.serve(echo, "127.0.0.1", 0, config=cfg) as server:
        peer = Peer(s_client(server.port, "-psk", PSK_KEY.hex(), "-psk_identity", "dev1", version))
        try:
            peer.write(b"psk echo\n")
            peer.wait_for("psk echo")
        finally:
            peer.stop()


@needs_openssl
def test_openssl_client_alpn_and_resumption(pki: PKIFiles, tmp_path: Path) -> None:
    cfg = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, alpn_protocols=["http/1.1"]
    )
    sess = tmp_path / "session.pem"
    with tls.serve(echo, "127.0.0.1", 0, config=cfg) as server:
        first = Peer(
            s_client(
                server.port,
                "-CAfile",
                str(pki.ca_cert),
                "-alpn",
                "h2,http/1.1",
                "-sess_out",
                str(sess),
            )
        )
        try:
            first.wait_for("ALPN protocol: http/1.1")
            first.write(b"first\n")
            first.wait_for("first")  # the ticket came before the echo
        finally:
            first.stop()
        second = Peer(s_client(server.port, "-CAfile", str(pki.ca_cert), "-sess_in", str(sess)))
        try:
            second.wait_for("Reused, TLSv1.3")
        finally:
            second.stop()


@needs_openssl
@pytest.mark.parametrize("case", ["wrong ca", "hostname", "expired"])
def test_openssl_client_rejects_bad_server(
    pki: PKIFiles, other_pki: PKIFiles, expired: tuple[Path, Path], case: str
) -> None:
    cert, key = (pki.server_cert, pki.server_key) if case != "expired" else expired
    ca = other_pki.ca_cert if case == "wrong ca" else pki.ca_cert
    name = "wrong.example" if case == "hostname" else "localhost"
    expected = {
        "wrong ca": "unable to get local issuer certificate",
        "hostname": "hostname mismatch",
        "expired": "certificate has expired",
    }[case]
    cfg = dtlskit.DTLSConfiguration.server(cert, key)
    with tls.serve(echo, "127.0.0.1", 0, config=cfg) as server:
        peer = Peer(
            s_client(
                server.port, "-CAfile", str(ca), "-verify_return_error", "-verify_hostname", name
            )
        )
        try:
            peer.wait_for(expected)
        finally:
            peer.stop()
        assert eventually(lambda: server.statistics().handshakes_failed == 1)


# -- GnuTLS ---------------------------------------------------------------------------------------


@needs_gnutls
def test_client_to_gnutls_serv(pki: PKIFiles) -> None:
    args = (
        "--x509certfile",
        str(pki.server_cert),
        "--x509keyfile",
        str(pki.server_key),
        "--alpn",
        "http/1.1",
    )
    with gnutls_serv(*args) as (_, port):
        cfg = client_cfg(pki, alpn_protocols=["http/1.1"])
        with tls.connect("127.0.0.1", port, config=cfg) as first:
            assert first.alpn_protocol == "http/1.1"
            first.send(b"gnutls echo\n")
            assert first.read_until(b"\n", timeout=10) == b"gnutls echo\n"
            session = first.session
        with tls.connect("127.0.0.1", port, config=cfg, session=session) as second:
            assert second.session_reused
            second.send(b"again\n")
            assert second.read_until(b"\n", timeout=10) == b"again\n"


@needs_gnutls
def test_client_to_gnutls_serv_mutual_auth_and_psk(pki: PKIFiles, tmp_path: Path) -> None:
    args = (
        "--x509certfile",
        str(pki.server_cert),
        "--x509keyfile",
        str(pki.server_key),
        "--x509cafile",
        str(pki.ca_cert),
        "--require-client-cert",
    )
    with gnutls_serv(*args) as (_, port):
        cfg = client_cfg(pki, certfile=pki.client_cert, keyfile=pki.client_key)
        with tls.connect("127.0.0.1", port, config=cfg) as channel:
            channel.send(b"mutual\n")
            assert channel.read_until(b"\n", timeout=10) == b"mutual\n"
    passwd = tmp_path / "psk.txt"
    passwd.write_text(f"dev1:{PSK_KEY.hex()}\n")
    with gnutls_serv("--pskpasswd", str(passwd), "--priority", "NORMAL:+PSK:+ECDHE-PSK") as (
        _,
        port,
    ):
        cfg = dtlskit.DTLSConfiguration.client(psk=("dev1", PSK_KEY))
        with tls.connect("127.0.0.1", port, config=cfg) as channel:
            channel.send(b"psk\n")
            assert channel.read_until(b"\n", timeout=10) == b"psk\n"


def gnutls_cli(port: int, *extra: str) -> Sequence[str]:
    assert GNUTLS_CLI is not None
    return [GNUTLS_CLI, "-p", str(port), *extra, "127.0.0.1"]


@needs_gnutls
def test_gnutls_cli_to_server(pki: PKIFiles, tmp_path: Path) -> None:
    cfg = dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        alpn_protocols=["http/1.1"],
        cafile=pki.ca_cert,
        verify_mode=ssl.CERT_OPTIONAL,
    )
    with tls.serve(echo, "127.0.0.1", 0, config=cfg) as server:
        peer = Peer(
            gnutls_cli(
                server.port,
                "--x509cafile",
                str(pki.ca_cert),
                "--sni-hostname",
                "localhost",
                "--verify-hostname",
                "localhost",
                "--alpn",
                "http/1.1",
                "--x509certfile",
                str(pki.client_cert),
                "--x509keyfile",
                str(pki.client_key),
                "--resume",
            )
        )
        try:
            peer.wait_for("This is a resumed session")
        finally:
            peer.stop()


@needs_gnutls
@pytest.mark.parametrize("priority", ["NORMAL:+ECDHE-PSK:+PSK", "NORMAL:-VERS-TLS1.3:+PSK"])
def test_gnutls_cli_psk(priority: str) -> None:
    cfg = dtlskit.DTLSConfiguration.server(psk_lookup={"dev1": PSK_KEY})
    with tls.serve(echo, "127.0.0.1", 0, config=cfg) as server:
        psk = Peer(
            gnutls_cli(
                server.port,
                "--pskusername",
                "dev1",
                "--pskkey",
                PSK_KEY.hex(),
                "--priority",
                priority,
            )
        )
        try:
            psk.wait_for("Handshake was completed")
            psk.write(b"psk line\n")
            psk.wait_for("psk line")
        finally:
            psk.stop()


@needs_gnutls
@pytest.mark.parametrize("case", ["wrong ca", "hostname", "expired"])
def test_gnutls_cli_rejects_bad_server(
    pki: PKIFiles, other_pki: PKIFiles, expired: tuple[Path, Path], case: str
) -> None:
    cert, key = (pki.server_cert, pki.server_key) if case != "expired" else expired
    ca = other_pki.ca_cert if case == "wrong ca" else pki.ca_cert
    name = "wrong.example" if case == "hostname" else "localhost"
    cfg = dtlskit.DTLSConfiguration.server(cert, key)
    with tls.serve(echo, "127.0.0.1", 0, config=cfg) as server:
        peer = Peer(gnutls_cli(server.port, "--x509cafile", str(ca), "--verify-hostname", name))
        try:
            line = peer.wait_for("Status: The certificate is NOT trusted")
        finally:
            peer.stop()
    words = {"wrong ca": "issuer", "hostname": "does not match", "expired": "expired"}[case]
    assert words in line


@needs_openssl
def test_openssl_client_resumes_tls12(pki: PKIFiles, tmp_path: Path) -> None:
    cfg = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    sess = tmp_path / "session12.pem"
    with tls.serve(echo, "127.0.0.1", 0, config=cfg) as server:
        first = Peer(
            s_client(server.port, "-CAfile", str(pki.ca_cert), "-tls1_2", "-sess_out", str(sess))
        )
        try:
            first.wait_for("New, TLSv1.2")
            first.write(b"one\n")
            first.wait_for("one")
        finally:
            first.stop()
        second = Peer(
            s_client(server.port, "-CAfile", str(pki.ca_cert), "-tls1_2", "-sess_in", str(sess))
        )
        try:
            second.wait_for("Reused, TLSv1.2")
        finally:
            second.stop()
