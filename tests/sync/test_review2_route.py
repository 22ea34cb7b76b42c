"""Adversarial review of the datagram route (blocking flavour): what a peer makes the server
hold goes back to the server's byte budget however the session ends."""

from __future__ import annotations

import gc
import warnings

from dtlskit import sync
from tests.sync.test_route import LIMITS, WAIT, wait_until


def test_an_ended_channel_dropped_unclosed_gives_its_bytes_back(server_config, client_config):
    # The peer sends messages then close_notify; the application accepts the channel and drops
    # it without reading or closing. The queued bytes must return to the budget, or a peer
    # repeating this fills the budget and the server refuses every message from everyone.
    config = server_config.replace(limits=LIMITS)
    with sync.listen("127.0.0.1", 0, config=config) as listener:
        port = listener.getsockname()[1]
        client = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
        for _ in range(3):
            client.send(b"x" * 1_000)
        client.close()
        channel = listener.accept(timeout=WAIT)
        inbox = channel._inbox
        wait_until(lambda: inbox.ended)
        io = listener._ios[0]
        assert io.engine.budget.held == 3_000  # all three queued, then the session ended
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del channel
            gc.collect()
        wait_until(lambda: io.engine.budget.held == 0)


def test_a_channel_closed_with_unread_messages_gives_their_bytes_back(
    server_config, client_config
):
    # The accept() style: the application closes a channel without reading what the peer sent
    # (recv may still return it until the channel is gone), then drops it.
    config = server_config.replace(limits=LIMITS)
    with sync.listen("127.0.0.1", 0, config=config) as listener:
        port = listener.getsockname()[1]
        client = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
        try:
            channel = listener.accept(timeout=WAIT)
            for _ in range(3):
                client.send(b"x" * 1_000)
            io = listener._ios[0]
            wait_until(lambda: io.engine.budget.held == 3_000)
            channel.close()
            assert channel.recv(timeout=WAIT) == b"x" * 1_000  # still readable after close
            del channel
            gc.collect()
            wait_until(lambda: io.engine.budget.held == 0)
        finally:
            client.close()
