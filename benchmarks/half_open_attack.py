"""Legitimate handshake success while attackers hold handshakes half-open, on real sockets.

The attackers receive at their addresses, so they get valid cookies: each one does the cookie
exchange from a fresh port, sends its ClientHello with the cookie, and then never answers the
server's flight — the handshake stays half-open until the server gives up on it. Meanwhile
legitimate clients (``dtlskit.asyncio.connect`` from other loopback addresses) connect at a
steady rate and echo one message. The server (``dtlskit.asyncio.serve``, default limits unless
told otherwise) runs in a child process.

    python benchmarks/half_open_attack.py [--attackers 4] [--seconds 20] [--attack-rate 80]

``--attackers N`` attacking IPv4 addresses (127.0.4.1 ...; loopback has no IPv6 /64 to spare,
the engine tests cover that case). Prints the legitimate success rate and the server's drops.

``--spoof-rate R`` runs the other attack instead: R first ClientHellos a second "from" the
legitimate clients' own IP address (127.0.6.1, other ports), as an off-path spoofer would send
them, while those clients connect from that address.
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import dtlskit
from dtlskit.asyncio import connect
from dtlskit.certs import create_pki
from dtlskit.core import DTLSConnection

SERVER = """
import asyncio, json, sys
import dtlskit
from dtlskit.asyncio import serve

async def echo(channel):
    async for message in channel:
        await channel.send(message)

async def main():
    config = dtlskit.DTLSConfiguration.server(sys.argv[1], sys.argv[2])
    async with serve(echo, "127.0.0.1", 0, config=config) as server:
        print("PORT", server.addresses[0][1], flush=True)
        while True:
            await asyncio.sleep(0.5)
            stats = server.statistics()
            print("STATS", json.dumps({"half_open": stats.half_open, "drops": stats.drops,
                  "completed": stats.handshakes_completed}), flush=True)

asyncio.run(main())
"""


async def one_attack(address: str, port: int, client_config: dtlskit.DTLSConfiguration) -> bool:
    """Cookie exchange from a fresh port, ClientHello with the cookie, then silence."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind((address, 0))
        engine = DTLSConnection(client_config, server=False)
        engine.connect(loop.time())
        for datagram in engine.datagrams_to_send():
            sock.sendto(datagram, ("127.0.0.1", port))  # UDP on loopback: never blocks for long
        reply = await asyncio.wait_for(loop.sock_recv(sock, 65536), 2.0)
        engine.receive_datagram(reply, loop.time())
        for datagram in engine.datagrams_to_send():
            sock.sendto(datagram, ("127.0.0.1", port))  # UDP on loopback: never blocks for long
        return True
    except (TimeoutError, OSError):
        return False
    finally:
        sock.close()  # silence from now on: the server's flight goes nowhere


async def attack(
    addresses: list[str], port: int, config: dtlskit.DTLSConfiguration, rate: float, end: float
) -> int:
    loop = asyncio.get_running_loop()
    tasks = []
    index = 0
    while loop.time() < end:
        tasks.append(
            asyncio.create_task(one_attack(addresses[index % len(addresses)], port, config))
        )
        index += 1
        await asyncio.sleep(1.0 / rate)
    return sum(await asyncio.gather(*tasks))


async def spoof(victim: str, port: int, config: Any, rate: float, end: float) -> int:
    """First ClientHellos from the victim's IP address (any port), as fast as ``rate``."""
    loop = asyncio.get_running_loop()
    engine = DTLSConnection(config, server=False)
    engine.connect(loop.time())
    (hello,) = engine.datagrams_to_send()
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((victim, 0))
        next_send = loop.time()
        while loop.time() < end:  # evenly spaced: each takes whatever budget has refilled
            sock.sendto(hello, ("127.0.0.1", port))  # UDP on loopback: never blocks for long
            sent += 1
            next_send += 1.0 / rate
            await asyncio.sleep(max(0.0, next_send - loop.time()))
    return sent


async def legitimate(
    number: int, port: int, config: dtlskit.DTLSConfiguration, timeout: float, victim: str | None
) -> bool:
    local = (victim or f"127.1.{number // 250}.{number % 250 + 1}", 0)
    try:
        async with connect(
            "127.0.0.1", port, config=config, local_addr=local, timeout=timeout
        ) as channel:
            await channel.send(b"hello")
            return await asyncio.wait_for(channel.recv(), timeout) == b"hello"
    except (dtlskit.DTLSError, TimeoutError, OSError):
        return False


async def run(args: argparse.Namespace, port: int, client_config: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + args.seconds
    addresses = [f"127.0.4.{n}" for n in range(1, args.attackers + 1)]
    victim = "127.0.6.1" if args.spoof_rate else None
    attacker = asyncio.create_task(
        spoof("127.0.6.1", port, client_config, args.spoof_rate, end)
        if args.spoof_rate
        else attack(addresses, port, client_config, args.attack_rate, end)
    )
    await asyncio.sleep(args.head_start)  # let the attack fill what it can first
    clients = []
    number = 0
    while loop.time() < end:
        clients.append(asyncio.create_task(legitimate(number, port, client_config, 10.0, victim)))
        number += 1
        await asyncio.sleep(1.0 / args.legit_rate)
    results = await asyncio.gather(*clients)
    cookies = await attacker
    return {"legit_ok": sum(results), "legit": len(results), "attack_hellos": cookies}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attackers", type=int, default=4, help="attacking IPv4 addresses")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--attack-rate", type=float, default=80.0, help="half-opens per second")
    parser.add_argument("--legit-rate", type=float, default=4.0, help="clients per second")
    parser.add_argument("--head-start", type=float, default=5.0, help="attack-only seconds")
    parser.add_argument(
        "--spoof-rate", type=float, default=0.0, help="spoofed ClientHellos/s from 127.0.6.1"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        pki = create_pki(directory)
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(pki.server_cert), str(pki.server_key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its log of every failed (attack) handshake
            text=True,
            env=dict(os.environ),
        )
        latest: list[str] = []

        def read_reports() -> None:  # keep the pipe drained, remember the latest report
            assert server.stdout is not None
            for report in server.stdout:
                if report.startswith("STATS"):
                    latest[:] = [report.split(" ", 1)[1]]

        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            port = int(line.split()[1])
            threading.Thread(target=read_reports, daemon=True).start()
            config = dtlskit.DTLSConfiguration.client(pki.ca_cert, "localhost")
            started = time.monotonic()
            result = asyncio.run(run(args, port, config))
            time.sleep(1.0)  # one more report from the server
            stats: dict[str, Any] = json.loads(latest[0]) if latest else {}
        finally:
            server.terminate()
            server.wait(10)
    ok, total = result["legit_ok"], result["legit"]
    what = (
        f"{result['attack_hellos']} spoofed ClientHellos from the clients' own IP"
        if args.spoof_rate
        else f"{args.attackers} attacking addresses, {result['attack_hellos']} cookie-carrying "
        "half-open attempts"
    )
    print(
        f"{what} in {time.monotonic() - started:.0f} s; legitimate clients: "
        f"{ok}/{total} connected and echoed ({100 * ok / max(total, 1):.0f}%)"
    )
    print(f"server: {stats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
