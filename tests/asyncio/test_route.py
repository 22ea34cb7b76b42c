"""The datagram route of the asyncio flavour: byte bounds on what peers can make a server hold,
and junk sent to an established session counted (issue 8 defects 1 and 6)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from dtlskit.asyncio import Channel, connect, listen, serve
from dtlskit.core.inbox import MESSAGE_OVERHEAD
from tests.helpers import WAIT
from tests.sync.test_route import CLIENTS, LIMITS, MESSAGES, SIZE


async def eventually(condition: Callable[[], bool], bound: float = WAIT) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), bound)


def run(coro) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(coro, 60))


def engines(server) -> list:  # type: ignore[no-untyped-def]
    return [endpoint.engine for endpoint in server._endpoints]


def check_bounded(server) -> None:  # type: ignore[no-untyped-def]
    per_session = [
        sum(len(m) + MESSAGE_OVERHEAD for m in conn.inbox.messages) if conn.inbox else 0
        for engine in engines(server)
        for conn in engine.connections.values()
    ]
    total = sum(per_session)
    assert len(per_session) == CLIENTS
    assert all(held <= LIMITS.max_queued_bytes for held in per_session)
    assert total <= LIMITS.max_buffered_bytes
    assert sum(engine.budget.held for engine in engines(server)) == total
    drops = server.statistics().drops
    assert drops.get("queue_full", 0) + drops.get("server_buffer_full", 0) == (
        CLIENTS * MESSAGES - total // (SIZE + MESSAGE_OVERHEAD)
    )
    assert drops.get("server_buffer_full", 0) > 0


async def flood_and_check(server, client_config) -> None:  # type: ignore[no-untyped-def]
    port = server.addresses[0][1]
    clients = []
    try:
        for _ in range(CLIENTS):
            client = await connect("127.0.0.1", port, config=client_config)
            clients.append(client)
            for _ in range(MESSAGES):
                await client.send(os.urandom(SIZE))

        def received() -> bool:
            return (
                sum(
                    conn.statistics().messages_received
                    for engine in engines(server)
                    for conn in engine.connections.values()
                )
                >= CLIENTS * MESSAGES
            )

        await eventually(received)
        check_bounded(server)
    finally:
        for client in clients:
            client.close()


def test_never_accepted_channels_hold_at_most_the_byte_bounds(server_config, client_config):
    async def main() -> None:
        async with listen("127.0.0.1", 0, config=server_config.replace(limits=LIMITS)) as server:
            await flood_and_check(server, client_config)

    run(main())


def test_a_handler_that_never_reads_holds_at_most_the_byte_bounds(server_config, client_config):
    async def main() -> None:
        release = asyncio.Event()

        async def never_reads(channel: Channel) -> None:
            await release.wait()

        config = server_config.replace(limits=LIMITS)
        async with serve(never_reads, "127.0.0.1", 0, config=config) as server:
            try:
                await flood_and_check(server, client_config)
            finally:
                release.set()
            await eventually(lambda: all(e.budget.held == 0 for e in engines(server)))

    run(main())


def test_junk_to_an_established_session_is_counted(server_config, client_config):
    async def main() -> None:
        async with listen("127.0.0.1", 0, config=server_config) as server:
            client = await connect("127.0.0.1", server.addresses[0][1], config=client_config)
            server_side = await server.accept(timeout=WAIT)
            record = client._engine.seal(b"hello")
            assert record is not None
            raw = client._sock
            raw.send(record)
            assert await asyncio.wait_for(server_side.recv(), WAIT) == b"hello"
            body = os.urandom(40)
            junk = [
                record,  # a replay
                record[:-1] + bytes([record[-1] ^ 1]),  # bad MAC
                record[:3] + b"\x00\x02" + record[5:],  # a later epoch
                b"\x17\xfe\xfd\x00\x01" + os.urandom(6) + len(body).to_bytes(2, "big") + body,
                b"\xff" * 48,
            ]
            for datagram in junk:
                raw.send(datagram)
            expected = {"bad_record": 3, "wrong_epoch": 1, "malformed_record": 1}

            def counted() -> bool:
                drops = server_side.statistics().drops
                return all(drops.get(k, 0) == v for k, v in expected.items())

            await eventually(counted)
            drops = server.statistics().drops
            assert {k: drops.get(k) for k in expected} == expected
            await client.send(b"still here")
            assert await asyncio.wait_for(server_side.recv(), WAIT) == b"still here"
            await server_side.send(b"and back")
            assert await asyncio.wait_for(client.recv(), WAIT) == b"and back"
            client.close()
            server_side.close()

    run(main())


def test_kernel_drops_and_the_granted_receive_buffer_are_reported(server_config):
    async def main() -> None:
        config = server_config.replace(recv_buffer_size=4096)
        async with listen("127.0.0.1", 0, config=config) as server:
            sock = server.sockets[0]
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            assert server.statistics().receive_buffer_bytes == granted
            assert server.statistics().kernel_drops == 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for _ in range(200):  # the loop cannot read meanwhile: no await here
                    sender.sendto(b"\x00" * 1000, server.addresses[0])

            def accounted() -> bool:
                stats = server.statistics()
                return stats.datagrams_received + stats.kernel_drops == 200

            await eventually(accounted)
            assert server.statistics().kernel_drops > 0

    run(main())
