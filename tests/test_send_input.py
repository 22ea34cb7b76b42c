"""What `send()` accepts in both flavours: non-empty bytes-like objects; anything else is
`InvalidMessage`.

Every server runs on loopback, every wait is bounded, and every process a test starts runs in a
session of its own and is ended through its own process group.
"""

import asyncio
from typing import Any

import pytest

import dtlskit
from dtlskit import asyncio as aio
from dtlskit import sync
from tests.helpers import WAIT, aecho, run, secho

# -- 5. what send() accepts ---------------------------------------------------------------------

NOT_BYTES: list[Any] = [5, 10**9, [65, 66], "text", None, object()]


def check_refusal(bad: Any, error: BaseException) -> None:
    assert isinstance(error, dtlskit.InvalidMessage) and isinstance(error, ValueError), error
    if isinstance(bad, str):
        assert "encode" in str(error)
    if isinstance(bad, bytes | memoryview):
        assert "empty" in str(error)


REFUSED: list[Any] = [*NOT_BYTES, b"", memoryview(b"")]


def test_asyncio_send_accepts_only_bytes(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with aio.connect("127.0.0.1", port, config=client_config) as channel:
                for bad in REFUSED:
                    with pytest.raises(dtlskit.DTLSError) as info:
                        await channel.send(bad)
                    check_refusal(bad, info.value)
                await channel.send(memoryview(b"still fine"))
                assert await asyncio.wait_for(channel.recv(), WAIT) == b"still fine"
                assert not channel.closed

    run(main())


def test_sync_send_accepts_only_bytes(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    with (
        sync.serve(secho, "127.0.0.1", 0, config=server_config) as server,
        sync.connect("127.0.0.1", server.addresses[0][1], config=client_config) as channel,
    ):
        for bad in REFUSED:
            with pytest.raises(Exception) as info:
                channel.send(bad)
            check_refusal(bad, info.value)
        channel.send(bytearray(b"still fine"))
        assert channel.recv(timeout=WAIT) == b"still fine"
