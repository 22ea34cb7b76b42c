"""``dtlskit client`` is full duplex (like ``openssl s_client``): it prints what the server
sends when it arrives, notices a close_notify at once, and keeps the replies owed at the end
of its input. The server is a real dtlskit server in this process; the client a real child
process fed through a pipe."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dtlskit
from dtlskit import sync
from dtlskit.certs import PKIFiles
from tests.helpers import WAIT
from tests.peers import Peer


@contextmanager
def server_with(
    handler: Callable[[sync.Channel], None], config: dtlskit.DTLSConfiguration
) -> Iterator[int]:
    """A sync server on 127.0.0.1 running ``handler`` per peer; yields its port."""
    with sync.serve(handler, "127.0.0.1", 0, config=config) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield int(server.addresses[0][1])
        finally:
            server.shutdown()
            thread.join(WAIT)


def client(port: int, pki: PKIFiles, *extra: str) -> Peer:
    return Peer(
        [
            sys.executable,
            "-m",
            "dtlskit",
            "client",
            "127.0.0.1",
            str(port),
            "--ca",
            str(pki.ca_cert),
            "--server-name",
            "localhost",
            *extra,
        ]
    )


def exit_status(peer: Peer) -> int:
    try:
        return peer.process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        peer.stop()
        raise AssertionError("the client did not exit; output:\n" + "\n".join(peer.seen)) from None


def test_what_the_server_sends_first_is_printed_before_any_input(
    pki: PKIFiles, server_config: dtlskit.DTLSConfiguration
) -> None:
    def greet_then_echo(channel: sync.Channel) -> None:
        channel.send(b"welcome, stranger")
        for message in channel:
            channel.send(message)

    with server_with(greet_then_echo, server_config) as port:
        peer = client(port, pki)
        try:
            # Nothing was typed yet: stdin is open and empty.
            peer.wait_for("welcome, stranger", timeout=WAIT)
            peer.write(b"ping\n")
            peer.wait_for("ping", timeout=WAIT)
            assert peer.process.stdin is not None
            peer.process.stdin.close()
            assert exit_status(peer) == 0
        finally:
            peer.stop()


def test_close_notify_ends_the_client_at_once_while_input_is_open(
    pki: PKIFiles, server_config: dtlskit.DTLSConfiguration
) -> None:
    def say_bye(channel: sync.Channel) -> None:
        channel.send(b"going away")
        channel.close()

    with server_with(say_bye, server_config) as port:
        peer = client(port, pki)
        try:
            # stdin stays open (never written, never closed): only the close_notify can end it.
            assert exit_status(peer) == 0
            peer.wait_for("going away", timeout=WAIT)
            peer.wait_for("the server closed the session (close_notify)", timeout=WAIT)
        finally:
            peer.stop()


def test_a_reply_still_owed_at_the_end_of_input_is_printed(
    pki: PKIFiles, server_config: dtlskit.DTLSConfiguration
) -> None:
    release = threading.Event()

    def answer_when_released(channel: sync.Channel) -> None:
        message = channel.recv(timeout=WAIT)
        release.wait(WAIT)
        channel.send(message.upper())
        for _ in channel:  # until the client's close_notify
            pass

    with server_with(answer_when_released, server_config) as port:
        peer = client(port, pki, "-v")
        try:
            peer.write(b"late reply\n")
            assert peer.process.stdin is not None
            peer.process.stdin.close()
            # The client has seen the end of its input and still owes one reply: only now
            # does the server answer.
            peer.wait_for("end of input: waiting up to", timeout=WAIT)
            release.set()
            assert exit_status(peer) == 0
            peer.wait_for("LATE REPLY", timeout=WAIT)
        finally:
            release.set()
            peer.stop()


def test_messages_from_the_command_line_get_every_reply(
    pki: PKIFiles, server_config: dtlskit.DTLSConfiguration
) -> None:
    def echo(channel: sync.Channel) -> None:
        for message in channel:
            channel.send(message)

    with server_with(echo, server_config) as port:
        peer = client(port, pki, "-m", "one", "-m", "two", "--count", "3")
        try:
            assert exit_status(peer) == 0
            assert len(peer.wait_for_lines("one", 3, timeout=WAIT)) == 3
            assert len(peer.wait_for_lines("two", 3, timeout=WAIT)) == 3
        finally:
            peer.stop()
