"""Run by tests/contrib/test_mdns.py inside a private network namespace that holds only ``lo``
(so no multicast leaves the machine): advertise, check with ``dig``, find, connect.

Usage: ``python mdns_scenario.py PKI_DIR OTHER_PKI_DIR``; prints one JSON object per line.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys
from pathlib import Path

import aiocoap
import aiocoap.resource as resource

import dtlskit
from dtlskit import sync
from dtlskit.contrib import aiocoap as coaps
from dtlskit.contrib import mdns

LOOPBACK = ["127.0.0.1"]


def report(step: str, **values: object) -> None:
    print(json.dumps({"step": step, **values}), flush=True)


async def dig(name: str, rtype: str) -> str:
    """An independent resolver (BIND's dig) asking the mDNS responder by unicast (RFC 6762
    §6.7); run as a child process while our loop keeps answering."""
    process = await asyncio.create_subprocess_exec(
        "dig", "+short", "+time=3", "+tries=2", "-p", "5353", "@127.0.0.1", name, rtype,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return output.decode().strip()


class Who(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        claims = [c.subject for c in request.remote.authenticated_claims]
        return aiocoap.Message(payload=", ".join(claims).encode())


async def coaps_part(pki: Path) -> None:
    site = resource.Site()
    site.add_resource(["who"], Who())
    server_config = dtlskit.DTLSConfiguration.server(
        pki / "server.pem", pki / "server.key", cafile=pki / "ca.pem",
        verify_mode=ssl.CERT_REQUIRED,
    )  # fmt: skip
    context = await coaps.create_server_context(site, "127.0.0.1", 0, config=server_config)
    server = coaps.coaps_transport(context).server
    advertisement = await mdns.async_advertise(
        server, "sensor-1", properties={"rt": "temperature"}, interfaces=LOOPBACK
    )
    try:
        report(
            "dig",
            ptr=await dig("_coaps._udp.local", "PTR"),
            srv=await dig("sensor-1._coaps._udp.local", "SRV"),
            txt=await dig("sensor-1._coaps._udp.local", "TXT"),
            a=await dig("sensor-1.local", "A"),
            port=server.addresses[0][1],
        )
        found = await mdns.async_find(mdns.COAPS, "sensor-1", timeout=20, interfaces=LOOPBACK)
        report("found", name=found.name, addresses=list(found.addresses), port=found.port,
               fingerprint=found.fingerprint, properties=dict(found.properties))  # fmt: skip
        client_config = dtlskit.DTLSConfiguration.client(
            cafile=pki / "ca.pem", server_hostname="localhost",
            certfile=pki / "client.pem", keyfile=pki / "client.key",
        )  # fmt: skip
        client = await coaps.create_client_context(client_config)
        try:
            uri = f"coaps://{found.addresses[0]}:{found.port}/who"
            response = await client.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response
        finally:
            await client.shutdown()
        (claim,) = response.remote.authenticated_claims
        report("coaps", code=str(response.code), payload=response.payload.decode(),
               server_sha256=claim.sha256)  # fmt: skip
    finally:
        await advertisement.close()
        await context.shutdown()


def echo(channel: sync.Channel) -> None:
    for message in channel:
        channel.send(message)


def sync_part(pki: Path, other: Path) -> None:
    config = dtlskit.DTLSConfiguration.server(pki / "server.pem", pki / "server.key")
    client_config = dtlskit.DTLSConfiguration.client(
        cafile=pki / "ca.pem", server_hostname="localhost"
    )
    with sync.serve(echo, "127.0.0.1", 0, config=config) as server:
        with mdns.advertise(server, "echo-1", service_type=mdns.DTLS, interfaces=LOOPBACK):
            found = mdns.find(mdns.DTLS, "echo-1", timeout=20, interfaces=LOOPBACK)
            with mdns.connect(found, config=client_config) as channel:
                channel.send(b"found you")
                report("sync", echoed=channel.recv(timeout=10).decode(), port=found.port,
                       advertised_port=server.addresses[0][1])  # fmt: skip
        # Advertised with another certificate's fingerprint: the pin check refuses it, although
        # the CA vouches for the certificate the server presents.
        with mdns.advertise(server, "impostor", service_type=mdns.DTLS, interfaces=LOOPBACK,
                            certificate=other / "server.pem"):  # fmt: skip
            found = mdns.find(mdns.DTLS, "impostor", timeout=20, interfaces=LOOPBACK)
            try:
                mdns.connect(found, config=client_config).close()
            except dtlskit.CertificateVerificationError as exc:
                report("pin", refused=str(exc))
            else:
                report("pin", refused=None)


def main() -> None:
    pki, other = Path(sys.argv[1]), Path(sys.argv[2])
    report("interfaces", names=[name for _, name in socket.if_nameindex()])
    asyncio.run(asyncio.wait_for(coaps_part(pki), 90))
    sync_part(pki, other)
    report("done")


if __name__ == "__main__":
    main()
