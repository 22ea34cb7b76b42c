"""Mutual (client-certificate) authentication and server-side resumption against DTLS peers
nobody here wrote: ``openssl s_server/s_client -dtls1_2`` (OpenSSL 3.0 on Debian) and GnuTLS's
``gnutls-serv/gnutls-cli --udp``.

Found while writing these (GnuTLS 3.7.9):

* ``gnutls-serv --require-client-cert`` insists that a certificate is *sent* but verifies it only
  with ``--verify-client-cert`` (it prints "- Peer's certificate was NOT verified."), so the tests
  give both; it then prints "- Status: The certificate is trusted.".
* ``gnutls-serv`` buffers its standard output when it is a pipe; ``stdbuf -oL`` makes its lines
  arrive while it runs.
* ``gnutls-serv --udp`` answers a client that sends no certificate with silence (no alert) and
  then spins printing "Waiting for connection..."; that case is tested against OpenSSL only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import dtlskit
from dtlskit import sync
from dtlskit.asyncio import Channel, connect, serve
from dtlskit.certs import PKIFiles
from dtlskit.core.server import ServerStatistics
from tests.helpers import WAIT
from tests.peers import (
    Peer,
    gnutls_cli,
    gnutls_serv,
    needs_gnutls,
    needs_openssl,
    openssl_s_client,
    openssl_s_server,
    running,
    serving,
)

pytestmark = pytest.mark.interop


def subject(cert_path: Path) -> str:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).subject.rfc4514_string()


def client_with_certificate(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert,
        server_hostname="localhost",
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )


def server_requiring_certificates(pki: PKIFiles) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, verify_mode=ssl.CERT_REQUIRED, cafile=pki.ca_cert
    )


async def wait_line(peer: Peer, text: str) -> str:
    """Wait (in a thread, so the event loop keeps serving) for a line of the peer's output."""
    return await asyncio.to_thread(peer.wait_for, text, WAIT)


def line_buffered(argv: list[str]) -> list[str]:
    """``argv`` with its standard output line-buffered (gnutls-serv buffers it on a pipe)."""
    stdbuf = shutil.which("stdbuf")
    assert stdbuf is not None, "stdbuf (GNU coreutils) is missing"
    return [stdbuf, "-oL", *argv]


# -- (a) our client, openssl s_server -Verify 1 ---------------------------------------------------


def openssl_server_requiring_certificates(pki: PKIFiles, port: int) -> list[str]:
    return openssl_s_server(
        port,
        str(pki.server_cert),
        str(pki.server_key),
        "-Verify",
        "1",
        "-CAfile",
        str(pki.ca_cert),
    )


@needs_openssl
def test_client_certificate_accepted_by_openssl_s_server(pki: PKIFiles) -> None:
    with serving(lambda port: openssl_server_requiring_certificates(pki, port)) as (peer, port):
        with sync.connect(
            "127.0.0.1", port, config=client_with_certificate(pki), timeout=WAIT
        ) as channel:
            assert channel.version == "DTLSv1.2"
            channel.send(b"from a client with a certificate\n")
            peer.wait_for("from a client with a certificate")
            peer.write(b"from openssl s_server\n")
            assert channel.recv(timeout=WAIT) == b"from openssl s_server\n"
        # s_server verified our certificate and names it ("subject=CN = dtlskit client").
        peer.wait_for("Client certificate")
        shown = peer.wait_for("subject=")
        expected = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
        common_name = str(
            expected.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        )
        assert shown == f"subject=CN = {common_name}"
        assert not any("verify error" in line for line in peer.seen), peer.seen


@needs_openssl
def test_client_without_certificate_refused_by_openssl_s_server(
    pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    with serving(lambda port: openssl_server_requiring_certificates(pki, port)) as (peer, port):
        with pytest.raises(dtlskit.HandshakeError) as caught:
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
        peer.wait_for("peer did not return a certificate")
    message = str(caught.value)
    assert "requires a client certificate" in message, message
    assert "certfile" in message, message  # ... and says what to set
    assert not isinstance(caught.value, dtlskit.HandshakeTimeout)


# -- (b), (c) their client with a certificate, our server requiring one ---------------------------


class Recorder:
    """An echo handler that records, per session, the peer's certificate and resumption."""

    def __init__(self) -> None:
        self.sessions: list[tuple[Any, bool]] = []
        self.messages: list[bytes] = []

    async def __call__(self, channel: Channel) -> None:
        self.sessions.append((channel.peer_certificate, channel.session_reused))
        async for message in channel:
            self.messages.append(message)
            # A prefix the foreign client never typed: its output proves the reply arrived.
            await channel.send(b"echoed by dtlskit: " + message)

    def subjects(self) -> list[str | None]:
        return [
            None if cert is None else cert.subject.rfc4514_string() for cert, _ in self.sessions
        ]


def run_foreign_client(
    config: dtlskit.DTLSConfiguration,
    argv_for_port: Callable[[int], list[str]],
    ready: str,
) -> tuple[Recorder, ServerStatistics]:
    recorder = Recorder()

    async def main() -> ServerStatistics:
        async with serve(recorder, "127.0.0.1", 0, config=config) as server:
            port = server.addresses[0][1]
            with running(argv_for_port(port)) as peer:
                await wait_line(peer, ready)
                peer.write(b"hello from the foreign client\n")
                await wait_line(peer, "echoed by dtlskit: hello from the foreign client")
            return server.statistics()

    stats = asyncio.run(asyncio.wait_for(main(), 30))
    return recorder, stats


def run_refused_client(
    config: dtlskit.DTLSConfiguration, argv_for_port: Callable[[int], list[str]], refused: str
) -> tuple[Recorder, ServerStatistics]:
    """Run a foreign client the server must refuse; wait for it to say so and exit."""
    recorder = Recorder()

    async def main() -> ServerStatistics:
        async with serve(recorder, "127.0.0.1", 0, config=config) as server:
            port = server.addresses[0][1]
            with running(argv_for_port(port)) as peer:
                await wait_line(peer, refused)
                code = await asyncio.to_thread(peer.process.wait, WAIT)
                assert code != 0, peer.seen
            # The failure is counted once its terminal event is processed: wait, bounded.
            deadline = time.monotonic() + WAIT
            while server.statistics().handshakes_failed < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return server.statistics()

    stats = asyncio.run(asyncio.wait_for(main(), 30))
    return recorder, stats


def openssl_client(pki: PKIFiles, *extra: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return openssl_s_client(
            port,
            "-CAfile",
            str(pki.ca_cert),
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
            *extra,
        )

    return argv


def gnutls_client(pki: PKIFiles, *extra: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return gnutls_cli(
            port, "--x509cafile", str(pki.ca_cert), "--verify-hostname=localhost", *extra
        )

    return argv


@needs_openssl
def test_openssl_s_client_with_certificate_against_our_server(pki: PKIFiles) -> None:
    argv = openssl_client(pki, "-cert", str(pki.client_cert), "-key", str(pki.client_key))
    recorder, stats = run_foreign_client(
        server_requiring_certificates(pki), argv, "Verify return code: 0 (ok)"
    )
    assert recorder.messages == [b"hello from the foreign client\n"]
    assert recorder.subjects() == [subject(pki.client_cert)]
    assert stats.handshakes_completed == 1 and stats.handshakes_failed == 0


@needs_openssl
def test_openssl_s_client_without_certificate_is_refused(pki: PKIFiles) -> None:
    recorder, stats = run_refused_client(
        server_requiring_certificates(pki), openssl_client(pki), "alert handshake failure"
    )
    assert recorder.sessions == []  # the handler never ran
    assert stats.handshakes_completed == 0
    assert stats.handshakes_failed == 1
    assert stats.sessions == 0


@needs_openssl
def test_openssl_s_client_with_certificate_of_another_ca_is_refused(
    pki: PKIFiles, other_pki: PKIFiles
) -> None:
    argv = openssl_client(
        pki, "-cert", str(other_pki.client_cert), "-key", str(other_pki.client_key)
    )
    recorder, stats = run_refused_client(
        server_requiring_certificates(pki), argv, "alert unknown ca"
    )
    assert recorder.sessions == []
    assert stats.handshakes_completed == 0 and stats.handshakes_failed == 1


@needs_gnutls
def test_gnutls_cli_with_certificate_against_our_server(pki: PKIFiles) -> None:
    argv = gnutls_client(
        pki, "--x509certfile", str(pki.client_cert), "--x509keyfile", str(pki.client_key)
    )
    recorder, stats = run_foreign_client(
        server_requiring_certificates(pki), argv, "Handshake was completed"
    )
    assert recorder.messages == [b"hello from the foreign client\n"]
    assert recorder.subjects() == [subject(pki.client_cert)]
    assert stats.handshakes_completed == 1 and stats.handshakes_failed == 0


@needs_gnutls
def test_gnutls_cli_without_certificate_is_refused(pki: PKIFiles) -> None:
    recorder, stats = run_refused_client(
        server_requiring_certificates(pki), gnutls_client(pki), "Received alert"
    )
    assert recorder.sessions == []
    assert stats.handshakes_completed == 0 and stats.handshakes_failed == 1


# -- (d) our client with a certificate, gnutls-serv requiring one ---------------------------------


@needs_gnutls
def test_client_certificate_accepted_by_gnutls_serv(pki: PKIFiles) -> None:
    def argv(port: int) -> list[str]:
        return line_buffered(
            gnutls_serv(
                port,
                str(pki.server_cert),
                str(pki.server_key),
                "--require-client-cert",
                "--verify-client-cert",
                "--x509cafile",
                str(pki.ca_cert),
            )
        )

    with serving(argv) as (peer, port):

        async def main() -> None:
            config = client_with_certificate(pki)
            async with connect("127.0.0.1", port, config=config, timeout=WAIT) as channel:
                assert channel.version == "DTLSv1.2"
                for message in (b"first message\n", b"second message\n"):
                    await channel.send(message)
                    assert await asyncio.wait_for(channel.recv(), WAIT) == message

        asyncio.run(asyncio.wait_for(main(), 30))
        peer.wait_for("Accepted connection from IPv4 127.0.0.1")
        peer.wait_for("- Status: The certificate is trusted.")
        assert not any("NOT" in line for line in peer.seen), peer.seen


# -- server-side resumption with a foreign client -------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("client_certificate", [False, True], ids=["plain", "mutual"])
def test_openssl_s_client_resumes_with_our_server(
    client_certificate: bool,
    pki: PKIFiles,
    tmp_path: Path,
    server_config: dtlskit.DTLSConfiguration,
) -> None:
    session_file = tmp_path / "s_client.session"
    extra: tuple[str, ...] = ()
    config = server_config
    if client_certificate:
        extra = ("-cert", str(pki.client_cert), "-key", str(pki.client_key))
        config = server_requiring_certificates(pki)
    recorder = Recorder()
    summaries: list[str] = []

    async def main() -> ServerStatistics:
        async with serve(recorder, "127.0.0.1", 0, config=config) as server:
            port = server.addresses[0][1]
            for option in ("-sess_out", "-sess_in"):
                argv = openssl_client(pki, *extra, option, str(session_file))(port)
                with running(argv) as peer:
                    await wait_line(peer, "Verify return code: 0 (ok)")
                    # OpenSSL 3.0 prints "New, TLSv1.2, Cipher is ..." or "Reused, TLSv1.2, ..."
                    # (the cipher's protocol version, also for DTLS).
                    summaries.append(await wait_line(peer, ", Cipher is "))
                    peer.write(b"hello\n")
                    await wait_line(peer, "echoed by dtlskit: hello")
                    assert peer.process.stdin is not None
                    peer.process.stdin.close()  # s_client ends at end of input
                    assert await asyncio.to_thread(peer.process.wait, WAIT) == 0
                assert session_file.stat().st_size > 0
            return server.statistics()

    stats = asyncio.run(asyncio.wait_for(main(), 60))
    assert summaries[0].startswith("New, "), summaries
    assert summaries[1].startswith("Reused, "), summaries
    assert [reused for _, reused in recorder.sessions] == [False, True]
    expected = [subject(pki.client_cert)] * 2 if client_certificate else [None, None]
    # A resumed session keeps the identity the full handshake authenticated.
    assert recorder.subjects() == expected
    assert stats.handshakes_completed == 2
    assert os.path.getsize(session_file) > 0
