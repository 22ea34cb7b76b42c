"""The datagram route of the blocking flavour: byte bounds on what peers can make a server hold,
and junk sent to an established session counted (issue 8 defects 1 and 6)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import dtlskit
from dtlskit import sync
from dtlskit.core.inbox import MESSAGE_OVERHEAD
from dtlskit.sync import Channel
from tests.helpers import WAIT


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the bound")
        time.sleep(0.01)


def held_bytes(ios: list) -> tuple[int, list[int]]:
    """Bytes actually queued for the application in every session of a server (measured by
    summing the queued messages, each with its fixed overhead), and per session."""
    per_session = []
    for io in ios:
        with io.lock:
            for conn in io.engine.connections.values():
                inbox = conn.inbox
                per_session.append(
                    sum(len(m) + MESSAGE_OVERHEAD for m in inbox.messages) if inbox else 0
                )
    return sum(per_session), per_session


def received_everything(ios: list, expected: int) -> Callable[[], bool]:
    def check() -> bool:
        total = 0
        for io in ios:
            with io.lock:
                total += sum(
                    c.statistics().messages_received for c in io.engine.connections.values()
                )
        return total >= expected

    return check


LIMITS = dtlskit.Limits(max_queued_bytes=8_000, max_buffered_bytes=20_000)
CLIENTS, MESSAGES, SIZE = 4, 20, 1_000


def flood(port: int, client_config: dtlskit.DTLSConfiguration) -> list[Channel]:
    clients = []
    for _ in range(CLIENTS):
        client = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
        clients.append(client)
        for _ in range(MESSAGES):
            client.send(os.urandom(SIZE))
    return clients


def check_bounded(server: sync.Server | sync.Listener, ios: list) -> None:
    wait_until(received_everything(ios, CLIENTS * MESSAGES))
    total, per_session = held_bytes(ios)
    assert len(per_session) == CLIENTS
    assert all(held <= LIMITS.max_queued_bytes for held in per_session)
    assert total <= LIMITS.max_buffered_bytes
    assert sum(io.engine.budget.held for io in ios) == total  # the budget is exact
    drops = server.statistics().drops
    queued = total // (SIZE + MESSAGE_OVERHEAD)
    assert drops.get("queue_full", 0) + drops.get("server_buffer_full", 0) == (
        CLIENTS * MESSAGES - queued
    )
    assert drops.get("server_buffer_full", 0) > 0  # 4 x 8,000 would pass the 20,000 budget


def test_never_accepted_channels_hold_at_most_the_byte_bounds(server_config, client_config):
    config = server_config.replace(limits=LIMITS)
    with sync.listen("127.0.0.1", 0, config=config) as listener:
        clients = flood(listener.getsockname()[1], client_config)
        try:
            check_bounded(listener, listener._ios)
        finally:
            for client in clients:
                client.close()


def test_a_handler_that_never_reads_holds_at_most_the_byte_bounds(server_config, client_config):
    config = server_config.replace(limits=LIMITS)
    release = threading.Event()

    def never_reads(channel: Channel) -> None:
        release.wait(WAIT * 3)

    with sync.serve(never_reads, "127.0.0.1", 0, config=config) as server:
        clients = flood(server.addresses[0][1], client_config)
        try:
            check_bounded(server, server._ios)
        finally:
            release.set()
            for client in clients:
                client.close()
        # Handlers returned: what their sessions held went back to the budget.
        wait_until(lambda: all(io.engine.budget.held == 0 for io in server._ios))


def junk_records(client: Channel) -> tuple[bytes, list[tuple[bytes, str]]]:
    """A valid record, and junk made from it with the reason the server must count."""
    with client._io.lock:
        record = client._engine.seal(b"hello")
    assert record is not None and record[0] == 23
    bad_mac = record[:-1] + bytes([record[-1] ^ 1])
    next_epoch = record[:3] + b"\x00\x02" + record[5:]
    body = os.urandom(40)
    forged = b"\x17\xfe\xfd\x00\x01" + os.urandom(6) + len(body).to_bytes(2, "big") + body
    return record, [
        (record, "bad_record"),  # a replay (the original is sent first)
        (bad_mac, "bad_record"),
        (next_epoch, "wrong_epoch"),
        (forged, "bad_record"),
        (b"\xff" * 48, "malformed_record"),  # not even a record
    ]


def test_junk_to_an_established_session_is_counted(server_config, client_config):
    with sync.listen("127.0.0.1", 0, config=server_config) as listener:
        port = listener.getsockname()[1]
        with (
            sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as client,
            listener.accept(timeout=WAIT) as server_side,
        ):
            record, junk = junk_records(client)
            client._io.sock.send(record)
            assert server_side.recv(timeout=WAIT) == b"hello"
            for datagram, _ in junk:
                client._io.sock.send(datagram)
            expected: dict[str, int] = {}
            for _, reason in junk:
                expected[reason] = expected.get(reason, 0) + 1
            wait_until(
                lambda: all(
                    server_side.statistics().drops.get(reason, 0) == count
                    for reason, count in expected.items()
                )
            )
            server_drops = listener.statistics().drops
            for reason, count in expected.items():
                assert server_drops.get(reason) == count
            client.send(b"still here")  # junk never tears the session down
            assert server_side.recv(timeout=WAIT) == b"still here"
            server_side.send(b"and back")
            assert client.recv(timeout=WAIT) == b"and back"


def test_kernel_drops_and_the_granted_receive_buffer_are_reported(server_config):
    config = server_config.replace(recv_buffer_size=4096)
    with sync.listen("127.0.0.1", 0, config=config) as listener:
        sock = listener.sockets[0]
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert listener.statistics().receive_buffer_bytes == granted
        assert listener.statistics().kernel_drops == 0
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with listener._ios[0].lock:  # the I/O thread cannot read meanwhile
                for _ in range(200):
                    sender.sendto(b"\x00" * 1000, listener.getsockname())
            wait_until(lambda: listener.statistics().kernel_drops > 0)
        finally:
            sender.close()
        stats = listener.statistics()
        # Every datagram is accounted for: read and dropped by the engine, or by the kernel.
        wait_until(
            lambda: (
                listener.statistics().datagrams_received + listener.statistics().kernel_drops == 200
            )
        )
        assert stats.kernel_drops > 0


def test_default_receive_buffer_asks_for_4_mib(server_config):
    assert server_config.recv_buffer_size == 4 * 1024 * 1024
    with sync.listen("127.0.0.1", 0, config=server_config) as listener:
        sock = listener.sockets[0]
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert listener.statistics().receive_buffer_bytes == granted
        with open("/proc/sys/net/core/rmem_max") as cap:
            rmem_max = int(cap.read())
        assert granted >= min(2 * 4 * 1024 * 1024, 2 * rmem_max)  # Linux doubles the request
