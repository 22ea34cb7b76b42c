"""Pre-shared keys (RFC 4279) through the bindings' PSK callbacks: in memory on a fake clock, and
against OpenSSL's and GnuTLS's own PSK servers and clients over loopback UDP."""

from __future__ import annotations

import threading

import pytest

import dtlskit
from dtlskit.core import DTLSConnection, ServerEngine
from dtlskit.core import events as ev
from dtlskit.testing import MemoryPair

from .. import peers
from .loop import ClientLoop, ServerLoop

KEY = bytes(range(16))
SERVER = dtlskit.DTLSConfiguration.server(psk_lookup={"dev1": KEY, "dev2": b"\x42" * 32})
CLIENT = dtlskit.DTLSConfiguration.client(psk=("dev1", KEY))


def test_psk_only_server_and_client():
    pair = MemoryPair(SERVER, CLIENT)
    assert pair.handshake()
    assert pair.client.cipher == "PSK-AES128-GCM-SHA256"  # the first of PSK_CIPHERS
    assert pair.client.peer_certificate is None
    conn = pair.server_connection
    assert conn is not None
    assert conn.psk_identity == "dev1"
    assert pair.client.psk_identity == "dev1"
    pair.client.send(b"psk hello")
    pair.pump()
    assert pair.run(lambda: pair.server_messages() == [b"psk hello"])


def test_second_identity_and_bytes_identity():
    pair = MemoryPair(SERVER, CLIENT.replace(psk=(b"dev2", b"\x42" * 32)))
    assert pair.handshake()
    assert pair.server_connection is not None
    assert pair.server_connection.psk_identity == "dev2"


def test_callable_lookup_and_identity_hint():
    asked: list[str] = []

    def lookup(identity: str) -> bytes | None:
        asked.append(identity)
        return KEY if identity == "dev1" else None

    server = dtlskit.DTLSConfiguration.server(psk_lookup=lookup, psk_identity_hint="gateway-7")
    pair = MemoryPair(server, CLIENT)
    assert pair.handshake()
    assert asked == ["dev1"]
    assert pair.client.psk_identity_hint == "gateway-7"


@pytest.mark.parametrize(
    "cipher",
    [
        "PSK-AES128-GCM-SHA256",
        "PSK-AES256-GCM-SHA384",
        "ECDHE-PSK-CHACHA20-POLY1305",
        "PSK-CHACHA20-POLY1305",
    ],
)
def test_each_default_psk_suite(cipher):
    assert cipher in dtlskit.config.PSK_CIPHERS.split(":")
    pair = MemoryPair(SERVER, CLIENT.replace(ciphers=cipher))
    assert pair.handshake(), pair.client.error
    assert pair.client.cipher == cipher


def test_ccm_suite_when_both_sides_ask_for_it():
    pair = MemoryPair(
        SERVER.replace(ciphers="PSK-AES128-CCM"), CLIENT.replace(ciphers="PSK-AES128-CCM")
    )
    assert pair.handshake(), pair.client.error
    assert pair.client.cipher == "PSK-AES128-CCM"


def test_ccm8_only_when_asked_and_at_security_level_zero():
    assert "CCM8" not in dtlskit.config.PSK_CIPHERS
    with pytest.raises(dtlskit.ConfigurationError, match="@SECLEVEL=0"):
        CLIENT.replace(ciphers="PSK-AES128-CCM8").build_context(server=False)
    ccm8 = "PSK-AES128-CCM8:@SECLEVEL=0"
    pair = MemoryPair(SERVER.replace(ciphers=ccm8), CLIENT.replace(ciphers=ccm8))
    assert pair.handshake(), pair.client.error
    assert pair.client.cipher == "PSK-AES128-CCM8"
    # A client asking for CCM-8 from a server with the default PSK suites: nothing in common.
    pair = MemoryPair(SERVER, CLIENT.replace(ciphers=ccm8))
    assert not pair.handshake()
    assert isinstance(pair.client.error, dtlskit.HandshakeFailure)
    assert "handshake failure" in str(pair.client.error)


def server_error(pair: MemoryPair) -> dtlskit.DTLSError:
    while pair.deliver_one():
        pass
    errors = [e.error for e in pair.server_events if isinstance(e, ev.ConnectionTerminated)]
    assert errors, f"the server side did not fail: {pair.server_events}"
    return errors[-1]


def test_unknown_identity_fails_on_both_sides():
    pair = MemoryPair(SERVER, CLIENT.replace(psk=("stranger", KEY)))
    assert not pair.handshake()
    error = pair.client.error
    assert isinstance(error, dtlskit.HandshakeFailure)
    assert error.alert == "unknown psk identity"
    assert "does not know our PSK identity 'stranger'" in str(error)
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.HandshakeFailure)
    assert "unknown PSK identity 'stranger'" in str(peer)
    assert peer.alert == "unknown psk identity"


def test_wrong_key_ends_in_a_timeout_that_names_the_psk():
    # DTLS drops records that fail to decrypt (RFC 6347 §4.1.2.7): with different keys neither
    # side ever sees the other's Finished, so no alert is possible and both sides time out.
    pair = MemoryPair(SERVER, CLIENT.replace(psk=("dev1", b"\xff" * 16)))
    start = pair.clock.now
    assert not pair.handshake()
    error = pair.client.error
    assert isinstance(error, dtlskit.HandshakeTimeout)
    assert pair.clock.now - start == pytest.approx(SERVER.handshake_timeout, abs=1.0)
    assert "PSK" in str(error) and "'dev1'" in str(error) and "different keys" in str(error)
    pair.run(lambda: False)
    peer = [e.error for e in pair.server_events if isinstance(e, ev.ConnectionTerminated)]
    assert len(peer) == 1 and isinstance(peer[0], dtlskit.HandshakeTimeout)
    assert "different keys" in str(peer[0])


def test_lookup_that_raises_fails_the_handshake_with_its_reason():
    def lookup(identity: str) -> bytes | None:
        raise RuntimeError("key store offline")

    pair = MemoryPair(dtlskit.DTLSConfiguration.server(psk_lookup=lookup), CLIENT)
    assert not pair.handshake()
    peer = server_error(pair)
    assert "the PSK lookup for identity 'dev1' raised RuntimeError: key store offline" in str(peer)


def test_lookup_returning_a_non_key():
    pair = MemoryPair(dtlskit.DTLSConfiguration.server(psk_lookup=lambda i: "text"), CLIENT)  # type: ignore[arg-type,return-value]
    assert not pair.handshake()
    assert "returned 'text', not a key" in str(server_error(pair))


def test_server_with_certificate_and_psk_serves_both(pki, client_config):
    server = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, psk_lookup={"dev1": KEY}
    )
    psk = MemoryPair(server, CLIENT)
    assert psk.handshake()
    assert "PSK" in (psk.client.cipher or "")
    certified = MemoryPair(server, client_config)
    assert certified.handshake()
    assert "ECDSA" in (certified.client.cipher or "")


def test_certificate_only_server_refuses_a_psk_client(server_config):
    pair = MemoryPair(server_config, CLIENT)
    assert not pair.handshake()
    assert isinstance(pair.client.error, dtlskit.HandshakeFailure)
    assert "no cipher suite in common" in str(server_error(pair))


def test_psk_client_does_not_need_a_ca_or_host_name():
    config = dtlskit.DTLSConfiguration.client(psk=("dev1", KEY))
    assert config.effective_verify_mode(server=False).name == "CERT_NONE"
    # ...but one that also offers certificate suites verifies certificates as usual.
    mixed = config.replace(ciphers="PSK-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert mixed.effective_verify_mode(server=False).name == "CERT_REQUIRED"


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"psk": ("dev1", "not bytes")}, "psk key must be bytes"),
        ({"psk": ("", KEY)}, "psk identity must be"),
        ({"psk": ("x" * 129, KEY)}, "psk identity must be"),
        ({"psk": ("dev1", b"k" * 513)}, "psk key must be bytes, 1 to 512"),
        ({"psk": "dev1"}, "psk must be an (identity, key) tuple"),
        ({"psk_lookup": 42}, "psk_lookup must be a mapping or a callable"),
        ({"psk_lookup": {"a": "b"}}, "psk_lookup must map str identities"),
        ({"psk_identity_hint": "h" * 200}, "psk_identity_hint"),
    ],
)
def test_psk_settings_are_validated(settings, words):
    with pytest.raises(
        dtlskit.ConfigurationError, match=words.replace("(", r"\(").replace(")", r"\)")
    ):
        dtlskit.DTLSConfiguration(**settings)


def test_server_without_certificate_or_psk_is_refused():
    with pytest.raises(dtlskit.ConfigurationError, match="psk_lookup for a PSK-only server"):
        dtlskit.DTLSConfiguration.server().build_context(server=True)


# -- interop over loopback UDP ----------------------------------------------------------------

HEX = KEY.hex()


def run_client(port: int, config: dtlskit.DTLSConfiguration) -> ClientLoop:
    loop = ClientLoop(
        DTLSConnection(config, server=False, peer_address=("127.0.0.1", port)), ("127.0.0.1", port)
    )
    loop.connect(timeout=10)
    return loop


@pytest.mark.interop
@peers.needs_openssl
@pytest.mark.parametrize("cipher", ["PSK-AES128-GCM-SHA256", "ECDHE-PSK-CHACHA20-POLY1305"])
def test_client_against_openssl_s_server_psk(cipher):
    def argv(port: int) -> list[str]:
        return peers.openssl_psk_s_server(
            port, HEX, "dev1", "-psk_hint", "openssl-hint", "-cipher", cipher
        )

    with peers.serving(argv, ready="ACCEPT") as (server, port):
        loop = run_client(port, CLIENT.replace(ciphers=cipher))
        try:
            assert loop.engine.state.value == "established", loop.engine.error
            assert loop.engine.cipher == cipher
            assert loop.engine.psk_identity_hint == "openssl-hint"
            loop.send(b"hello from dtlskit\n")
            server.wait_for("hello from dtlskit")
            server.write(b"hello from openssl\n")
            assert loop.run_until(lambda: b"hello from openssl\n" in loop.messages(), 10)
        finally:
            loop.close()


@pytest.mark.interop
@peers.needs_openssl
def test_client_with_wrong_key_against_openssl_s_server():
    def argv(port: int) -> list[str]:
        return peers.openssl_psk_s_server(port, HEX, "dev1")

    with peers.serving(argv, ready="ACCEPT") as (_, port):
        config = CLIENT.replace(psk=("dev1", b"\xee" * 16), handshake_timeout=4.0)
        loop = run_client(port, config)
        try:
            error = loop.engine.error
            assert isinstance(error, dtlskit.HandshakeTimeout), error
            assert "different keys" in str(error)
        finally:
            loop.close()


@pytest.mark.interop
@peers.needs_gnutls
def test_client_with_unknown_identity_against_gnutls_serv(tmp_path):
    passwd = tmp_path / "psk.txt"
    passwd.write_text(f"dev1:{HEX}\n")

    def argv(port: int) -> list[str]:
        return peers.gnutls_psk_serv(port, str(passwd))

    with peers.serving(argv, ready="listening") as (_, port):
        loop = run_client(port, CLIENT.replace(psk=("intruder", KEY), handshake_timeout=4.0))
        try:
            # GnuTLS hides which identities exist: for an unknown one it derives a random key
            # (no unknown_psk_identity alert), so this looks exactly like a wrong key.
            error = loop.engine.error
            assert isinstance(error, dtlskit.HandshakeTimeout), error
            assert "'intruder'" in str(error) and "different keys" in str(error)
        finally:
            loop.close()


@pytest.mark.interop
@peers.needs_gnutls
def test_client_against_gnutls_serv_psk(tmp_path):
    passwd = tmp_path / "psk.txt"
    passwd.write_text(f"dev1:{HEX}\n")

    def argv(port: int) -> list[str]:
        return peers.gnutls_psk_serv(port, str(passwd))

    with peers.serving(argv, ready="listening") as (_, port):
        loop = run_client(port, CLIENT)
        try:
            assert loop.engine.state.value == "established", loop.engine.error
            assert "PSK" in (loop.engine.cipher or "")
            loop.send(b"echo me")
            assert loop.run_until(lambda: b"echo me" in loop.messages(), 10)
        finally:
            loop.close()


def serve_in_thread(engine: ServerEngine) -> tuple[ServerLoop, threading.Event, threading.Thread]:
    loop = ServerLoop(engine)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_until, args=(stop.is_set, 20.0), daemon=True)
    thread.start()
    return loop, stop, thread


@pytest.mark.interop
@peers.needs_openssl
def test_server_against_openssl_s_client_psk():
    loop, stop, thread = serve_in_thread(ServerEngine(SERVER))
    try:
        argv = peers.openssl_s_client(
            loop.port, "-psk", HEX, "-psk_identity", "dev1", "-cipher", "PSK-AES128-GCM-SHA256"
        )
        with peers.running(argv) as client:
            client.wait_for("Cipher is PSK-AES128-GCM-SHA256")
            client.write(b"hello from s_client\n")
            client.wait_for("hello from s_client")  # our echo, printed by s_client
    finally:
        stop.set()
        thread.join(timeout=5)
        loop.close()
    identities = [
        conn.psk_identity for _, conn, e in loop.events if isinstance(e, ev.HandshakeCompleted)
    ]
    assert identities == ["dev1"]


@pytest.mark.interop
@peers.needs_gnutls
def test_server_against_gnutls_cli_psk():
    loop, stop, thread = serve_in_thread(ServerEngine(SERVER))
    try:
        argv = peers.gnutls_cli(
            loop.port,
            "--pskusername",
            "dev1",
            "--pskkey",
            HEX,
            "--priority",
            "NORMAL:-KX-ALL:+PSK:+ECDHE-PSK",
        )
        with peers.running(argv) as client:
            client.wait_for("Handshake was completed")
            client.write(b"hello from gnutls-cli\n")
            client.wait_for("hello from gnutls-cli")
    finally:
        stop.set()
        thread.join(timeout=5)
        loop.close()
    assert any(isinstance(e, ev.MessageReceived) for _, _, e in loop.events)
