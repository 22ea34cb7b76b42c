"""Hibernated sessions against OpenSSL's and GnuTLS's own DTLS over loopback UDP, for every
suite record_protection implements (AES-128/256-GCM, ChaCha20-Poly1305, AES-CCM, AES-CCM-8;
with PSK, and the GCM/ChaCha ones with certificates too), in both directions.

Our client hibernates as soon as its handshake completes and then sends and receives with its
clock moved an hour on (the engine's ``now``); our server hibernates after a short idle period
on its own timer, and the foreign client's next records reach it hibernated."""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

import pytest

import dtlskit
from dtlskit.core import DTLSConnection, ServerEngine
from dtlskit.core import events as ev

from .. import peers
from .loop import ServerLoop

pytestmark = pytest.mark.interop

KEY = bytes(range(16))
HEX = KEY.hex()
LATER = 3600.0  # how far the client's clock jumps after hibernating

# (OpenSSL cipher list, GnuTLS cipher name)
SUITES = [
    ("PSK-AES128-GCM-SHA256", "AES-128-GCM"),
    ("PSK-AES256-GCM-SHA384", "AES-256-GCM"),
    ("PSK-CHACHA20-POLY1305", "CHACHA20-POLY1305"),
    ("PSK-AES128-CCM", "AES-128-CCM"),
    ("PSK-AES128-CCM8:@SECLEVEL=0", "AES-128-CCM-8"),
]
IDS = [s[1] for s in SUITES]


def gnutls_priority(cipher: str) -> str:
    return f"NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:+{cipher}"


class Client:
    """Drives one client engine over a connected UDP socket with a clock that can jump."""

    def __init__(self, engine: DTLSConnection, port: int) -> None:
        self.engine = engine
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.offset = 0.0
        self.received: list[bytes] = []

    def now(self) -> float:
        return time.monotonic() + self.offset

    def flush(self) -> None:
        for datagram in self.engine.datagrams_to_send(self.now()):
            self.sock.send(datagram)
        while (event := self.engine.next_event()) is not None:
            if isinstance(event, ev.MessageReceived):
                self.received.append(event.data)

    def run_until(self, done: Any, bound: float = 10.0) -> bool:
        deadline = time.monotonic() + bound
        while not done():
            if time.monotonic() > deadline:
                return False
            timer = self.engine.get_timer()
            wait = 0.05 if timer is None else max(0.0, min(timer - self.now(), 0.05))
            if select.select([self.sock], [], [], wait)[0]:
                try:
                    self.engine.receive_datagram(self.sock.recv(65535), self.now())
                except ConnectionRefusedError:
                    continue
            timer = self.engine.get_timer()
            if timer is not None and self.now() >= timer:
                self.engine.handle_timer(self.now())
            self.flush()
        return True

    def connect(self) -> None:
        self.engine.connect(self.now())
        self.flush()
        assert self.run_until(lambda: self.engine.state.value != "handshaking"), "no handshake"
        assert self.engine.state.value == "established", self.engine.error

    def send(self, data: bytes) -> None:
        record = self.engine.seal(data)
        if record is not None:
            self.sock.send(record)
        self.flush()

    def close(self) -> None:
        self.engine.close()
        self.flush()
        self.sock.close()


def hibernating_client(port: int, ciphers: str, **settings: Any) -> Client:
    config = dtlskit.DTLSConfiguration.client(
        ciphers=ciphers, limits=dtlskit.Limits(hibernate_after=0), **settings
    )
    client = Client(DTLSConnection(config, server=False, peer_address=("127.0.0.1", port)), port)
    client.connect()
    assert client.engine.hibernated
    client.offset = LATER  # everything from here happens an hour later, for the engine
    return client


def exchange(client: Client, peer: peers.Peer, echo: bool) -> None:
    """Three messages each way (or echoed back), long after hibernation."""
    for i in range(3):
        line = b"hibernated %d\n" % i
        client.send(line)
        if echo:
            assert client.run_until(lambda line=line: line in client.received), client.received
        else:
            peer.wait_for(line.decode().strip())
            peer.write(b"from the peer %d\n" % i)
            assert client.run_until(lambda i=i: b"from the peer %d\n" % i in client.received)
    assert not client.engine.statistics().drops


# -- our hibernated client against their servers -------------------------------------------------


@peers.needs_openssl
@pytest.mark.parametrize(("ciphers", "gnutls"), SUITES, ids=IDS)
def test_hibernated_client_against_openssl_s_server(ciphers, gnutls):
    def argv(port: int) -> list[str]:
        return peers.openssl_psk_s_server(port, HEX, "dev1", "-cipher", ciphers)

    with peers.serving(argv, ready="ACCEPT") as (server, port):
        client = hibernating_client(port, ciphers, psk=("dev1", KEY))
        try:
            assert client.engine.cipher == ciphers.split(":")[0]
            exchange(client, server, echo=False)
        finally:
            client.close()
        server.wait_for("DONE")  # s_server read our close_notify


@peers.needs_gnutls
@pytest.mark.parametrize(("ciphers", "gnutls"), SUITES, ids=IDS)
def test_hibernated_client_against_gnutls_serv(tmp_path, ciphers, gnutls):
    passwd = tmp_path / "psk.txt"
    passwd.write_text(f"dev1:{HEX}\n")

    def argv(port: int) -> list[str]:
        assert peers.GNUTLS_SERV is not None
        return [
            peers.GNUTLS_SERV,
            "--udp",
            "--echo",
            "-p",
            str(port),
            "--pskpasswd",
            str(passwd),
            "--priority",
            gnutls_priority(gnutls),
        ]

    with peers.serving(argv, ready="listening") as (server, port):
        client = hibernating_client(port, ciphers, psk=("dev1", KEY))
        try:
            exchange(client, server, echo=True)
        finally:
            client.close()


@peers.needs_openssl
@pytest.mark.parametrize(
    "ciphers",
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
)
def test_hibernated_certificate_client_against_openssl_s_server(pki, ciphers):
    def argv(port: int) -> list[str]:
        return peers.openssl_s_server(
            port, str(pki.server_cert), str(pki.server_key), "-cipher", ciphers
        )

    with peers.serving(argv, ready="ACCEPT") as (server, port):
        client = hibernating_client(port, ciphers, cafile=pki.ca_cert, server_hostname="localhost")
        try:
            assert client.engine.cipher == ciphers
            assert client.engine.peer_certificate is not None
            exchange(client, server, echo=False)
        finally:
            client.close()


# -- their clients against our hibernating server ------------------------------------------------


class Serving:
    """Our ServerEngine (echo) on a thread; sessions hibernate after ``after`` idle seconds."""

    def __init__(self, config: dtlskit.DTLSConfiguration, after: float = 0.3) -> None:
        config = config.replace(limits=dtlskit.Limits(hibernate_after=after))
        self.loop = ServerLoop(ServerEngine(config))
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.loop.run_until, args=(self.stop.is_set, 60.0), daemon=True
        )

    def __enter__(self) -> Serving:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.loop.close()

    def sessions(self) -> list[DTLSConnection]:
        return [
            conn for _, conn, e in list(self.loop.events) if isinstance(e, ev.HandshakeCompleted)
        ]

    def wait_hibernated(self) -> DTLSConnection:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = [c for c in self.sessions() if c.hibernated]
            if done:
                return done[0]
            time.sleep(0.02)
        raise AssertionError("the server session never hibernated")


def echo_through(client: peers.Peer, serving: Serving, ready: str) -> None:
    client.wait_for(ready)
    client.write(b"before hibernation\n")
    client.wait_for("before hibernation")  # our echo, printed by the client
    conn = serving.wait_hibernated()
    for i in range(3):
        client.write(b"long after %d\n" % i)
        client.wait_for(f"long after {i}")
    assert conn.hibernated
    assert not conn.statistics().drops


@peers.needs_openssl
@pytest.mark.parametrize(("ciphers", "gnutls"), SUITES, ids=IDS)
def test_openssl_s_client_against_hibernating_server(ciphers, gnutls):
    config = dtlskit.DTLSConfiguration.server(psk_lookup={"dev1": KEY}, ciphers=ciphers)
    with Serving(config) as serving:
        argv = peers.openssl_s_client(
            serving.loop.port, "-psk", HEX, "-psk_identity", "dev1", "-cipher", ciphers
        )
        with peers.running(argv) as client:
            echo_through(client, serving, f"Cipher is {ciphers.split(':')[0]}")


@peers.needs_gnutls
@pytest.mark.parametrize(("ciphers", "gnutls"), SUITES, ids=IDS)
def test_gnutls_cli_against_hibernating_server(ciphers, gnutls):
    config = dtlskit.DTLSConfiguration.server(psk_lookup={"dev1": KEY}, ciphers=ciphers)
    with Serving(config) as serving:
        argv = peers.gnutls_cli(
            serving.loop.port,
            "--pskusername",
            "dev1",
            "--pskkey",
            HEX,
            "--priority",
            gnutls_priority(gnutls),
        )
        with peers.running(argv) as client:
            echo_through(client, serving, "Handshake was completed")


@peers.needs_gnutls
def test_gnutls_cli_with_certificates_against_hibernating_server(pki, server_config):
    with Serving(server_config) as serving:
        argv = peers.gnutls_cli(
            serving.loop.port,
            "--x509cafile",
            str(pki.ca_cert),
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+CHACHA20-POLY1305:+AES-256-GCM",
            host="localhost",
        )
        with peers.running(argv) as client:
            echo_through(client, serving, "Handshake was completed")
