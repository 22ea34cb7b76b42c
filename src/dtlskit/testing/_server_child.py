"""An asyncio DTLS echo server in a process of its own, for scenarios that need the server's own
RSS (15), its signals and its exit status (14), or its CPU apart from the clients' (16).

``python -m dtlskit.testing._server_child --cert C --key K [--host H] [--limits JSON]`` prints
``READY <pid> <port>`` once serving. Stdin lines: ``rss`` -> ``RSS <KiB>``, ``stats`` ->
``STATS <json>``, ``memtop`` -> ``MEMTOP <json>`` (the top allocation sites, when run with
``PYTHONTRACEMALLOC=1``), ``probe`` -> ``PROBE <json>`` (after a full garbage collection: RSS,
live gc-tracked objects, allocated memory blocks, tracemalloc's traced bytes with ``--trace``,
open fds, the sizes of the server's tables, handlers finished: the soak's exact signals). With
``--leak-closed-sessions`` the echo handler keeps every channel it served (the injected leak that
proves the soak can fail). On SIGINT/SIGTERM it closes the server (close_notify to every peer),
prints ``CLOSED <json statistics>`` and ``FDS <open before serving> <open after closing>``, and
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import gc
import json
import os
import sys
import threading
import tracemalloc
import weakref
from typing import Any

from ..asyncio import Channel, install_signal_handlers, serve
from ..config import DTLSConfiguration, Limits
from ._harness import rss_kib

FINISHED = [0]
"""Echo handlers that returned."""
KEPT: list[Channel] = []
"""With ``--leak-closed-sessions``: every channel served (an injected leak)."""


async def echo(channel: Channel) -> None:
    try:
        async for message in channel:
            await channel.send(message)
    finally:
        FINISHED[0] += 1


async def leaky_echo(channel: Channel) -> None:
    try:
        await echo(channel)
    finally:
        KEPT.append(channel)


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
    handler = leaky_echo if args.leak_closed_sessions else echo
    async with serve(handler, args.host, 0, config=config) as server:
        install_signal_handlers(server)

        def command(line: str) -> None:
            if line == "rss":
                say(f"RSS {rss_kib()}")
            elif line == "stats":
                say("STATS " + json.dumps(dataclasses.asdict(server.statistics())))
            elif line == "probe":
                say("PROBE " + json.dumps(probe(server)))
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


CONTAINERS = (dict, list, set, collections.deque, weakref.WeakValueDictionary)


def table_sizes(objects: dict[str, object]) -> dict[str, int]:
    """``name.attribute -> len`` of every container attribute of the given objects."""
    sizes: dict[str, int] = {}
    for name, obj in objects.items():
        for attribute, value in vars(obj).items():
            if isinstance(value, CONTAINERS):
                sizes[f"{name}.{attribute}"] = len(value)
    return sizes


def probe(server: Any) -> dict[str, Any]:
    """The soak's signals, after a full collection (see the module docstring)."""
    gc.collect()
    objects: dict[str, object] = {"server": server}
    for n, endpoint in enumerate(server._endpoints):
        objects[f"endpoint{n}"] = endpoint
        objects[f"engine{n}"] = endpoint.engine
    stats = server.statistics()
    return {
        "rss_kib": rss_kib(),
        "gc_objects": len(gc.get_objects()),
        "allocated_blocks": sys.getallocatedblocks(),
        "traced_bytes": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        "fds": open_fds(),
        "tables": table_sizes(objects),
        "sessions": stats.sessions,
        "handshakes_completed": stats.handshakes_completed,
        "handlers_finished": FINISHED[0],
        "kept": len(KEPT),
    }


def _holders_of_ended_engines() -> dict[str, int]:
    """Types of the objects referring to engines whose session has ended (none should)."""
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
    parser.add_argument("--trace", action="store_true", help="tracemalloc on (1 frame)")
    parser.add_argument("--leak-closed-sessions", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trace:
        tracemalloc.start(1)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
