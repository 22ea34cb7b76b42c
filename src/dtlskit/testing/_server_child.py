"""An asyncio DTLS echo server in a process of its own, for scenarios that need the server's own
RSS (15), its signals and its exit status (14), or its CPU apart from the clients' (16).

``python -m dtlskit.testing._server_child --cert C --key K [--host H] [--limits JSON]`` prints
``READY <pid> <port>`` once serving. Stdin lines: ``rss`` -> ``RSS <KiB>``, ``stats`` ->
``STATS <json>``, ``memtop`` -> ``MEMTOP <json>`` (the top allocation sites, when run with
``PYTHONTRACEMALLOC=1``). On SIGINT/SIGTERM it closes the server (close_notify to every peer),
prints ``CLOSED <json statistics>`` and ``FDS <open before serving> <open after closing>``, and
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import threading
import tracemalloc

from ..asyncio import Channel, install_signal_handlers, serve
from ..config import DTLSConfiguration, Limits
from ._harness import rss_kib


async def echo(channel: Channel) -> None:
    async for message in channel:
        await channel.send(message)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def main_async(args: argparse.Namespace) -> None:
    limits = Limits(**json.loads(args.limits)) if args.limits else Limits()
    config = DTLSConfiguration.server(args.cert, args.key, limits=limits)
    loop = asyncio.get_running_loop()
    fds_before = open_fds()
    async with serve(echo, args.host, 0, config=config) as server:
        install_signal_handlers(server)

        def command(line: str) -> None:
            if line == "rss":
                say(f"RSS {rss_kib()}")
            elif line == "stats":
                say("STATS " + json.dumps(dataclasses.asdict(server.statistics())))
            elif line == "holders":  # who keeps ended sessions' engines alive
                say("HOLDERS " + json.dumps(_holders_of_ended_engines()))
            elif line == "memtop":  # with PYTHONTRACEMALLOC=1: where Python memory went
                top = []
                if tracemalloc.is_tracing():
                    stats = tracemalloc.take_snapshot().statistics("lineno")[:15]
                    top = [(str(s.traceback), s.size // 1024, s.count) for s in stats]
                say("MEMTOP " + json.dumps(top))

        def read_stdin() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(command, line.strip())

        threading.Thread(target=read_stdin, daemon=True).start()
        say(f"READY {os.getpid()} {server.addresses[0][1]}")
        await server.serve_forever()
        say("CLOSED " + json.dumps(dataclasses.asdict(server.statistics())))
    # The stdin reader thread holds no descriptor of its own (stdin was open before).
    say(f"FDS {fds_before} {open_fds()}")


def _holders_of_ended_engines() -> dict[str, int]:
    """Types of the objects referring to engines whose session has ended (none should)."""
    import gc

    from ..core import DTLSConnection, State

    gc.collect()
    ended = [
        o
        for o in gc.get_objects()
        if isinstance(o, DTLSConnection) and o.state in (State.CLOSED, State.TERMINATED)
    ]
    holders: dict[str, int] = {"ended_engines": len(ended)}
    for engine in ended[:200]:
        for referrer in gc.get_referrers(engine):
            if referrer is ended:
                continue
            name = type(referrer).__name__
            if isinstance(referrer, dict | list | tuple):
                outer = [type(r).__name__ for r in gc.get_referrers(referrer) if r is not ended]
                name += "<-" + ",".join(sorted(set(outer)))[:80]
            holders[name] = holders.get(name, 0) + 1
    return holders


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--limits", help="JSON object of Limits fields")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
