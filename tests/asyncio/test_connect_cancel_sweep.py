"""Adversarial review of issue 8, defect 7: cancel an asyncio ``connect()`` after N turns of the
event loop, for every N from 0 to 50, against a live server (so late cancels land during the
handshake, and the latest after it), by name and by address.

Every time: a cancel that was delivered (``Task.cancel()`` returned True) ends the task with
CancelledError, never a channel; a connect that finished first gives a channel that closes;
nothing is logged at ERROR (no "exception was never retrieved"); no file descriptor is left open.
Loop turns order the cancel (``asyncio.sleep(0)``); no time is measured.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

import pytest

import dtlskit
from dtlskit.asyncio import Channel, connect, serve


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_cancel_after_every_number_of_loop_turns(
    host: str,
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def echo(channel: Channel) -> None:
        async for message in channel:
            await channel.send(message)

    async def main() -> dict[str, int]:
        outcomes = {"cancelled": 0, "connected": 0}
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            baseline = open_fds()
            for turns in range(51):
                task = asyncio.ensure_future(
                    connect(host, port, config=client_config, timeout=30.0)
                )
                for _ in range(turns):
                    await asyncio.sleep(0)
                delivered = task.cancel()
                try:
                    channel = await task
                except asyncio.CancelledError:
                    assert delivered, f"cancelled without a cancel after {turns} turns"
                    outcomes["cancelled"] += 1
                else:
                    assert not delivered, f"cancel lost after {turns} turns"
                    outcomes["connected"] += 1
                    channel.close()
                    await channel.wait_closed()
                for _ in range(5):  # transports close on the next turns
                    await asyncio.sleep(0)
                gc.collect()
                assert open_fds() == baseline, f"descriptor leaked after {turns} turns"
        return outcomes

    outcomes = asyncio.run(asyncio.wait_for(main(), 120))
    gc.collect()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert outcomes["cancelled"] >= 1, outcomes
