"""``dtlskit server|client --transport tls`` and ``tcp``, run as real child processes."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import dtlskit
from dtlskit.certs import PKIFiles
from dtlskit.sync import tls

from ..peers import Peer
from ..test_cli import cli_env, cli_server, client_args, one_error_line, run, stop_with

__all__ = ["cli_env"]  # the fixture, imported for pytest


def test_tls_server_prints_a_client_command_that_works(cli_env: dict[str, str]) -> None:
    with cli_server(cli_env, "--transport", "tls", "--host", "127.0.0.1", "--port", "0") as (
        peer,
        command,
    ):
        assert "--transport tls" in command and "--ca" in command
        args = client_args(command)
        result = run(cli_env, *args, "--message", "hi", "-m", "there", "--count", "2")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["hi", "hi", "there", "there"]
        # Interactive, like s_client: lines typed are sent, what arrives is printed.
        result = run(cli_env, *args, stdin="first line\nsecond line\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["first line", "second line"]
        peer.wait_for("closed the connection (23 bytes echoed)")
        assert stop_with(peer, signal.SIGTERM) == 0
        peer.wait_for("stopped: 2 handshakes completed, 0 failed")


def test_tls_session_file_resumes(cli_env: dict[str, str], tmp_path: Path) -> None:
    with cli_server(cli_env, "--transport", "tls", "--host", "127.0.0.1", "--port", "0") as (
        _,
        command,
    ):
        args = [*client_args(command), "-m", "x", "--session-file", str(tmp_path / "s.bin")]
        first = run(cli_env, *args)
        second = run(cli_env, *args)
    assert first.stdout.splitlines() == ["session reused: no", "x"], first.stderr
    assert second.stdout.splitlines() == ["session reused: yes", "x"], second.stderr


def test_tls_client_wrong_ca_is_one_line(cli_env: dict[str, str], other_pki: PKIFiles) -> None:
    with cli_server(cli_env, "--transport", "tls", "--host", "127.0.0.1", "--port", "0") as (
        _,
        command,
    ):
        args = client_args(command)
        args[args.index("--ca") + 1] = str(other_pki.ca_cert)
        line = one_error_line(run(cli_env, *args, "-m", "x"))
    assert "certificate" in line and "rejected" in line


def test_tls_psk_and_client_certificates(cli_env: dict[str, str], pki: PKIFiles) -> None:
    psk = "dev1:00112233445566778899aabbccddeeff"
    with cli_server(
        cli_env, "--transport", "tls", "--host", "127.0.0.1", "--port", "0", "--psk", psk
    ) as (_, command):
        assert f"--psk {psk}" in command
        result = run(cli_env, *client_args(command), "-m", "psk")
        assert result.stdout.splitlines() == ["psk"], result.stderr
    with cli_server(
        cli_env,
        "--transport",
        "tls",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.server_key),
        "--ca",
        str(pki.ca_cert),
        "--require-client-cert",
        "--psk",
        psk,
    ) as (peer, _):
        port = peer.wait_for("TLS echo over TCP on").rsplit(":", 1)[1].split()[0]
        base = ["client", "localhost", port, "--transport", "tls", "--ca", str(pki.ca_cert)]
        line = one_error_line(run(cli_env, *base, "-m", "x"))
        assert "certificate" in line
        good = run(
            cli_env,
            *base,
            "--cert",
            str(pki.client_cert),
            "--key",
            str(pki.client_key),
            "-m",
            "mutual",
        )
        assert good.stdout.splitlines() == ["mutual"], good.stderr


def test_plain_tcp_round_trip(cli_env: dict[str, str]) -> None:
    with cli_server(cli_env, "--transport", "tcp", "--host", "127.0.0.1", "--port", "0") as (
        _,
        command,
    ):
        assert command.endswith("--transport tcp")
        result = run(cli_env, *client_args(command), "-m", "plain")
        assert result.stdout.splitlines() == ["plain"], result.stderr


def test_dtls_only_flags_are_usage_errors(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "client", "localhost", "1", "--transport", "tls", "--mtu", "1000")
    assert result.returncode == 2 and "--mtu has no meaning with --transport tls" in result.stderr
    result = run(cli_env, "server", "--transport", "tcp", "--psk", "a:00")
    assert result.returncode == 2 and "--psk has no meaning" in result.stderr


def test_interactive_client_prints_what_arrives(cli_env: dict[str, str], pki: PKIFiles) -> None:
    """Like s_client: it prints what a non-echo server sends, as it arrives, and ends when
    the server closes."""
    served: list[bytes] = []

    def greeter(channel: tls.Channel) -> None:
        channel.send(b"welcome\n")
        served.append(channel.read_until(b"\n", timeout=10))
        channel.send(b"bye\n")

    cfg = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    with tls.serve(greeter, "127.0.0.1", 0, config=cfg) as server:
        peer = Peer(
            [
                sys.executable,
                "-m",
                "dtlskit",
                "client",
                "localhost",
                str(server.port),
                "--transport",
                "tls",
                "--ca",
                str(pki.ca_cert),
            ],
            env=cli_env,
        )
        try:
            peer.wait_for("welcome")
            peer.write(b"hello server\n")
            peer.wait_for("bye")
            assert peer.process.wait(timeout=20) == 0
        finally:
            peer.stop()
    assert served == [b"hello server\n"]
