"""The newcomer's program: fire-and-forget telemetry, the first thing many people write.

One asyncio process on loopback, written the way the README's examples read: a dtlskit server
whose handler is a plain ``async for`` that counts what arrives, and ``clients`` clients that
each connect (``async with dtlskit.asyncio.connect(...)``), send ``messages`` messages without
waiting for any reply, and close. Nothing is tuned: default configuration, default socket
buffers, every client from 127.0.0.1 (as a newcomer's would be).

The figure: how many of ``clients * messages`` the handler saw, and how many of the missing ones
were *counted* somewhere a user can look: the server's ``statistics()`` (its ``drops`` and, when
the front end reports it, ``kernel_drops``) or an exception a client raised. What is missing
and counted nowhere is silent loss. The kernel's own counter for the server socket
(/proc/net/udp) is reported beside it, as what the benchmark (not dtlskit) could see.

    python benchmarks/newcomer.py [--clients 100] [--messages 100]
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from multiprocessing.connection import Connection
from typing import Any

if __package__ in (None, ""):  # run as a script: import this directory as the package it is
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"  # makes the relative imports below work
    import benchmarks  # noqa: F401

import dtlskit
import dtlskit.asyncio
from dtlskit.certs import create_pki

from .common import HOST, Child, child_setup, report_failure, udp_drops

__all__ = ["measure", "run_in_child"]

SETTLE = 1.0
"""Seconds without a new message after which the server is taken to have seen all it will."""
MAX_WAIT = 30.0
"""Seconds at most to wait for the server after the last client closed."""


async def _program(
    certfile: str, keyfile: str, cafile: str, clients: int, messages: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    received = 0

    async def handler(channel: dtlskit.asyncio.Channel) -> None:
        nonlocal received
        async for _message in channel:
            received += 1

    server_config = dtlskit.DTLSConfiguration.server(certfile, keyfile)
    client_config = dtlskit.DTLSConfiguration.client(cafile=cafile, server_hostname="localhost")
    server = await dtlskit.asyncio.serve(handler, HOST, 0, config=server_config)
    try:
        port = server.sockets[0].getsockname()[1]
        drops_before = udp_drops([(HOST, port)])
        errors: dict[str, int] = {}
        unsent = [0]

        async def client(index: int) -> None:
            payload = f"client {index:3d} reading ".encode().ljust(64, b".")
            sent = 0
            try:
                async with dtlskit.asyncio.connect(HOST, port, config=client_config) as channel:
                    for _ in range(messages):
                        await channel.send(payload)
                        sent += 1
            except dtlskit.DTLSError as exc:  # the user sees this one: it is counted
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                unsent[0] += messages - sent

        started = loop.time()
        await asyncio.gather(*(client(index) for index in range(clients)))
        sent_in = loop.time() - started
        # Wait until the handler stops seeing messages (bounded).
        last, quiet_since, give_up = -1, loop.time(), loop.time() + MAX_WAIT
        while loop.time() < give_up and received < clients * messages:
            if received != last:
                last, quiet_since = received, loop.time()
            elif loop.time() - quiet_since >= SETTLE:
                break
            await asyncio.sleep(0.05)
        statistics = dataclasses.asdict(server.statistics())
        kernel_socket_drops = udp_drops([(HOST, port)]) - drops_before
    finally:
        server.close()
        await server.wait_closed()
    total = clients * messages
    counted_by_server = sum(statistics.get("drops", {}).values())
    kernel_counted = statistics.get("kernel_drops")
    counted = counted_by_server + (kernel_counted or 0) + unsent[0]
    missing = total - received
    return {
        "clients": clients,
        "messages_per_client": messages,
        "sent": total,
        "delivered": received,
        "delivered_share": received / total,
        "missing": missing,
        "counted_in_statistics": counted_by_server + (kernel_counted or 0),
        "server_drops": statistics.get("drops", {}),
        "statistics_kernel_drops": kernel_counted,
        "statistics_has_kernel_drops": kernel_counted is not None,
        "client_errors": errors,
        "unsent_after_client_error": unsent[0],
        "uncounted": max(0, missing - counted),
        "kernel_socket_drops": kernel_socket_drops,
        "send_seconds": sent_in,
        "accelerator": str(getattr(dtlskit, "ACCELERATOR", "python")),
    }


def _child(
    conn: Connection, certfile: str, keyfile: str, cafile: str, clients: int, messages: int
) -> None:
    child_setup(files=4 * clients + 256)
    try:
        conn.send(("ready",))
        result = asyncio.run(_program(certfile, keyfile, cafile, clients, messages))
        conn.send(("result", result))
        conn.recv()  # ("stop",)
        conn.send(("stopped",))
    except BaseException:
        report_failure(conn)
        raise


def run_in_child(
    certfile: str,
    keyfile: str,
    cafile: str,
    clients: int = 100,
    messages: int = 100,
    environment: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the program in a fresh process (its own interpreter and loop); return its figures."""
    child = Child(
        "newcomer's program",
        _child,
        certfile,
        keyfile,
        cafile,
        clients,
        messages,
        environment=environment,
    )
    try:
        child.receive(30.0)
        return dict(child.receive(60.0 + MAX_WAIT + clients * messages / 500)[1])
    finally:
        child.end()


def measure(clients: int = 100, messages: int = 100) -> dict[str, Any]:
    """The figures, with a fresh set of certificates."""
    with tempfile.TemporaryDirectory(prefix="dtlskit-newcomer-") as directory:
        pki = create_pki(directory)
        return run_in_child(
            str(pki.server_cert), str(pki.server_key), str(pki.ca_cert), clients, messages
        )


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(measure(args.clients, args.messages), indent=2))
