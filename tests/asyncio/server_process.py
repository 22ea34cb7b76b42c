"""An asyncio DTLS echo server in a process of its own, for the tests that need a process:
signals, ``SO_REUSEPORT`` workers, and a memory figure not blurred by the clients.

The handler echoes every message, except ``b"pid?"``, answered with the worker's PID, and
``b"hibernated?"``, answered with ``True`` or ``False`` (``--hibernate-after``).

``--mode signals`` (``serve`` + ``install_signal_handlers``): prints ``READY <pid> <port>`` once
serving; stdin lines ``rss`` and ``stats`` are answered with ``RSS <kB>`` and ``STATS <json>``;
after SIGINT/SIGTERM it prints ``CLOSED <json statistics>`` and exits 0.

``--mode workers`` (``run_server(..., workers=N)``): each worker logs ``<pid> listening on ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import threading

import dtlskit
from dtlskit.asyncio import Channel, install_signal_handlers, run_server, serve


async def handler(channel: Channel) -> None:
    async for message in channel:
        if message == b"pid?":
            await channel.send(str(os.getpid()).encode())
        elif message == b"hibernated?":
            await channel.send(str(channel.hibernated).encode())
        else:
            await channel.send(message)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def serve_with_signals(args: argparse.Namespace, config: dtlskit.DTLSConfiguration) -> None:
    loop = asyncio.get_running_loop()
    async with serve(handler, args.host, args.port, config=config) as server:
        install_signal_handlers(server)

        def command(line: str) -> None:
            if line == "rss":
                say(f"RSS {rss_kib()}")
            elif line == "stats":
                say("STATS " + json.dumps(dataclasses.asdict(server.statistics())))

        def read_stdin() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(command, line.strip())

        threading.Thread(target=read_stdin, daemon=True).start()
        say(f"READY {os.getpid()} {server.addresses[0][1]}")
        await server.serve_forever()
        say("CLOSED " + json.dumps(dataclasses.asdict(server.statistics())))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("signals", "workers"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--workers", type=int, default=2)
    # A global cap on HelloVerifyRequests (all sources together); none by default.
    parser.add_argument("--hello-verify-rate", type=float, default=None)
    # Limits.hibernate_after: release established sessions' OpenSSL objects (None: never).
    parser.add_argument("--hibernate-after", type=float, default=None)
    args = parser.parse_args()
    limits = dtlskit.Limits(
        hello_verify_per_second=args.hello_verify_rate, hibernate_after=args.hibernate_after
    )
    config = dtlskit.DTLSConfiguration.server(args.cert, args.key, limits=limits)
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(process)d %(name)s %(message)s"
    )
    if args.mode == "signals":
        asyncio.run(serve_with_signals(args, config))
        return 0
    return run_server(handler, args.host, args.port, config=config, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
