"""Hibernated sessions through both front ends on real loopback sockets, and in asyncio worker
processes: ``Limits(hibernate_after=...)`` on either side, ``channel.hibernated``, echo before
and after, and a clean close."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

import dtlskit
from dtlskit import sync
from dtlskit.asyncio import Channel, connect, serve
from tests.asyncio.test_processes import assert_clean, drain_output, script, stop_and_wait
from tests.peers import free_udp_port, serving

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


SYNC_WORKERS = textwrap.dedent(
    """
    import os, sys
    from dtlskit import DTLSConfiguration, Limits, sync

    def handler(channel):
        for message in channel:
            channel.send(f"{os.getpid()} {channel.hibernated}".encode())

    cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limits = Limits(hibernate_after=0)
    config = DTLSConfiguration.server(cert, key, handshake_timeout=5.0, limits=limits)
    server = sync.serve(handler, "127.0.0.1", port, config=config, workers=2)
    print("supervisor ready", flush=True)
    server.serve_forever()
    print("supervisor done", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need os.fork")
def test_sync_workers_with_hibernation(tmp_path, pki, client_config):
    script_file = tmp_path / "workers.py"
    script_file.write_text(SYNC_WORKERS)
    port = free_udp_port()
    process = subprocess.Popen(
        [sys.executable, str(script_file), str(pki.server_cert), str(pki.server_key), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"supervisor ready"
        pids: set[int] = set()
        failures: list[BaseException] = []
        config = client_config.replace(handshake_timeout=3.0)
        for _ in range(200):  # bounded attempts; each uses a new source port
            try:
                with sync.connect("127.0.0.1", port, config=config) as channel:
                    channel.send(b"who?")
                    pid, hibernated = channel.recv(timeout=WAIT).split()
                    assert hibernated == b"True"
                    pids.add(int(pid))
            except dtlskit.DTLSError as exc:  # workers still binding
                failures.append(exc)
                time.sleep(0.05)
            if len(pids) == 2:
                break
        assert len(pids) == 2, f"served by {pids}; failures: {failures[-3:]}"
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0
        assert "Traceback" not in process.stdout.read().decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=WAIT)
        if process.stdout is not None:
            process.stdout.close()
