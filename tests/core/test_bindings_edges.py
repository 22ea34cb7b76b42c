"""``dtlskit.core._bindings`` at its edges: callbacks on connections that carry no dtlskit notes
(plain pyOpenSSL connections on a context dtlskit configured), and the stream calls of the TLS
engine used one at a time. Real OpenSSL (TLS 1.2 over memory BIOs), no sockets, no clock."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from dtlskit.core import _bindings

KEY = bytes(range(16))
PSK = "PSK-AES128-GCM-SHA256"


def context(server: bool) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(PSK.encode())
    return ctx


def connections(server_ctx: SSL.Context, client_ctx: SSL.Context):
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    return server, client


def move(source: SSL.Connection, target: SSL.Connection) -> bool:
    data = _bindings.read_output(source)
    if data:
        target.bio_write(data)
    return bool(data)


def handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    """Drive both ends to the end of the handshake; raises what OpenSSL raises on failure."""
    done = {id(server): False, id(client): False}
    for _ in range(20):
        for end, peer in ((client, server), (server, client)):
            if not done[id(end)]:
                done[id(end)] = _bindings.do_handshake(end)
            move(end, peer)
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def psk_contexts(lookup=lambda identity: KEY, hint: bytes | None = None):
    server_ctx, client_ctx = context(True), context(False)
    _bindings.set_psk_server(server_ctx, lookup, hint)
    _bindings.set_psk_client(client_ctx, b"sensor", KEY)
    return server_ctx, client_ctx


# -- callbacks on connections without notes ------------------------------------------------------


def test_psk_callbacks_work_on_connections_without_notes():
    seen = []
    server, client = connections(*psk_contexts(lambda identity: seen.append(identity) or KEY, b"h"))
    handshake(server, client)
    assert seen == ["sensor"]
    assert _bindings.notes_of(server) is None and _bindings.notes_of(client) is None
    client.write(b"ping")
    move(client, server)
    assert _bindings.read_plaintext(server) == b"ping"


def test_a_refused_psk_on_a_connection_without_notes_fails_the_handshake_only():
    server, client = connections(*psk_contexts(lambda identity: None))
    with pytest.raises(SSL.Error):
        handshake(server, client)
    assert _bindings.notes_of(server) is None


def test_the_first_failure_is_the_one_the_notes_keep():
    server, client = connections(*psk_contexts(lambda identity: None))
    notes = _bindings.attach_notes(server)
    notes.failure = "an earlier reason"
    with pytest.raises(SSL.Error):
        handshake(server, client)
    assert notes.psk_identity == "sensor"
    assert notes.failure == "an earlier reason"


def test_server_name_and_alpn_callbacks_without_notes():
    chosen = []
    server_ctx, client_ctx = psk_contexts()
    _bindings.set_servername_callback(server_ctx, lambda conn, name: chosen.append(name))
    _bindings.set_alpn_select(server_ctx, ["b", "a"])
    client_ctx.set_alpn_protos([b"a", b"b"])
    server, client = connections(server_ctx, client_ctx)
    client.set_tlsext_host_name(b"device.example")
    handshake(server, client)
    assert chosen == ["device.example"]
    assert server.get_alpn_proto_negotiated() == client.get_alpn_proto_negotiated() == b"b"
