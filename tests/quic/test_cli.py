"""``dtlskit server|client --transport quic`` as real child processes, in both roles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.peers import Peer

from .peers import PEER_SCRIPT, free_udp_port, picoquic_python, running

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    env.pop("SSLKEYLOGFILE", None)
    return env


def dtlskit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtlskit", *args],
        input="", capture_output=True, text=True, env=env, timeout=TIMEOUT,
    )


def test_cli_echoes_over_quic_and_stops_cleanly(env):
    server = Peer(
        [sys.executable, "-m", "dtlskit", "server", "--transport", "quic", "--host",
         "127.0.0.1", "--port", "0"],
        env=env, stdin=False,
    )
    try:
        line = server.wait_for("connect with:", timeout=30)
        command = line.split("connect with:", 1)[1].split()
        assert command[:2] == ["dtlskit", "client"] and "--transport" in command
        assert "--alpn" in command and "hq-interop" in command
        result = dtlskit(env, *command[1:], "--server-name", "localhost",
                         "--message", "one", "--message", "two")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["one", "two"]
        at = command.index("--alpn")
        without_alpn = command[1:at] + command[at + 2 :]
        refused = dtlskit(env, *without_alpn, "--server-name", "localhost", "--alpn", "h3",
                          "--alpn", "smtp", "--message", "x")
        assert refused.returncode == 1
        assert "we offered ['h3', 'smtp']" in refused.stderr
        assert "the server accepts ['hq-interop', 'http/1.0']" in refused.stderr
        server.wait_for("client offered ['h3', 'smtp']", timeout=30)
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(30) == 0
    finally:
        server.stop()


def test_quic_refuses_flags_it_cannot_honour(env):
    result = dtlskit(env, "server", "--transport", "quic", "--psk", "id:00112233", "--port", "0")
    assert result.returncode != 0 and "--psk with --transport quic" in result.stderr
    result = dtlskit(env, "server", "--transport", "quic", "--require-client-cert", "--port", "0")
    assert "cannot request client certificates" in result.stderr


def test_help_names_quic(env):
    for command in ("server", "client"):
        result = dtlskit(env, command, "--help")
        assert "quic" in result.stdout and "--alpn" in result.stdout


@pytest.mark.interop
@pytest.mark.parametrize("alpn", ["hq-interop", "http/1.0"])
def test_cli_both_roles_against_picoquic(env, pki, alpn):
    python = picoquic_python()
    port = free_udp_port()
    with running([python, str(PEER_SCRIPT), "server", str(port), str(pki.server_cert),
                  str(pki.server_key), alpn]) as peer:
        peer.wait_for_line("ready")
        result = dtlskit(env, "client", "127.0.0.1", str(port), "--transport", "quic",
                         "--alpn", alpn, "--ca", str(pki.ca_cert), "--server-name",
                         "localhost", "--message", "to picoquic")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["to picoquic"]
    server = Peer(
        [sys.executable, "-m", "dtlskit", "server", "--transport", "quic", "--host",
         "127.0.0.1", "--port", "0", "--cert", str(pki.server_cert), "--key",
         str(pki.server_key), "--alpn", alpn],
        env=env, stdin=False,
    )
    try:
        line = server.wait_for("connect with:", timeout=30)
        port = int(line.split("connect with:", 1)[1].split()[3])
        client = subprocess.run(
            [python, str(PEER_SCRIPT), "client", "127.0.0.1", str(port), str(pki.ca_cert),
             alpn, "from picoquic"],
            capture_output=True, text=True, timeout=TIMEOUT,
        )
        assert client.returncode == 0, client.stdout
        assert "echo: from picoquic" in client.stdout
    finally:
        server.stop()
