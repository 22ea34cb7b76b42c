"""Session resumption through the front ends: ``connect(..., session=)``, ``Channel.session`` and
``Channel.session_reused`` on both sides, in asyncio and blocking flavours, with sessions kept as
objects, as bytes and in files; a session another server issued; and SO_REUSEPORT workers that
resume each other's sessions (one OpenSSL context, built before they fork)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import dtlskit
from dtlskit import sync
from dtlskit.asyncio import Channel, connect, serve
from dtlskit.certs import PKIFiles
from dtlskit.core.session import Session
from tests.helpers import WAIT
from tests.peers import serving

SERVER_SCRIPT = Path(__file__).resolve().parent / "asyncio" / "server_process.py"

KEEPERS = ("object", "bytes", "file")


def keep(session: Session | None, how: str, directory: Path) -> Session:
    """``session`` as a later program would get it back: the object, bytes, or a file."""
    assert isinstance(session, Session)
    if how == "object":
        return session
    if how == "bytes":
        data = session.to_bytes()
        assert isinstance(data, bytes) and data
        return Session.from_bytes(data)
    path = directory / "session.bin"
    session.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the master secret
    return Session.load(path)


# -- asyncio ------------------------------------------------------------------------------------


async def asyncio_round(
    port: int, config: dtlskit.DTLSConfiguration, session: Session | None = None
) -> tuple[Session | None, bool, Any]:
    """Connect (offering ``session``), echo once, close: (session, reused, peer certificate)."""
    async with connect("127.0.0.1", port, config=config, session=session, timeout=WAIT) as ch:
        await ch.send(b"ping")
        assert await asyncio.wait_for(ch.recv(), WAIT) == b"ping"
        return ch.session, ch.session_reused, ch.peer_certificate


def recording_handler(record: list[bool]) -> Callable[[Channel], Awaitable[None]]:
    async def handler(channel: Channel) -> None:
        record.append(channel.session_reused)  # before the echo: recorded once the client has it
        async for message in channel:
            await channel.send(message)

    return handler


@pytest.mark.parametrize("how", KEEPERS)
def test_asyncio_resumes_a_session(
    how: str,
    tmp_path: Path,
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
) -> None:
    server_side: list[bool] = []

    async def main() -> None:
        async with serve(
            recording_handler(server_side), "127.0.0.1", 0, config=server_config
        ) as server:
            port = server.addresses[0][1]
            session, reused, _ = await asyncio_round(port, client_config)
            assert not reused
            kept = keep(session, how, tmp_path)
            assert kept.server_name == "localhost"
            again, reused, certificate = await asyncio_round(port, client_config, kept)
            assert reused
            assert certificate is not None  # the resumed session still names the server
            # A resumed session can be resumed again.
            _, reused, _ = await asyncio_round(port, client_config, again)
            assert reused
            assert server.statistics().handshakes_completed == 3

    asyncio.run(asyncio.wait_for(main(), 60))
    assert server_side == [False, True, True]


@pytest.mark.parametrize("other", ["other PKI", "same certificate, other server"])
def test_asyncio_session_of_another_server_costs_a_full_handshake(
    other: str,
    pki: PKIFiles,
    other_pki: PKIFiles,
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
) -> None:
    if other == "other PKI":
        second_server = dtlskit.DTLSConfiguration.server(
            other_pki.server_cert, other_pki.server_key
        )
        second_client = dtlskit.DTLSConfiguration.client(
            cafile=other_pki.ca_cert, server_hostname="localhost"
        )
    else:
        second_server, second_client = server_config, client_config
    first_side: list[bool] = []
    second_side: list[bool] = []

    async def main() -> None:
        async with serve(
            recording_handler(first_side), "127.0.0.1", 0, config=server_config
        ) as first:
            session, _, _ = await asyncio_round(first.addresses[0][1], client_config)
        async with serve(
            recording_handler(second_side), "127.0.0.1", 0, config=second_server
        ) as second:
            port = second.addresses[0][1]
            fresh, reused, certificate = await asyncio_round(port, second_client, session)
            assert not reused
            # A full handshake: the second server's own certificate was sent and checked.
            assert certificate is not None
            expected_ca = other_pki if other == "other PKI" else pki
            ca_subject = _subject(expected_ca.ca_cert)
            assert certificate.issuer.rfc4514_string() == ca_subject
            # ... and its session resumes there.
            _, reused, _ = await asyncio_round(port, second_client, fresh)
            assert reused

    asyncio.run(asyncio.wait_for(main(), 60))
    assert first_side == [False]
    assert second_side == [False, True]


def _subject(cert_path: Path) -> str:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.subject.rfc4514_string()


# -- blocking -----------------------------------------------------------------------------------


def sync_round(
    port: int, config: dtlskit.DTLSConfiguration, session: Session | None = None
) -> tuple[Session | None, bool, Any]:
    with sync.connect("127.0.0.1", port, config=config, session=session, timeout=WAIT) as ch:
        ch.send(b"ping")
        assert ch.recv(timeout=WAIT) == b"ping"
        return ch.session, ch.session_reused, ch.peer_certificate


def sync_recording_handler(record: list[bool]) -> Callable[[sync.Channel], None]:
    lock = threading.Lock()

    def handler(channel: sync.Channel) -> None:
        with lock:
            record.append(channel.session_reused)
        for message in channel:
            channel.send(message)

    return handler


@pytest.mark.parametrize("how", KEEPERS)
def test_sync_resumes_a_session(
    how: str,
    tmp_path: Path,
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
) -> None:
    server_side: list[bool] = []
    with sync.serve(
        sync_recording_handler(server_side), "127.0.0.1", 0, config=server_config
    ) as server:
        port = server.addresses[0][1]
        session, reused, _ = sync_round(port, client_config)
        assert not reused
        again, reused, certificate = sync_round(port, client_config, keep(session, how, tmp_path))
        assert reused and certificate is not None
        _, reused, _ = sync_round(port, client_config, again)
        assert reused
        assert server.statistics().handshakes_completed == 3
    assert server_side == [False, True, True]


def test_sync_session_of_another_server_costs_a_full_handshake(
    other_pki: PKIFiles,
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
) -> None:
    other_server = dtlskit.DTLSConfiguration.server(other_pki.server_cert, other_pki.server_key)
    other_client = dtlskit.DTLSConfiguration.client(
        cafile=other_pki.ca_cert, server_hostname="localhost"
    )
    second_side: list[bool] = []
    with sync.serve(sync_recording_handler([]), "127.0.0.1", 0, config=server_config) as first:
        session, _, _ = sync_round(first.addresses[0][1], client_config)
    with sync.serve(
        sync_recording_handler(second_side), "127.0.0.1", 0, config=other_server
    ) as second:
        _, reused, certificate = sync_round(second.addresses[0][1], other_client, session)
        assert not reused
        assert certificate is not None
        assert certificate.issuer.rfc4514_string() == _subject(other_pki.ca_cert)
    assert second_side == [False]


# -- SO_REUSEPORT workers -----------------------------------------------------------------------


def test_workers_resume_each_others_sessions(
    pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    def argv(port: int) -> list[str]:
        return [
            sys.executable,
            str(SERVER_SCRIPT),
            "--mode=workers",
            "--workers=2",
            f"--port={port}",
            f"--cert={pki.server_cert}",
            f"--key={pki.server_key}",
        ]

    with serving(argv, ready="listening on", ready_count=2) as (peer, port):
        listening = peer.wait_for_lines("listening on", 2, WAIT)
        workers = {int(line.split()[0]) for line in listening}
        assert len(workers) == 2 and peer.process.pid not in workers

        async def ask_pid(session: Session | None) -> tuple[int, Session | None, bool]:
            # Each connect() opens a new socket: a new source port, so the kernel's
            # SO_REUSEPORT hash picks a worker afresh.
            async with connect("127.0.0.1", port, config=client_config, session=session) as ch:
                await ch.send(b"pid?")
                pid = int(await asyncio.wait_for(ch.recv(), WAIT))
                return pid, ch.session, ch.session_reused

        async def main() -> tuple[int, list[tuple[int, bool]]]:
            first_pid, session, reused = await ask_pid(None)
            assert not reused
            resumed: list[tuple[int, bool]] = []
            for _ in range(40):  # bounded; 2 ** -39 odds that one worker takes them all
                pid, _, reused = await ask_pid(session)
                resumed.append((pid, reused))
                if {pid for pid, _ in resumed} == workers:
                    break
            return first_pid, resumed

        first_pid, resumed = asyncio.run(asyncio.wait_for(main(), 120))
        print(f"\nfirst handshake served by {first_pid}; resumptions (pid, reused): {resumed}")
        assert first_pid in workers
        assert {pid for pid, _ in resumed} == workers, resumed  # both workers served a resumption
        assert all(reused for _, reused in resumed), resumed  # every reconnect was resumed
        # Stop the supervisor by its PID: it stops its workers and exits 0.
        os.kill(peer.process.pid, signal.SIGTERM)
        try:
            code = peer.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:  # pragma: no cover - the failure tested for
            raise AssertionError("server ignored SIGTERM:\n" + "\n".join(peer.seen)) from None
        assert code == 0
        for pid in workers:  # and no worker outlived it
            assert not _alive(pid), f"worker {pid} still running"


def _alive(pid: int) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie is dead for our purposes: the supervisor (its parent) has exited.
        try:
            with open(f"/proc/{pid}/stat") as status:
                if status.read().split(")")[-1].split()[0] == "Z":
                    return False
        except OSError:
            return False
        time.sleep(0.05)
    return True
