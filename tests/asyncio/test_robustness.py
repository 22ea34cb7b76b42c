"""asyncio server under stress: stalled handshakes, garbage, and 200 concurrent clients."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
from pathlib import Path
from typing import Any

import dtlskit
from dtlskit.asyncio import Channel, connect, serve
from dtlskit.certs import PKIFiles
from dtlskit.core import DTLSConnection
from tests.helpers import WAIT
from tests.peers import Peer, running


async def echo(channel: Channel) -> None:
    async for message in channel:
        await channel.send(message)


async def eventually(condition: Any, what: str, bound: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


async def echo_check(channel: Channel, tag: bytes, count: int = 3) -> None:
    """Send ``count`` distinct messages and require byte-identical echoes in order."""
    for index in range(count):
        message = tag + b"/%d/" % index + bytes(range(index * 7 % 256))
        await channel.send(message)
        assert await asyncio.wait_for(channel.recv(), WAIT) == message


async def stalled_peer(
    port: int, config: dtlskit.DTLSConfiguration, answer_hello_verify: bool
) -> socket.socket:
    """A raw socket that sends a real ClientHello (and, if asked, answers the
    HelloVerifyRequest with the cookie) and then goes silent."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", port))
    engine = DTLSConnection(config, server=False, peer_address=("127.0.0.1", port))
    engine.connect(loop.time())
    for datagram in engine.datagrams_to_send():
        sock.send(datagram)
    if answer_hello_verify:
        hello_verify = await asyncio.wait_for(loop.sock_recv(sock, 65536), WAIT)
        engine.receive_datagram(hello_verify, loop.time())
        for datagram in engine.datagrams_to_send():
            sock.send(datagram)
    return sock


def garbage_datagrams(real_client_hello: bytes) -> list[bytes]:
    """Random bytes, truncated records, impossible lengths, wrong versions, stray records."""
    rng = random.Random(1234)
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 120))) for _ in range(40)]
    junk += [real_client_hello[:cut] for cut in (1, 5, 12, 13, 14, 25, 40, 60)]
    junk += [real_client_hello[: len(real_client_hello) - 1]]
    header = b"\x16\xfe\xfd" + b"\x00\x00" + b"\x00" * 6
    junk += [
        header + b"\xff\xff" + b"\x01" * 20,  # length far beyond the datagram
        header + b"\x00\x00",  # empty handshake record
        b"\x16\x03\x01" + real_client_hello[3:],  # TLS record version
        b"\x17\xfe\xfd\x00\x01" + b"\x00" * 6 + b"\x00\x10" + b"\xaa" * 16,  # app data, epoch 1
        b"\x15\xfe\xfd\x00\x00" + b"\x00" * 6 + b"\x00\x02\x02\x28",  # fatal alert
        b"\x14\xfe\xfd\x00\x00" + b"\x00" * 6 + b"\x00\x01\x01",  # ChangeCipherSpec
        b"\x16\xfe\xfd\x00\x00" + b"\x00" * 6 + b"\x00\x0c" + b"\x02" + b"\x00" * 11,  # SrvHello
    ]
    return junk


# -- 3. stalls and garbage ----------------------------------------------------------------------


def test_stalled_handshakes_do_not_delay_others(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            stallers = [
                await stalled_peer(port, client_config, answer_hello_verify=False),
                await stalled_peer(port, client_config, answer_hello_verify=True),
            ]
            try:
                await eventually(
                    lambda: server.statistics().half_open == 1, "the half-open association"
                )

                async def client(index: int) -> None:
                    async with connect("127.0.0.1", port, config=client_config) as channel:
                        await echo_check(channel, b"client%d" % index)

                await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(10))), WAIT)
                stats = server.statistics()
                # Ten handshakes completed while the stalled one was still pending.
                assert stats.handshakes_completed == 10
                assert stats.half_open == 1
            finally:
                for sock in stallers:
                    sock.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_garbage_is_dropped_counted_and_harmless(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            probe = DTLSConnection(client_config, server=False, peer_address=("127.0.0.1", port))
            probe.connect(0.0)
            client_hello = probe.datagrams_to_send()[0]
            async with connect("127.0.0.1", port, config=client_config) as channel:
                await echo_check(channel, b"before")
                before = server.statistics()
                junk = garbage_datagrams(client_hello)
                sprayers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
                try:
                    for index, datagram in enumerate(junk):
                        sprayers[index % 3].sendto(datagram, ("127.0.0.1", port))
                    expected = before.datagrams_received + len(junk)
                    await eventually(
                        lambda: server.statistics().datagrams_received >= expected,
                        "the server read every junk datagram",
                    )
                finally:
                    for sock in sprayers:
                        sock.close()
                after = server.statistics()
                dropped = sum(after.drops.values()) - sum(before.drops.values())
                assert dropped == len(junk), after.drops
                assert after.hello_verify_requests_sent == before.hello_verify_requests_sent
                assert after.associations_created == before.associations_created
                assert after.sessions == 1
                await echo_check(channel, b"after", count=5)
                assert channel.statistics().drops == {}
                print(f"\ngarbage drops by reason: {after.drops}")

    asyncio.run(asyncio.wait_for(main(), 30))


# -- 2. 200 concurrent clients ------------------------------------------------------------------

CLIENTS = 200
SCRIPT = Path(__file__).with_name("server_process.py")


def read_tagged(peer: Peer, tag: str) -> str:
    """The payload of the next line starting with ``tag``; earlier ones are not reused."""
    while True:
        line = peer.wait_for(tag + " ", timeout=WAIT)
        peer.seen.remove(line)
        if line.startswith(tag + " "):
            return line[len(tag) + 1 :]


def test_200_concurrent_clients_against_one_server(
    pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    argv = [
        sys.executable,
        str(SCRIPT),
        "--mode=signals",
        f"--cert={pki.server_cert}",
        f"--key={pki.server_key}",
        "--hello-verify-rate=100000",  # 200 first ClientHellos from one IP at once
    ]
    with running(argv) as peer:
        port = int(read_tagged(peer, "READY").split()[1])
        peer.write(b"rss\n")
        rss_before = int(read_tagged(peer, "RSS"))

        async def main() -> tuple[int, dict[str, Any]]:
            channels = await asyncio.wait_for(
                asyncio.gather(
                    *(connect("127.0.0.1", port, config=client_config) for _ in range(CLIENTS))
                ),
                60,
            )
            try:
                peer.write(b"rss\nstats\n")
                rss_held = int(read_tagged(peer, "RSS"))
                held = json.loads(read_tagged(peer, "STATS"))

                # All sessions stay open at once; the messages in flight are capped so that a
                # burst cannot overflow the server's socket receive buffer (application data is
                # not retransmitted by DTLS: a datagram the kernel drops is lost for good).
                in_flight = asyncio.Semaphore(25)

                async def exchange(index: int, channel: Channel) -> None:
                    async with in_flight:
                        await echo_check(channel, b"client-%03d" % index, count=3)

                await asyncio.wait_for(
                    asyncio.gather(*(exchange(i, ch) for i, ch in enumerate(channels))), 60
                )
                assert all(channel.pending() == 0 for channel in channels)
                retransmissions = sum(ch.statistics().retransmissions for ch in channels)
                print(f"\nclient handshake retransmissions in total: {retransmissions}")
            finally:
                for channel in channels:
                    channel.close()
                for channel in channels:
                    await channel.wait_closed()
            return rss_held, held

        rss_held, held = asyncio.run(main())
        assert held["sessions"] == CLIENTS
        assert held["handshakes_completed"] == CLIENTS
        assert held["half_open"] == 0
        per_session = (rss_held - rss_before) / CLIENTS
        print(
            f"\n{CLIENTS} sessions held at once; server RSS {rss_before} kB -> {rss_held} kB, "
            f"{per_session:.1f} kB per session; server stats while held: {held}"
        )
