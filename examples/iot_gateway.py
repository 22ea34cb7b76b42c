"""The whole IoT picture: a sensor and a gateway over ``coaps://`` with certificates, where the
gateway finds the sensor by mDNS/DNS-SD.

* The **sensor** serves ``/sensors/temperature`` over CoAP on DTLS (aiocoap on dtlskit), asks
  the gateway for its certificate, and advertises itself as ``sensor-1._coaps._udp.local.`` with
  its certificate's SHA-256 fingerprint in TXT.
* The **gateway** browses for ``_coaps._udp``, resolves the sensor, connects with its own
  certificate, checks that the certificate the sensor presented (verified against the CA) is
  the advertised one, and reads the temperature.

Run with no arguments, it makes a throwaway PKI and runs both sides in one process. mDNS is
multicast: to keep it on this machine the demo re-runs itself in a private network namespace
holding only ``lo`` (``unshare --net``, as root); where that is not possible it keeps zeroconf
on the loopback interface.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import tempfile

import aiocoap
import aiocoap.resource as resource

import dtlskit
from dtlskit.certs import create_pki
from dtlskit.contrib import aiocoap as coaps
from dtlskit.contrib import mdns

LOOPBACK = ["127.0.0.1"]
NAMESPACE_SETUP = (
    "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo && "
    'exec "$0" "$@"'
)


class Temperature(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        (claim,) = request.remote.authenticated_claims  # the gateway's verified certificate
        print(f"sensor: GET /sensors/temperature from {claim.subject}")
        return aiocoap.Message(payload=b'{"celsius": 21.5}', content_format=50)


async def sensor(pki_dir: str) -> tuple[aiocoap.Context, mdns.AsyncAdvertisement]:
    site = resource.Site()
    site.add_resource(["sensors", "temperature"], Temperature())
    config = dtlskit.DTLSConfiguration.server(
        f"{pki_dir}/server.pem", f"{pki_dir}/server.key",
        cafile=f"{pki_dir}/ca.pem", verify_mode=ssl.CERT_REQUIRED,
    )  # fmt: skip
    context = await coaps.create_server_context(site, "127.0.0.1", 0, config=config)
    server = coaps.coaps_transport(context).server
    assert server is not None
    advertisement = await mdns.async_advertise(
        server, "sensor-1", properties={"rt": "temperature"}, interfaces=LOOPBACK
    )
    print(f"sensor: serving coaps on 127.0.0.1:{server.addresses[0][1]}, advertised as sensor-1")
    return context, advertisement


async def gateway(pki_dir: str) -> None:
    found = await mdns.async_find(mdns.COAPS, "sensor-1", timeout=20, interfaces=LOOPBACK)
    print(f"gateway: found {found.name} at {found.addresses[0]}:{found.port}, "
          f"fingerprint {found.fingerprint[:16] if found.fingerprint else None}...")  # fmt: skip
    config = dtlskit.DTLSConfiguration.client(
        cafile=f"{pki_dir}/ca.pem", server_hostname="localhost",
        certfile=f"{pki_dir}/client.pem", keyfile=f"{pki_dir}/client.key",
    )  # fmt: skip
    context = await coaps.create_client_context(config)
    try:
        uri = f"coaps://{found.addresses[0]}:{found.port}/sensors/temperature"
        response = await context.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response
    finally:
        await context.shutdown()
    (claim,) = response.remote.authenticated_claims
    if not found.certificate_matches(claim.certificate):
        raise SystemExit("gateway: the sensor's certificate is not the advertised one")
    print(f"gateway: {claim.subject} (the advertised certificate) says {response.payload.decode()}")


async def demo() -> None:
    with tempfile.TemporaryDirectory() as pki_dir:
        create_pki(pki_dir)
        context, advertisement = await sensor(pki_dir)
        try:
            await gateway(pki_dir)
        finally:
            await advertisement.close()
            await context.shutdown()
    print("done: the gateway found the sensor by mDNS and read it over coaps")


def main() -> int:
    if os.environ.get("IOT_GATEWAY_IN_NAMESPACE") != "1" and shutil.which("unshare"):
        env = dict(os.environ, IOT_GATEWAY_IN_NAMESPACE="1")
        python = [sys.executable, *(f"-W{option}" for option in sys.warnoptions)]
        argv = ["unshare", "--net", "sh", "-c", NAMESPACE_SETUP, *python, *sys.argv]
        probe = subprocess.run(
            ["unshare", "--net", "sh", "-c", NAMESPACE_SETUP, "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if probe.returncode == 0:
            return subprocess.run(argv, env=env, timeout=300).returncode
        print(f"(no private network namespace here: {probe.stderr.strip()}; "
              "zeroconf stays on loopback)")  # fmt: skip
    asyncio.run(asyncio.wait_for(demo(), 120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
