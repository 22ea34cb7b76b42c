"""The coaps transport for aiocoap (dtlskit.contrib.aiocoap): aiocoap client and server, both
on dtlskit, over real sockets on loopback, with certificates, mutual authentication and PSK."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest

aiocoap = pytest.importorskip(
    "aiocoap", reason="aiocoap is not installed: pip install 'dtlskit[coap]' (CI installs it)"
)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

import dtlskit  # noqa: E402
from dtlskit.certs import PKIFiles  # noqa: E402
from dtlskit.contrib import aiocoap as coaps  # noqa: E402

from .coap_helpers import run, site  # noqa: E402

PSK = {"sensor-7": b"sensor seven key"}


def fingerprint(path: Path) -> str:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def server_config(pki: PKIFiles, **changes: object) -> dtlskit.DTLSConfiguration:
    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        cafile=pki.ca_cert,
        verify_mode=ssl.CERT_OPTIONAL,
        psk_lookup=PSK,
    )
    return config.replace(**changes) if changes else config


def cert_client(pki: PKIFiles, ca: Path | None = None) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(
        cafile=ca or pki.ca_cert,
        server_hostname="localhost",
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )


async def get(context: aiocoap.Context, uri: str) -> aiocoap.Message:
    return await context.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response


def test_mutual_certificates_both_ways_and_claims(pki: PKIFiles) -> None:
    async def main() -> None:
        server = await coaps.create_server_context(
            site(), "127.0.0.1", 0, config=server_config(pki)
        )
        port = coaps.coaps_transport(server).server.addresses[0][1]
        client = await coaps.create_client_context(cert_client(pki))
        try:
            response = await get(client, f"coaps://127.0.0.1:{port}/who")
            again = await get(client, f"coaps://127.0.0.1:{port}/.well-known/core")
        finally:
            await client.shutdown()
            statistics = coaps.coaps_transport(server).server.statistics()
            await server.shutdown()
        assert response.code == aiocoap.CONTENT
        # The resource saw the client certificate the server verified.
        assert response.payload.decode() == f"cert CN=dtlskit client {fingerprint(pki.client_cert)}"
        # The client sees the server's verified certificate as the response's claim.
        (claim,) = response.remote.authenticated_claims
        assert isinstance(claim, coaps.CertificateClaim)
        assert claim.sha256 == fingerprint(pki.server_cert)
        assert claim.subject == "CN=localhost"
        assert b"</who>" in again.payload and b"</.well-known/core>" in again.payload
        # Both requests travelled in one DTLS session.
        assert statistics.handshakes_completed == 1

    run(main())


def test_psk_client_is_known_by_its_identity(pki: PKIFiles) -> None:
    async def main() -> None:
        server = await coaps.create_server_context(
            site(), "127.0.0.1", 0, config=server_config(pki)
        )
        port = coaps.coaps_transport(server).server.addresses[0][1]
        client = await coaps.create_client_context(
            dtlskit.DTLSConfiguration.client(psk=("sensor-7", PSK["sensor-7"]))
        )
        try:
            response = await get(client, f"coaps://127.0.0.1:{port}/who")
        finally:
            await client.shutdown()
            await server.shutdown()
        assert response.payload == b"psk sensor-7"
        assert response.remote.authenticated_claims == (coaps.PSKClaim("sensor-7"),)

    run(main())


def test_aiocoap_credentials_psk_works_without_a_dtlskit_configuration(pki: PKIFiles) -> None:
    """A client written for aiocoap's tinydtls transport keeps its credentials file."""

    async def main() -> None:
        server = await coaps.create_server_context(
            site(), "127.0.0.1", 0, config=server_config(pki)
        )
        port = coaps.coaps_transport(server).server.addresses[0][1]
        client = await coaps.create_client_context()
        client.client_credentials.load_from_dict(
            {
                f"coaps://127.0.0.1:{port}/*": {
                    "dtls": {"psk": {"ascii": "sensor seven key"}, "client-identity": b"sensor-7"}
                }
            }
        )
        try:
            response = await get(client, f"coaps://127.0.0.1:{port}/who")
        finally:
            await client.shutdown()
            await server.shutdown()
        assert response.payload == b"psk sensor-7"

    run(main())


def test_anonymous_client_when_the_server_does_not_ask_for_certificates(pki: PKIFiles) -> None:
    async def main() -> None:
        config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        server = await coaps.create_server_context(site(), "127.0.0.1", 0, config=config)
        port = coaps.coaps_transport(server).server.addresses[0][1]
        client = await coaps.create_client_context(
            dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="localhost")
        )
        try:
            response = await get(client, f"coaps://127.0.0.1:{port}/who")
        finally:
            await client.shutdown()
            await server.shutdown()
        assert response.payload == b"anonymous"

    run(main())


def test_wrong_ca_fails_the_request_with_the_dtlskit_cause(
    pki: PKIFiles, other_pki: PKIFiles
) -> None:
    async def main() -> None:
        server = await coaps.create_server_context(
            site(), "127.0.0.1", 0, config=server_config(pki)
        )
        port = coaps.coaps_transport(server).server.addresses[0][1]
        client = await coaps.create_client_context(cert_client(pki, ca=other_pki.ca_cert))
        try:
            with pytest.raises(aiocoap.error.NetworkError) as caught:
                await get(client, f"coaps://127.0.0.1:{port}/who")
        finally:
            await client.shutdown()
            await server.shutdown()
        cause = caught.value.__cause__
        assert isinstance(cause, dtlskit.CertificateVerificationError)
        assert cause.reason is dtlskit.VerificationReason.UNKNOWN_ISSUER

    run(main())


def test_server_refuses_a_client_certificate_from_another_ca(
    pki: PKIFiles, other_pki: PKIFiles
) -> None:
    async def main() -> None:
        config = server_config(pki, verify_mode=ssl.CERT_REQUIRED)
        server = await coaps.create_server_context(site(), "127.0.0.1", 0, config=config)
        port = coaps.coaps_transport(server).server.addresses[0][1]
        foreign = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert,
            server_hostname="localhost",
            certfile=other_pki.client_cert,
            keyfile=other_pki.client_key,
        )
        client = await coaps.create_client_context(foreign)
        try:
            with pytest.raises(aiocoap.error.NetworkError) as caught:
                await get(client, f"coaps://127.0.0.1:{port}/who")
        finally:
            await client.shutdown()
            statistics = coaps.coaps_transport(server).server.statistics()
            await server.shutdown()
        cause = caught.value.__cause__
        assert isinstance(cause, dtlskit.CertificateVerificationError)
        assert cause.reason is dtlskit.VerificationReason.REJECTED_BY_PEER
        assert statistics.handshakes_completed == 0

    run(main())


def test_blockwise_payload_larger_than_a_datagram(pki: PKIFiles) -> None:
    async def main() -> None:
        server = await coaps.create_server_context(
            site(), "127.0.0.1", 0, config=server_config(pki)
        )
        port = coaps.coaps_transport(server).server.addresses[0][1]
        client = await coaps.create_client_context(cert_client(pki))
        payload = bytes(range(256)) * 24  # 6 KiB: six 1 KiB blocks each way
        try:
            response = await client.request(
                aiocoap.Message(
                    code=aiocoap.POST, uri=f"coaps://127.0.0.1:{port}/echo", payload=payload
                )
            ).response
        finally:
            await client.shutdown()
            await server.shutdown()
        assert response.code == aiocoap.CHANGED
        assert response.payload == payload

    run(main())


def test_junk_inside_the_session_is_dropped_and_counted(pki: PKIFiles) -> None:
    """A peer's bytes that are not a CoAP message are dropped, counted, and the session keeps
    serving (driven with a plain dtlskit channel, so the bytes are exactly ours)."""

    async def main() -> None:
        server = await coaps.create_server_context(
            site(), "127.0.0.1", 0, config=server_config(pki)
        )
        transport = coaps.coaps_transport(server)
        port = transport.server.addresses[0][1]
        # CON GET /who, message ID 0x1234, token "t1" (RFC 7252 §3), written out by hand.
        request = bytes([0x42, 0x01, 0x12, 0x34]) + b"t1" + bytes([0xB3]) + b"who"
        try:
            async with dtlskit.connect("127.0.0.1", port, config=cert_client(pki)) as channel:
                await channel.send(b"\xff")  # a 1-byte message: not CoAP (RFC 7252 §3)
                # CON GET with a Uri-Path option that is not UTF-8 (aiocoap raises
                # UnicodeDecodeError, not UnparsableMessage, for it)
                await channel.send(bytes([0x42, 0x01, 0x00, 0xC2]) + b"ab" + b"\xb1\xe6")
                await channel.send(request)
                reply = aiocoap.Message.decode(await channel.recv())
        finally:
            await server.shutdown()
        assert transport.drops == {"unparsable_coap_message": 2}
        assert reply.mid == 0x1234 and reply.token == b"t1"
        assert reply.payload.startswith(b"cert CN=dtlskit client")

    run(main())


def test_one_context_has_one_transport(pki: PKIFiles) -> None:
    async def main() -> None:
        client = await coaps.create_client_context(cert_client(pki))
        try:
            with pytest.raises(dtlskit.ConfigurationError):
                await coaps.add_transport(client)
            plain = aiocoap.Context()
            with pytest.raises(LookupError):
                coaps.coaps_transport(plain)
        finally:
            await client.shutdown()

    run(main())


def test_a_session_the_server_ended_is_replaced_by_a_new_handshake(pki: PKIFiles) -> None:
    """The server closes the session (close_notify) once it answered; the client's next
    request to the same server starts a new session instead of sending into the dead one."""
    import asyncio

    import aiocoap.resource as resource

    server_channels = []

    class Goodbye(resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            server_channels.append(request.remote.channel)
            return aiocoap.Message(payload=b"bye")

    async def main() -> None:
        root = site()
        root.add_resource(["bye"], Goodbye())
        server = await coaps.create_server_context(root, "127.0.0.1", 0, config=server_config(pki))
        transport = coaps.coaps_transport(server)
        port = transport.server.addresses[0][1]
        client = await coaps.create_client_context(cert_client(pki))
        try:
            first = await get(client, f"coaps://127.0.0.1:{port}/bye")
            (server_channel,) = server_channels
            server_channel.close()
            # The client's session task ends when the server's close_notify arrives.
            await asyncio.wait_for(asyncio.shield(first.remote._task), 30)
            assert first.remote.ended
            second = await get(client, f"coaps://127.0.0.1:{port}/who")
        finally:
            await client.shutdown()
            statistics = transport.server.statistics()
            await server.shutdown()
        assert first.payload == b"bye" and second.payload.startswith(b"cert CN=dtlskit client")
        assert second.remote is not first.remote
        assert statistics.handshakes_completed == 2

    run(main())


def test_client_sessions_are_pooled_by_equal_configuration_and_bounded(
    pki: PKIFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests with an equal configuration share a session; past the bound the least recently
    used session is closed (counted) and later requests still work."""
    from dtlskit.contrib.aiocoap import _transport

    monkeypatch.setattr(_transport, "MAX_CLIENT_SESSIONS", 2)
    configs = {mtu: cert_client(pki).replace(mtu=mtu) for mtu in (1200, 1100, 1000)}

    def config_for(host: str, port: int) -> dtlskit.DTLSConfiguration:
        return configs[current[0]].replace()  # a new object each time, equal to the pooled one

    current = [1200]

    async def main() -> None:
        server = await coaps.create_server_context(
            site(), "127.0.0.1", 0, config=server_config(pki)
        )
        server_transport = coaps.coaps_transport(server)
        port = server_transport.server.addresses[0][1]
        client = await coaps.create_client_context(config_for)
        client_transport = coaps.coaps_transport(client)
        uri = f"coaps://127.0.0.1:{port}/who"
        try:
            first = await get(client, uri)
            again = await get(client, uri)
            for mtu in (1100, 1000):  # the third session evicts the first (the bound is 2)
                current[0] = mtu
                await get(client, uri)
            assert first.remote.ended
            current[0] = 1200
            last = await get(client, uri)
        finally:
            await client.shutdown()
            statistics = server_transport.server.statistics()
            await server.shutdown()
        assert again.remote is first.remote
        assert last.remote is not first.remote and last.payload.startswith(b"cert CN=")
        assert client_transport.drops == {"client_session_evicted": 2}
        assert statistics.handshakes_completed == 4

    run(main())


def test_a_message_too_large_for_the_session_is_dropped_not_the_session(pki: PKIFiles) -> None:
    import aiocoap.resource as resource

    class Oversized(resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            request.remote.send(b"\x50" + bytes(4000))  # a NON message far past the MTU
            return aiocoap.Message(payload=b"still here")

    async def main() -> None:
        root = site()
        root.add_resource(["big"], Oversized())
        server = await coaps.create_server_context(root, "127.0.0.1", 0, config=server_config(pki))
        transport = coaps.coaps_transport(server)
        port = transport.server.addresses[0][1]
        client = await coaps.create_client_context(cert_client(pki))
        try:
            response = await get(client, f"coaps://127.0.0.1:{port}/big")
            after = await get(client, f"coaps://127.0.0.1:{port}/who")
        finally:
            await client.shutdown()
            await server.shutdown()
        assert response.payload == b"still here" and after.remote is response.remote
        assert transport.drops == {"message_too_large": 1}

    run(main())


def test_ended_sessions_are_not_pinned_by_aiocoap_remotes(pki: PKIFiles) -> None:
    """aiocoap keeps a remote for deduplication (EXCHANGE_LIFETIME, 247 s) after its session
    ended; the remote must not keep the session's channel (and OpenSSL connection) alive with
    it, or a peer opening and ending sessions pins one per session, past max_sessions."""
    import asyncio
    import gc
    import weakref

    import aiocoap.resource as resource

    seen: list[tuple[object, weakref.ref[object]]] = []

    class Remember(resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            seen.append((request.remote, weakref.ref(request.remote.channel)))
            return aiocoap.Message(payload=b"noted")

    async def main() -> None:
        root = site()
        root.add_resource(["note"], Remember())
        server = await coaps.create_server_context(root, "127.0.0.1", 0, config=server_config(pki))
        transport = coaps.coaps_transport(server)
        port = transport.server.addresses[0][1]
        request = bytes([0x42, 0x01, 0x12, 0x34]) + b"t1" + bytes([0xB4]) + b"note"
        client = await coaps.create_client_context(cert_client(pki))
        try:
            async with dtlskit.connect("127.0.0.1", port, config=cert_client(pki)) as channel:
                await channel.send(request)
                assert aiocoap.Message.decode(await channel.recv()).payload == b"noted"
            ((remote, server_channel),) = seen
            for _ in range(3000):  # until the server saw the close_notify (bounded)
                if remote.ended:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
            assert remote.ended  # type: ignore[attr-defined]
            # The client side: a session the server ended lets its channel go as well.
            first = await get(client, f"coaps://127.0.0.1:{port}/note")
            client_channel = weakref.ref(first.remote.channel)
            seen[1][0].channel.close()  # type: ignore[attr-defined]  # the server ends it
            await asyncio.wait_for(asyncio.shield(first.remote._task), 30)
            gc.collect()
            assert first.remote.ended and first.remote.channel is None
            assert client_channel() is None
            assert remote.channel is None  # type: ignore[attr-defined]
            assert server_channel() is None, gc.get_referrers(server_channel())
            assert remote.hostinfo_local  # type: ignore[attr-defined]  # still answers
        finally:
            await client.shutdown()
            await server.shutdown()

    run(main())
