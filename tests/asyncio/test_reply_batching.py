"""Replies handler tasks send (iterator style) leave together: one send_batch per turn of the
loop, in order, instead of one sendto each (issue 14)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dtlskit.asyncio import Channel, connect, serve
from dtlskit.asyncio import driver as _driver
from dtlskit.exceptions import ConnectionClosedByPeer

WAIT = 10.0  # a safety net for every await: never a timing assertion


class _SendSpy:
    """Wraps the real send_batch (same socket, same OpenSSL records) and records batch sizes."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.sizes: list[int] = []

    def __call__(self, sock: Any, items: list[tuple[bytes, Any]]) -> tuple[int, Any]:
        self.sizes.append(len(items))
        return self.real(sock, items)  # type: ignore[no-any-return]


def test_replies_sent_in_one_turn_leave_in_one_batch_in_order(
    server_config: Any, client_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _SendSpy(_driver._accel.send_batch)
    monkeypatch.setattr(_driver._accel, "send_batch", spy)

    async def replies_three(channel: Channel) -> None:
        async for message in channel:
            spy.sizes.clear()
            for index in range(3):  # no await suspends here: one turn of the loop
                await channel.send(message + bytes([index]))

    async def main() -> None:
        async with serve(replies_three, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            client = await connect("127.0.0.1", port, config=client_config)
            try:
                for round_ in range(3):
                    await client.send(b"m%d" % round_)
                    got = [await asyncio.wait_for(client.recv(), WAIT) for _ in range(3)]
                    assert got == [b"m%d" % round_ + bytes([i]) for i in range(3)]
                    # the three replies went out in one send_batch, none through sendto
                    assert spy.sizes == [3]
            finally:
                client.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_reply_then_close_reaches_the_peer_before_the_close(
    server_config: Any, client_config: Any
) -> None:
    async def reply_and_close(channel: Channel) -> None:
        async for message in channel:
            await channel.send(b"bye " + message)
            channel.close()  # close_notify must not overtake the collected reply
            return

    async def main() -> None:
        async with serve(reply_and_close, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            client = await connect("127.0.0.1", port, config=client_config)
            try:
                await client.send(b"x")
                assert await asyncio.wait_for(client.recv(), WAIT) == b"bye x"
                with pytest.raises(ConnectionClosedByPeer):
                    await asyncio.wait_for(client.recv(), WAIT)
            finally:
                client.close()

    asyncio.run(asyncio.wait_for(main(), 60))
