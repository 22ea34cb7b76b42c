"""An asyncio DTLS echo server in a process of its own, for scenarios that need the server's own
RSS (15), its signals and its exit status (14), or its CPU apart from the clients' (16).

``python -m dtlskit.testing._server_child --cert C --key K [--host H] [--limits JSON]`` prints
``READY <pid> <port>`` once serving. Stdin lines: ``rss`` -> ``RSS <KiB>``, ``stats`` ->
``STATS <json>``. On SIGINT/SIGTERM it closes the server (close_notify to every peer), prints
``CLOSED <json statistics>`` and ``FDS <open before serving> <open after closing>``, exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import threading

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

        def read_stdin() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(command, line.strip())

        threading.Thread(target=read_stdin, daemon=True).start()
        say(f"READY {os.getpid()} {server.addresses[0][1]}")
        await server.serve_forever()
        say("CLOSED " + json.dumps(dataclasses.asdict(server.statistics())))
    # The stdin reader thread holds no descriptor of its own (stdin was open before).
    say(f"FDS {fds_before} {open_fds()}")


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
