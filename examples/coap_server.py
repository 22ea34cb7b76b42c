"""A CoAP server over DTLS (``coaps://``): aiocoap's resources on dtlskit's transport.

It serves ``/.well-known/core`` (the resource directory, RFC 6690) and ``/sensors/temperature``
(a simulated sensor, JSON). Each request's log line says who asked: the client certificate
the server verified, or the client's PSK identity.

    python examples/coap_server.py --port 5684 --cert server.pem --key server.key \\
        --ca ca.pem --psk sensor-1:secret

* ``--cert/--key``: the server's certificate; ``--ca``: also ask clients for a certificate and
  verify it against this CA (required unless ``--psk`` lets PSK clients in too);
* ``--psk IDENTITY:SECRET`` (repeatable): clients may use a pre-shared key instead.

A libcoap client can then talk to it::

    coap-client-openssl -c client.pem -j client.key -C ca.pem coaps://localhost/sensors/temperature
    coap-client-gnutls -u sensor-1 -k secret coaps://localhost/.well-known/core

Run with no arguments, it makes a throwaway PKI, serves on a free loopback port, asks itself
for both resources with an aiocoap client on dtlskit, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import ssl
import sys
import tempfile
import time

import aiocoap
import aiocoap.resource as resource

import dtlskit
from dtlskit.contrib import aiocoap as coaps


class Temperature(resource.Resource):  # type: ignore[misc]
    """A simulated temperature sensor: a slow sine around 21 °C."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        uptime = time.monotonic() - self.started
        reading = {"celsius": round(21.0 + 2.0 * math.sin(uptime / 60.0), 2), "uptime": int(uptime)}
        print(f"server: GET /sensors/temperature from {who(request)}", flush=True)
        return aiocoap.Message(
            payload=json.dumps(reading).encode(),
            content_format=50,  # application/json
        )


def who(request: aiocoap.Message) -> str:
    """The authenticated claims of the request's DTLS session, in words."""
    words = []
    for claim in request.remote.authenticated_claims:
        if isinstance(claim, coaps.CertificateClaim):
            words.append(f"certificate {claim.subject} (sha256 {claim.sha256[:16]}...)")
        elif isinstance(claim, coaps.PSKClaim):
            words.append(f"PSK identity {claim.identity!r}")
    return ", ".join(words) or "an anonymous client"


def make_site() -> resource.Site:
    site = resource.Site()
    site.add_resource(["sensors", "temperature"], Temperature())
    site.add_resource(
        [".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader)
    )
    return site


def configuration(args: argparse.Namespace) -> dtlskit.DTLSConfiguration:
    psk: dict[str, bytes] = {}
    for item in args.psk:
        identity, sep, secret = item.partition(":")
        if not sep or not identity or not secret:
            raise SystemExit(f"--psk wants IDENTITY:SECRET, not {item!r}")
        psk[identity] = secret.encode()
    if args.cert is None and not psk:
        raise SystemExit("give --cert and --key, or --psk IDENTITY:SECRET (or both)")
    verify = None
    if args.ca is not None:
        verify = ssl.CERT_OPTIONAL if psk else ssl.CERT_REQUIRED
    return dtlskit.DTLSConfiguration.server(
        args.cert,
        args.key,
        cafile=args.ca,
        verify_mode=verify,
        psk_lookup=psk or None,
    )


async def serve(args: argparse.Namespace) -> None:
    context = await coaps.create_server_context(
        make_site(), args.host, args.port, config=configuration(args)
    )
    server = coaps.coaps_transport(context).server
    assert server is not None
    for host, port, *_ in server.addresses:
        print(f"server: serving coaps://{'[' + host + ']' if ':' in host else host}:{port}/")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await context.shutdown()
    print("server: stopped", flush=True)


async def demo() -> None:
    from dtlskit.certs import create_pki

    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        args = argparse.Namespace(
            cert=pki.server_cert, key=pki.server_key, ca=pki.ca_cert, psk=["demo:demo secret"]
        )
        context = await coaps.create_server_context(
            make_site(), "127.0.0.1", 0, config=configuration(args)
        )
        server = coaps.coaps_transport(context).server
        assert server is not None
        port = server.addresses[0][1]
        print(f"server: serving coaps://127.0.0.1:{port}/")
        client = await coaps.create_client_context(
            dtlskit.DTLSConfiguration.client(
                cafile=pki.ca_cert,
                server_hostname="localhost",
                certfile=pki.client_cert,
                keyfile=pki.client_key,
            )
        )
        try:
            for path in (".well-known/core", "sensors/temperature"):
                request = aiocoap.Message(code=aiocoap.GET, uri=f"coaps://127.0.0.1:{port}/{path}")
                response = await client.request(request).response
                print(f"client: GET /{path}: {response.code} {response.payload.decode()}")
        finally:
            await client.shutdown()
            await context.shutdown()
        print("done: two coaps requests answered, the client known by its certificate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="::", help="address to listen on (default ::)")
    parser.add_argument("--port", type=int, default=5684, help="UDP port (default 5684)")
    parser.add_argument("--cert", help="server certificate (PEM)")
    parser.add_argument("--key", help="server private key (PEM)")
    parser.add_argument("--ca", help="ask for client certificates and verify them with this CA")
    parser.add_argument(
        "--psk", action="append", default=[], metavar="IDENTITY:SECRET", help="a client's PSK"
    )
    args = parser.parse_args()
    if len(sys.argv) == 1:
        asyncio.run(demo())
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
