"""The ``dtlskit`` command line, run as a real child process (``python -m dtlskit``).

Servers are started on a free loopback port, waited for by the line they print, and stopped by
their PID; every wait is bounded. The development PKI goes to a per-module cache directory
(``XDG_CACHE_HOME``), never to the home directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtlskit
import dtlskit.sync
from dtlskit.certs import PKIFiles
from dtlskit.cli import build_parser
from tests.peers import Peer, free_udp_port

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

RUN_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    env.pop("SSLKEYLOGFILE", None)
    env["PYTHONWARNINGS"] = "default"  # a leaked socket would show up on stderr
    return env


def run(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtlskit", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


SECURITY = " WARNING dtlskit.security: "


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure was reported as exactly one line on stderr, without a traceback."""
    assert result.returncode == 1, result
    # Security warnings (verification off, key log) are log lines of their own, not errors.
    lines = [line for line in result.stderr.strip().splitlines() if SECURITY not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dtlskit: error: ")
    return lines[0]


@contextlib.contextmanager
def cli_server(env: dict[str, str], *args: str) -> Iterator[tuple[Peer, str]]:
    """A ``dtlskit server`` child; yields it and the client command it printed (which names
    the port it bound: give ``--port 0``, and read it with :func:`command_port`)."""
    peer = Peer([sys.executable, "-m", "dtlskit", "server", *args], env=env, stdin=False)
    try:
        line = peer.wait_for("connect with:", timeout=20)
        yield peer, line.split("connect with:", 1)[1].strip()
    finally:
        peer.stop()


@contextlib.contextmanager
def cli_server_on_a_fixed_port(
    env: dict[str, str], *args: str, attempts: int = 5
) -> Iterator[tuple[Peer, str]]:
    """:func:`cli_server` for what needs a fixed ``--port`` (workers): a port that was free a
    moment ago may be taken by another process before the server binds it; then the server
    exits saying so, and another port is tried (bounded)."""
    failures: list[str] = []
    for _ in range(attempts):
        port = str(free_udp_port())
        peer = Peer(
            [sys.executable, "-m", "dtlskit", "server", *args, "--port", port], env=env, stdin=False
        )
        try:
            try:
                line = peer.wait_for("connect with:", timeout=20)
            except AssertionError as exc:
                if peer.process.poll() is not None and "address already in use" in str(exc):
                    failures.append(port)
                    continue
                raise
            yield peer, line.split("connect with:", 1)[1].strip()
            return
        finally:
            peer.stop()
    raise AssertionError(f"ports {failures} were all taken before the server bound them")


def command_port(command: str) -> str:
    """The port of a printed ``dtlskit client HOST PORT ...`` command."""
    return client_args(command)[2]


def client_args(command: str) -> list[str]:
    """The arguments of a printed ``dtlskit client ...`` command."""
    words = command.split()
    assert words[:2] == ["dtlskit", "client"], command
    return words[1:]


def stop_with(peer: Peer, signum: int) -> int:
    os.kill(peer.process.pid, signum)
    return peer.process.wait(timeout=15)


# -- certs ----------------------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("key_args", [[], ["--key-type", "rsa", "--rsa-bits", "2048"]])
def test_certs_init_output_verifies_with_openssl(
    cli_env: dict[str, str], tmp_path: Path, key_args: list[str]
) -> None:
    target = tmp_path / "pki"
    result = run(
        cli_env,
        "certs",
        "init",
        str(target),
        "--hosts",
        "gw.example,10.0.0.7",
        "--days",
        "30",
        *key_args,
    )
    assert result.returncode == 0, result.stderr
    names = {p.name for p in target.iterdir()}
    assert {"ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"} <= names
    assert (target / "server.key").stat().st_mode & 0o077 == 0
    assert OPENSSL is not None
    verify = subprocess.run(
        [
            OPENSSL,
            "verify",
            "-CAfile",
            str(target / "ca.pem"),
            str(target / "server.pem"),
            str(target / "client.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count(": OK") == 2
    text = subprocess.run(
        [OPENSSL, "x509", "-in", str(target / "server.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout
    assert "DNS:gw.example" in text and "IP Address:10.0.0.7" in text
    assert ("RSA" in text) == bool(key_args)


def test_certs_init_refuses_to_overwrite(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert run(cli_env, "certs", "init", str(tmp_path)).returncode == 0
    before = (tmp_path / "ca.key").read_bytes()
    again = run(cli_env, "certs", "init", str(tmp_path))
    assert again.returncode == 2 and "--force" in again.stderr
    assert (tmp_path / "ca.key").read_bytes() == before
    assert run(cli_env, "certs", "init", str(tmp_path), "--force").returncode == 0
    assert (tmp_path / "ca.key").read_bytes() != before


def test_certs_init_with_password_encrypts_keys(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run(cli_env, "certs", "init", str(tmp_path), "--password", "s3cret")
    assert result.returncode == 0, result.stderr
    assert b"ENCRYPTED" in (tmp_path / "server.key").read_bytes()


@needs_openssl
def test_certs_show_matches_openssl(cli_env: dict[str, str], pki: PKIFiles) -> None:
    result = run(cli_env, "certs", "show", str(pki.server_cert))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Subject:           CN=localhost" in out
    assert "DNS:localhost" in out and "IP:127.0.0.1" in out and "IP:::1" in out
    assert "Not before:" in out and "Not after:" in out and "valid, expires in" in out
    assert OPENSSL is not None
    theirs = (
        subprocess.run(
            [OPENSSL, "x509", "-in", str(pki.server_cert), "-noout", "-fingerprint", "-sha256"],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=True,
        )
        .stdout.strip()
        .split("=", 1)[1]
    )
    assert f"SHA-256:           {theirs}" in out


def test_certs_show_missing_file_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    line = one_error_line(run(cli_env, "certs", "show", str(tmp_path / "nope.pem")))
    assert "not found" in line and "nope.pem" in line


@needs_openssl
def test_certs_sign_csr(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert OPENSSL is not None
    pki_dir = tmp_path / "pki"
    assert run(cli_env, "certs", "init", str(pki_dir), "--password", "pw").returncode == 0
    csr = tmp_path / "device.csr"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp_path / "device.key"),
            "-subj",
            "/CN=device42",
            "-addext",
            "subjectAltName=DNS:device42.local",
            "-out",
            str(csr),
        ],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    ca = ["--ca-cert", str(pki_dir / "ca.pem"), "--ca-key", str(pki_dir / "ca.key")]
    out = tmp_path / "device.pem"
    result = run(
        cli_env,
        "certs",
        "sign-csr",
        str(csr),
        *ca,
        "--ca-password",
        "pw",
        "--client",
        "--days",
        "10",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "CN=device42" in result.stdout
    verify = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(pki_dir / "ca.pem"), "-purpose", "sslclient", str(out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Without -o the PEM goes to stdout; a wrong CA password is one line naming the cause.
    to_stdout = run(cli_env, "certs", "sign-csr", str(csr), *ca, "--ca-password", "pw")
    assert to_stdout.stdout.startswith("-----BEGIN CERTIFICATE-----")
    line = one_error_line(run(cli_env, "certs", "sign-csr", str(csr), *ca, "--ca-password", "x"))
    assert "wrong password" in line


# -- demo -----------------------------------------------------------------------------------------


def test_demo(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(cli_env, SSLKEYLOGFILE=str(tmp_path / "keys.log"))
    result = run(env, "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"handshake done in [\d.]+ ms: DTLSv1\.2, \S+", out), out
    assert "server certificate CN=localhost (verified)" in out
    assert "client certificate CN=dtlskit client (verified)" in out
    assert "sent b'hello, DTLS', echoed b'hello, DTLS'" in out
    assert re.search(r"retransmissions\s+\d+\s+\d+", out)
    assert "client sent close_notify, server saw it" in out
    assert len(out.splitlines()) < 25  # short and readable
    # SSLKEYLOGFILE is honoured: both ends logged the session's secret (NSS key log format).
    keylog = tmp_path / "keys.log"
    lines = keylog.read_text().splitlines()
    assert lines and all(line.startswith("CLIENT_RANDOM ") for line in lines)
    assert stat.S_IMODE(keylog.stat().st_mode) == 0o600
    # ... and said so on stderr at the default verbosity.
    warned = [line for line in result.stderr.splitlines() if SECURITY in line]
    assert len(warned) == 1 and "key log" in warned[0] and str(keylog) in warned[0], warned


def test_keylog_open_to_others_is_refused_in_one_line(
    cli_env: dict[str, str], tmp_path: Path, pki: PKIFiles
) -> None:
    keylog = tmp_path / "keys.log"
    keylog.touch(mode=0o644)
    keylog.chmod(0o644)
    env = dict(cli_env, SSLKEYLOGFILE=str(keylog))
    cert = ("--cert", str(pki.server_cert), "--key", str(pki.server_key))
    line = one_error_line(run(env, "server", "--host", "127.0.0.1", "--port", "0", *cert))
    assert str(keylog) in line and "0644" in line and "chmod 600" in line, line
    assert keylog.read_bytes() == b""


# -- server and client ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_server(cli_env: dict[str, str]) -> Iterator[tuple[Peer, list[str]]]:
    """One ``dtlskit server`` on the development PKI for the client tests of this module."""
    with cli_server(cli_env, "--host", "127.0.0.1", "--port", "0") as (peer, command):
        yield peer, client_args(command)


def test_server_prints_a_client_command_that_works(
    cli_env: dict[str, str], dev_server: tuple[Peer, list[str]]
) -> None:
    peer, command = dev_server
    assert command[1] == "127.0.0.1" and "--ca" in command
    result = run(cli_env, *command, "--message", "hi", "-m", "there", "--count", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hi", "hi", "there", "there"]
    assert result.stderr == ""
    peer.wait_for("closed the session (4 message(s) echoed)")


def test_client_reads_lines_from_stdin(
    cli_env: dict[str, str], dev_server: tuple[Peer, list[str]]
) -> None:
    _, command = dev_server
    result = run(cli_env, *command, stdin="first line\n\nsecond line\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["first line", "second line"]


def test_client_verbose_reports_the_handshake(
    cli_env: dict[str, str], dev_server: tuple[Peer, list[str]]
) -> None:
    _, command = dev_server
    result = run(cli_env, *command, "-m", "x", "-v")
    assert result.returncode == 0
    assert re.search(r"connected to 127\.0\.0\.1:\d+ in [\d.]+ ms: DTLSv1\.2", result.stderr)


def test_client_with_the_wrong_ca(
    cli_env: dict[str, str], dev_server: tuple[Peer, list[str]], other_pki: PKIFiles
) -> None:
    _, command = dev_server
    host, port = command[1], command[2]
    line = one_error_line(
        run(cli_env, "client", host, port, "--ca", str(other_pki.ca_cert), "-m", "x")
    )
    assert "certificate verification failed" in line and "local issuer" in line


def test_client_with_the_wrong_server_name(
    cli_env: dict[str, str], dev_server: tuple[Peer, list[str]]
) -> None:
    _, command = dev_server
    line = one_error_line(run(cli_env, *command, "--server-name", "other.example", "-m", "x"))
    assert "certificate verification failed" in line and "mismatch" in line


def test_client_no_verify(cli_env: dict[str, str], dev_server: tuple[Peer, list[str]]) -> None:
    _, command = dev_server
    host, port = command[1], command[2]
    verbose = run(cli_env, "client", host, port, "--no-verify", "-m", "trust me", "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == "trust me\n"
    assert "NOT verified" in verbose.stderr
    # At the default verbosity the only stderr line is the warning that nothing is verified.
    quiet = run(cli_env, "client", host, port, "--no-verify", "-m", "trust me")
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.splitlines()
    assert len(lines) == 1 and SECURITY in lines[0], quiet.stderr
    assert "does not verify the server's certificate" in lines[0]


def test_client_that_verifies_prints_no_warning(
    cli_env: dict[str, str], dev_server: tuple[Peer, list[str]]
) -> None:
    _, command = dev_server
    result = run(cli_env, *command, "-m", "checked")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "checked\n" and result.stderr == ""


def test_client_debug_shows_the_traceback(cli_env: dict[str, str]) -> None:
    result = run(
        cli_env, "client", "127.0.0.1", str(free_udp_port()), "--no-verify", "-m", "x", "--debug"
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConnectionRefused" in result.stderr


def test_client_to_a_closed_port(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "client", "127.0.0.1", str(free_udp_port()), "--no-verify", "-m", "x")
    assert "refused" in one_error_line(result)


def test_client_to_a_silent_port_times_out(cli_env: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = run(
            cli_env, "client", "127.0.0.1", str(port), "--no-verify", "-m", "x", "--timeout", "1"
        )
    line = one_error_line(result)
    assert "timed out" in line and "1 s" in line


def test_server_sigterm_closes_sessions_and_exits_0(cli_env: dict[str, str]) -> None:
    with cli_server(cli_env, "--host", "127.0.0.1", "--port", "0") as (peer, command):
        args = client_args(command)
        port = int(command_port(command))
        ca = args[args.index("--ca") + 1]
        config = dtlskit.DTLSConfiguration.client(cafile=ca)
        with dtlskit.sync.connect("127.0.0.1", port, config=config, timeout=10) as channel:
            channel.send(b"ping")
            assert channel.recv(timeout=10) == b"ping"
            peer.wait_for("connected: DTLSv1.2")
            assert stop_with(peer, signal.SIGTERM) == 0
            # The server said goodbye with close_notify before exiting.
            with pytest.raises(dtlskit.ConnectionClosedByPeer):
                channel.recv(timeout=10)
        peer.wait_for("received SIGTERM")
        peer.wait_for("session closed by the server (1 message(s) echoed)")


def test_server_sigint_exits_0(cli_env: dict[str, str]) -> None:
    with cli_server(cli_env, "--host", "127.0.0.1", "--port", "0") as (peer, _):
        assert stop_with(peer, signal.SIGINT) == 0


def test_server_with_required_client_certificates(cli_env: dict[str, str]) -> None:
    with cli_server(cli_env, "--host", "127.0.0.1", "--port", "0", "--require-client-cert") as (
        peer,
        command,
    ):
        args = client_args(command)
        port = command_port(command)
        assert "--cert" in args and "--key" in args
        result = run(cli_env, *args, "-m", "mutual")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "mutual\n"
        peer.wait_for("client certificate CN=dtlskit client")
        ca = args[args.index("--ca") + 1]
        refused = run(cli_env, "client", "127.0.0.1", port, "--ca", ca, "-m", "x", "--timeout", "5")
        line = one_error_line(refused)
        assert "certificate required" in line and "--cert" in line


def test_server_with_workers(cli_env: dict[str, str]) -> None:
    with cli_server_on_a_fixed_port(cli_env, "--host", "127.0.0.1", "--workers", "2") as (
        peer,
        command,
    ):
        for index in range(3):
            result = run(cli_env, *client_args(command), "-m", f"w{index}")
            assert result.returncode == 0, result.stderr
            assert result.stdout == f"w{index}\n"
        assert stop_with(peer, signal.SIGTERM) == 0


def test_server_with_given_certificate(cli_env: dict[str, str], pki: PKIFiles) -> None:
    argv = [
        sys.executable,
        "-m",
        "dtlskit",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.server_key),
        "--mtu",
        "576",
    ]
    peer = Peer(argv, env=cli_env)
    try:
        banner = peer.wait_for("DTLS echo on 127.0.0.1:")
        port = banner.split("DTLS echo on 127.0.0.1:", 1)[1].split()[0]
        result = run(
            cli_env, "client", "localhost", str(port), "--ca", str(pki.ca_cert), "-m", "own cert"
        )
        assert result.stdout == "own cert\n", result.stderr
        assert stop_with(peer, signal.SIGTERM) == 0
    finally:
        peer.stop()


def test_server_with_an_unloadable_key_is_one_line(cli_env: dict[str, str], pki: PKIFiles) -> None:
    result = run(
        cli_env,
        "server",
        "--port",
        "0",
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.client_key),
    )
    line = one_error_line(result)
    assert "do not belong together" in line, line
    assert str(pki.server_cert) in line and str(pki.client_key) in line, line
    assert "OpenSSL" not in line, line


def test_client_with_a_key_of_another_certificate_is_one_line(
    cli_env: dict[str, str], pki: PKIFiles
) -> None:
    # The configuration fails before any datagram is sent: no server is needed on the port.
    result = run(
        cli_env,
        "client",
        "127.0.0.1",
        "9",
        "--ca",
        str(pki.ca_cert),
        "--cert",
        str(pki.client_cert),
        "--key",
        str(pki.server_key),
        "-m",
        "x",
    )
    line = one_error_line(result)
    assert "do not belong together" in line, line
    assert str(pki.client_cert) in line and str(pki.server_key) in line, line


# -- plain UDP ------------------------------------------------------------------------------------


def test_udp_transport_round_trip(cli_env: dict[str, str]) -> None:
    with cli_server(cli_env, "--host", "127.0.0.1", "--port", "0", "--transport", "udp") as (
        peer,
        command,
    ):
        args = client_args(command)
        assert args[-2:] == ["--transport", "udp"]
        result = run(cli_env, *args, "-m", "plain", "-m", "text")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["plain", "text"]
        lines = run(cli_env, *args, stdin="a\nb\n")
        assert lines.stdout.splitlines() == ["a", "b"]
        peer.wait_for("sent its first datagram")
        assert stop_with(peer, signal.SIGTERM) == 0
        peer.wait_for("stopped: 4 datagrams echoed")


def test_udp_client_to_a_closed_port(cli_env: dict[str, str]) -> None:
    result = run(
        cli_env, "client", "127.0.0.1", str(free_udp_port()), "--transport", "udp", "-m", "x"
    )
    assert "refused" in one_error_line(result)


def test_workers_need_a_fixed_port(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "server", "--port", "0", "--workers", "2")
    assert result.returncode == 2 and "--workers needs a fixed --port" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("server", "--port", "70000"),
        ("server", "--port", "-1"),
        ("client", "127.0.0.1", "65536", "-m", "x"),
        ("client", "127.0.0.1", "4433x", "-m", "x"),
    ],
)
def test_port_out_of_range_is_a_usage_error(cli_env: dict[str, str], args: tuple[str, ...]) -> None:
    result = run(cli_env, *args)
    assert result.returncode == 2, result
    assert "0..65535" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need os.fork")
def test_workers_on_a_taken_port_is_one_line(cli_env: dict[str, str], pki: PKIFiles) -> None:
    files = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        result = run(
            cli_env, "server", *files, "--host", "127.0.0.1", "--port", port, "--workers", "2"
        )
    assert "address already in use" in one_error_line(result)
    assert result.stdout == ""  # no banner for a server that never listened


def test_udp_transport_rejects_tls_flags(cli_env: dict[str, str], pki: PKIFiles) -> None:
    result = run(
        cli_env,
        "client",
        "127.0.0.1",
        "9",
        "--transport",
        "udp",
        "--ca",
        str(pki.ca_cert),
        "-m",
        "x",
    )
    assert result.returncode == 2 and "--ca has no meaning with --transport udp" in result.stderr


# -- help -----------------------------------------------------------------------------------------


def _leaf_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaf_parsers(sub, (*path, name))


COMMANDS = [path for path, _ in _leaf_parsers(build_parser())]


def test_every_command_is_listed() -> None:
    assert {
        ("demo",),
        ("server",),
        ("client",),
        ("certs", "init"),
        ("certs", "sign-csr"),
        ("certs", "show"),
    } <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "dtlskit")
def test_help_documents_every_flag(cli_env: dict[str, str], path: tuple[str, ...]) -> None:
    parser = dict(_leaf_parsers(build_parser()))[path]
    result = run(cli_env, *path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dtlskit")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{action.option_strings or action.dest} has no help text"
        for flag in action.option_strings:
            assert flag in result.stdout


def test_console_script_and_version(cli_env: dict[str, str]) -> None:
    script = Path(sys.executable).with_name("dtlskit")
    if not script.exists():
        pytest.skip("the dtlskit console script is not installed next to this Python")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, env=cli_env, timeout=RUN_TIMEOUT
    )
    assert result.stdout.strip() == (
        f"dtlskit {dtlskit.__version__} (accelerator: {dtlskit.ACCELERATOR})"
    )
    off = subprocess.run(
        [str(script), "--version"],
        capture_output=True,
        text=True,
        env={**cli_env, "DTLSKIT_NATIVE": "0"},
        timeout=RUN_TIMEOUT,
    )
    assert off.stdout.strip() == f"dtlskit {dtlskit.__version__} (accelerator: python)"


def test_psk_server_and_client(cli_env: dict[str, str]) -> None:
    """`dtlskit server --psk` runs PSK-only (no certificate) and prints the client command."""
    psk = "sensor-7:00112233445566778899aabbccddeeff"
    with cli_server(cli_env, "--host", "127.0.0.1", "--port", "0", "--psk", psk) as (_, hint):
        port = command_port(hint)
        assert f"--psk {psk}" in hint
        ok = run(cli_env, "client", "127.0.0.1", port, "--psk", psk, "-m", "over psk")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.splitlines() == ["over psk"]
        wrong = run(
            cli_env,
            "client",
            "127.0.0.1",
            port,
            "--psk",
            "sensor-7:ffff",
            "-m",
            "x",
            "--timeout",
            "3",
        )
        assert "PSK" in one_error_line(wrong)


def test_client_session_file_resumes(cli_env: dict[str, str], tmp_path: Path) -> None:
    session_file = tmp_path / "session.bin"
    with cli_server(cli_env, "--host", "127.0.0.1", "--port", "0") as (_, hint):
        port = command_port(hint)
        ca = hint.split("--ca", 1)[1].split()[0]
        common = ("client", "127.0.0.1", port, "--ca", ca, "--server-name", "localhost")
        first = run(cli_env, *common, "--session-file", str(session_file), "-m", "one")
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == ["session reused: no", "one"]
        assert session_file.stat().st_size > 0
        second = run(cli_env, *common, "--session-file", str(session_file), "-m", "two")
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines() == ["session reused: yes", "two"]


def test_bad_psk_flag_is_a_usage_error(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "client", "127.0.0.1", "9", "--psk", "no-key-here", "-m", "x")
    assert result.returncode == 2
    assert "IDENTITY:HEXKEY" in result.stderr


def test_bench_is_reachable_from_the_command_line(cli_env: dict[str, str]) -> None:
    """`dtlskit bench` hands its flags to the benchmark harness (the run itself is tested in
    tests/test_benchmarks.py)."""
    result = run(cli_env, "bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "ceiling" in result.stdout
    listed = run(cli_env, "--help")
    assert "bench" in listed.stdout


def test_client_recv_buffer_size_flag(
    cli_env: dict[str, str], dev_server: tuple[Peer, list[str]]
) -> None:
    _, command = dev_server
    result = run(cli_env, *command, "--recv-buffer-size", "65536", "--message", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hi"]
    result = run(cli_env, *command, "--recv-buffer-size", "100", "--message", "hi")
    assert result.returncode != 0
    assert "recv_buffer_size" in result.stderr and len(result.stderr.splitlines()) == 1
