"""``-v`` / ``-vv`` / ``--debug`` of ``dtlskit client`` each show more: the handshake's
flights, alerts and session resumption at ``-v``, every datagram at ``-vv``."""

from __future__ import annotations

import dtlskit
from dtlskit import sync
from dtlskit.certs import PKIFiles
from tests.cli.test_client import client, exit_status, server_with
from tests.peers import Peer


def echo(channel: sync.Channel) -> None:
    for message in channel:
        channel.send(message)


def output_of(peer: Peer) -> list[str]:
    try:
        status = exit_status(peer)
        # (flags as whole arguments: a path such as a venv named "...-venv" holds "-v" too)
        verbose = any(flag in peer.argv for flag in ("-v", "-vv", "--debug"))
        peer.wait_for("closed:" if verbose else "hi", timeout=10)
    finally:
        peer.stop()
    assert status == 0, peer.seen
    return peer.seen


def run_client(pki: PKIFiles, config: dtlskit.DTLSConfiguration, *flags: str) -> list[str]:
    with server_with(echo, config) as port:
        return output_of(client(port, pki, "-m", "hi", *flags))


def test_default_shows_only_the_replies(pki, server_config):
    assert run_client(pki, server_config) == ["hi"]


def test_v_shows_the_flights_but_not_the_datagrams(pki, server_config):
    lines = run_client(pki, server_config, "-v")
    text = "\n".join(lines)
    assert "dtlskit.handshake: 127.0.0.1:" in text
    assert "sent ClientHello" in text
    assert "received ServerHello, Certificate, ServerKeyExchange, ServerHelloDone" in text
    assert "handshake complete (DTLSv1.2" in text
    assert "dtlskit.datagrams" not in text


def test_vv_and_debug_also_show_every_datagram(pki, server_config):
    for flag in ("-vv", "--debug"):
        text = "\n".join(run_client(pki, server_config, flag))
        assert "dtlskit.datagrams: 127.0.0.1:" in text and " bytes: ClientHello" in text
        assert "sent ClientHello" in text


def test_v_says_why_a_saved_session_was_not_resumed(pki, server_config, tmp_path):
    session_file = str(tmp_path / "session")
    with server_with(echo, server_config) as port:
        first = output_of(client(port, pki, "-m", "hi", "-v", "--session-file", session_file))
        assert any("no session saved in" in line for line in first)
        again = output_of(
            client(port, pki, "-m", "hi", "-v", "--session-file", session_file, "--no-verify")
        )
    text = "\n".join(again)
    assert "session reused: no" in text
    assert "session not resumed: the session was made under other verification settings" in text
