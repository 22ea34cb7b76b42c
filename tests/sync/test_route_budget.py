"""Adversarial review of the datagram route (blocking flavour): what a peer makes the server
hold goes back to the server's byte budget however the session ends."""

from __future__ import annotations

import gc
import linecache
import sys
import threading
import warnings

from dtlskit import sync
from dtlskit.core.inbox import MESSAGE_OVERHEAD
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
        assert io.engine.budget.held == 3 * (1_000 + MESSAGE_OVERHEAD)  # all three queued
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
            wait_until(lambda: io.engine.budget.held == 3 * (1_000 + MESSAGE_OVERHEAD))
            channel.close()
            assert channel.recv(timeout=WAIT) == b"x" * 1_000  # still readable after close
            del channel
            gc.collect()
            wait_until(lambda: io.engine.budget.held == 0)
        finally:
            client.close()


def _blocked_on_engine_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` is inside Channel.recv, waiting for the engine lock (observed, not
    timed: its top frame is on the line that takes the lock)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None or frame.f_code.co_name != "recv":
        return False
    return "self._io.lock" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)


def test_two_threads_in_recv_never_break_on_one_queued_message(server_config, client_config):
    # Both readers see the one queued message before either takes it; the one that finds the
    # queue empty must wait for the next message (or raise a dtlskit error), not crash.
    with sync.listen("127.0.0.1", 0, config=server_config) as listener:
        port = listener.getsockname()[1]
        client = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
        try:
            channel = listener.accept(timeout=WAIT)
            client.send(b"first")
            wait_until(lambda: channel.pending() == 1)
            got: list[object] = []

            def reader() -> None:
                try:
                    got.append(channel.recv(timeout=WAIT))
                except BaseException as exc:  # recorded for the assertion
                    got.append(exc)

            readers = [threading.Thread(target=reader) for _ in range(2)]
            io = channel._io
            with io.lock:
                for thread in readers:
                    thread.start()
                wait_until(lambda: all(_blocked_on_engine_lock(t) for t in readers))
            client.send(b"second")
            for thread in readers:
                thread.join(WAIT * 2)
            assert sorted(got, key=repr) == [b"first", b"second"], got
        finally:
            client.close()
