"""Hibernated sessions through both front ends on real loopback sockets, and in asyncio worker
processes: ``Limits(hibernate_after=...)`` on either side, ``channel.hibernated``, echo before
and after, and a clean close."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

import dtlskit
from dtlskit import sync
from dtlskit.asyncio import Channel, connect, serve
from tests.asyncio.test_processes import assert_clean, drain_output, script, stop_and_wait
from tests.peers import serving

WAIT = 10.0  # a bound on every wait, never a timing assertion


def limits(after: float | None) -> dtlskit.Limits:
    return dtlskit.Limits(hibernate_after=after)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("after", [0, 0.2], ids=["every", "idle"])
def test_asyncio_echo_on_hibernated_sessions(server_config, client_config, after):
    server_channels: list[Channel] = []

    async def handler(channel: Channel) -> None:
        server_channels.append(channel)
        async for message in channel:
            await channel.send(message)

    async def main() -> None:
        config = server_config.replace(limits=limits(after))
        async with serve(handler, "127.0.0.1", 0, config=config) as server:
            port = server.addresses[0][1]
            client = client_config.replace(limits=limits(after))
            async with connect("127.0.0.1", port, config=client) as channel:
                await channel.send(b"first")
                assert await asyncio.wait_for(channel.recv(), WAIT) == b"first"
                # Idle sessions hibernate on their timer; "every" ones already have.
                await eventually(lambda: channel.hibernated, "the client hibernated")
                await eventually(
                    lambda: bool(server_channels) and server_channels[0].hibernated,
                    "the server session hibernated",
                )
                for message in (b"after", b"x" * 1000, bytes(range(256))):
                    await channel.send(message)
                    assert await asyncio.wait_for(channel.recv(), WAIT) == message
                assert channel.version == "DTLSv1.2" and channel.cipher
                assert channel.peer_certificate is not None
                key = channel.export_keying_material(b"EXPERIMENTAL-test", 32)
                assert key == server_channels[0].export_keying_material(b"EXPERIMENTAL-test", 32)
            await eventually(lambda: server.statistics().sessions == 0, "server forgot the peer")
            assert not server.statistics().drops.get("bad_record")

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("after", [0, 0.2], ids=["every", "idle"])
def test_sync_echo_on_hibernated_sessions(server_config, client_config, after):
    server_channels: list[sync.Channel] = []

    def handler(channel: sync.Channel) -> None:
        server_channels.append(channel)
        for message in channel:
            channel.send(message)

    config = server_config.replace(limits=limits(after))
    with sync.serve(handler, "127.0.0.1", 0, config=config) as server:
        port = server.addresses[0][1]
        client = client_config.replace(limits=limits(after))
        with sync.connect("127.0.0.1", port, config=client, timeout=WAIT) as channel:
            channel.send(b"first")
            assert channel.recv(timeout=WAIT) == b"first"
            wait_until(lambda: channel.hibernated, "the client hibernated")
            wait_until(
                lambda: bool(server_channels) and server_channels[0].hibernated,
                "the server session hibernated",
            )
            for message in (b"after", b"y" * 1000):
                channel.send(message)
                assert channel.recv(timeout=WAIT) == message
            assert channel.session_reused is False
        wait_until(lambda: server.statistics().sessions == 0, "server forgot the peer")


def test_asyncio_workers_with_hibernation(pki, client_config):
    def argv(port: int) -> list[str]:
        return script(pki, "--mode=workers", "--workers=2", f"--port={port}", "--hibernate-after=0")

    with serving(argv, ready="listening on", ready_count=2) as (peer, port):

        async def main() -> set[int]:
            pids: set[int] = set()
            for _ in range(40):  # bounded: each new client gets a new source port
                async with connect("127.0.0.1", port, config=client_config) as channel:
                    await channel.send(b"hibernated?")
                    assert await asyncio.wait_for(channel.recv(), WAIT) == b"True"
                    await channel.send(b"pid?")
                    pids.add(int(await asyncio.wait_for(channel.recv(), WAIT)))
                if len(pids) == 2:
                    break
            return pids

        assert len(asyncio.run(asyncio.wait_for(main(), 60))) == 2
        assert stop_and_wait(peer) == 0
        assert_clean(drain_output(peer))
