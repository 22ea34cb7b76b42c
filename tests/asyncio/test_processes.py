"""The asyncio server as a process: SO_REUSEPORT workers and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import dtlskit
from dtlskit.asyncio import connect
from dtlskit.certs import PKIFiles
from tests.helpers import WAIT
from tests.peers import Peer, running, serving

SCRIPT = Path(__file__).with_name("server_process.py")


def script(pki: PKIFiles, *args: str) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        f"--cert={pki.server_cert}",
        f"--key={pki.server_key}",
        *args,
    ]


def stop_and_wait(peer: Peer) -> int:
    """SIGTERM to the process we started, by PID; its exit code."""
    os.kill(peer.process.pid, signal.SIGTERM)
    try:
        return peer.process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:  # pragma: no cover - the failure being tested for
        raise AssertionError("server ignored SIGTERM:\n" + "\n".join(peer.seen)) from None


def drain_output(peer: Peer) -> list[str]:
    """Every line the (exited) process printed."""
    peer._reader.join(timeout=WAIT)
    while True:
        try:
            peer.seen.append(peer.lines.get_nowait())
        except queue.Empty:
            return peer.seen


def assert_clean(output: list[str]) -> None:
    bad = [line for line in output if "Traceback" in line or "Warning" in line]
    assert not bad, "\n".join(output)


# -- 11. workers --------------------------------------------------------------------------------


def test_two_workers_share_one_port(
    pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    def argv(port: int) -> list[str]:
        return script(pki, "--mode=workers", "--workers=2", f"--port={port}")

    with serving(argv, ready="listening on", ready_count=2) as (peer, port):
        listening = peer.wait_for_lines("listening on", 2, WAIT)
        assert len({line.split()[0] for line in listening}) == 2  # two worker PIDs

        async def main() -> set[int]:
            pids: set[int] = set()
            for _ in range(40):  # bounded: each new client gets a new source port
                async with connect("127.0.0.1", port, config=client_config) as channel:
                    await channel.send(b"pid?")
                    pids.add(int(await asyncio.wait_for(channel.recv(), WAIT)))
                    await channel.send(b"echo")
                    assert await asyncio.wait_for(channel.recv(), WAIT) == b"echo"
                if len(pids) == 2:
                    break
            return pids

        pids = asyncio.run(asyncio.wait_for(main(), 60))
        assert len(pids) == 2
        assert peer.process.pid not in pids  # the parent only supervises
        assert stop_and_wait(peer) == 0
        assert_clean(drain_output(peer))


# -- 12. SIGTERM --------------------------------------------------------------------------------


def test_sigterm_closes_sessions_with_close_notify_and_exits_0(
    pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    with running(script(pki, "--mode=signals")) as peer:
        ready = peer.wait_for("READY", WAIT)
        port = int(ready.split()[2])

        async def main() -> None:
            async with connect("127.0.0.1", port, config=client_config) as channel:
                await channel.send(b"still there?")
                assert await asyncio.wait_for(channel.recv(), WAIT) == b"still there?"
                code = await asyncio.to_thread(stop_and_wait, peer)
                assert code == 0
                with pytest.raises(dtlskit.ConnectionClosedByPeer):
                    await asyncio.wait_for(channel.recv(), WAIT)

        asyncio.run(asyncio.wait_for(main(), 30))
        output = drain_output(peer)
        closed = [line for line in output if line.startswith("CLOSED ")]
        assert len(closed) == 1
        stats = json.loads(closed[0][len("CLOSED ") :])
        assert stats["handshakes_completed"] == 1
        assert stats["sessions"] == 0
        assert_clean(output)
