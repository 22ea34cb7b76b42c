"""CPU time per CoAP request: aiocoap over plain UDP next to aiocoap over dtlskit's ``coaps://``.

Client and server run in this one process on loopback; each side makes ``--requests``
sequential confirmable GETs (one session, established before timing), in interleaved batches
so both see the same machine. Only this process's CPU time is counted
(``time.process_time``): wall-clock figures are noise on a shared machine.

    python benchmarks/coap_cpu.py [--requests 2000] [--batches 10]

A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
from typing import Any

import aiocoap
import aiocoap.resource as resource

import dtlskit
from dtlskit.certs import create_pki
from dtlskit.contrib import aiocoap as coaps


class Reading(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=b"21.5")


def make_site() -> Any:
    site = resource.Site()
    site.add_resource(["r"], Reading())
    return site


async def batch(context: Any, uri: str, count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        response = await context.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response
        if response.payload != b"21.5":
            raise RuntimeError(f"unexpected answer {response}")
    return time.process_time() - start


async def main(requests: int, batches: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))  # a port free a moment ago (a benchmark may race)
            plain_port = probe.getsockname()[1]
        plain_server = await aiocoap.Context.create_server_context(
            make_site(), bind=("127.0.0.1", plain_port), transports=["udp6"]
        )
        plain_client = await aiocoap.Context.create_client_context(transports=["udp6"])
        server_config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        secure_server = await coaps.create_server_context(
            make_site(), "127.0.0.1", 0, config=server_config
        )
        server = coaps.coaps_transport(secure_server).server
        assert server is not None
        secure_client = await coaps.create_client_context(
            dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
        )
        rows = {
            "coap (udp6)": (plain_client, f"coap://127.0.0.1:{plain_port}/r"),
            "coaps (dtlskit)": (secure_client, f"coaps://127.0.0.1:{server.addresses[0][1]}/r"),
        }
        spent = dict.fromkeys(rows, 0.0)
        per_batch = max(1, requests // batches)
        for context, uri in rows.values():
            await batch(context, uri, 10)  # warm up: the DTLS handshake happens here
        for _ in range(batches):
            for name, (context, uri) in rows.items():
                spent[name] += await batch(context, uri, per_batch)
        done = per_batch * batches
        print(f"{done} sequential GETs each, client and server in one process, "
              f"dtlskit accelerator: {dtlskit.ACCELERATOR}")  # fmt: skip
        for name, seconds in spent.items():
            print(f"  {name:16} {seconds / done * 1e6:8.1f} us CPU per request")
        ratio = spent["coaps (dtlskit)"] / spent["coap (udp6)"]
        print(f"  coaps / coap     {ratio:8.2f}")
        for context in (plain_client, secure_client, plain_server, secure_server):
            await context.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.batches))
