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


class _ChangingProtocols:
    """A protocol list that reads once, then fails: the ALPN callback must not let that into C."""

    def __init__(self) -> None:
        self.reads = 0

    def __iter__(self):
        self.reads += 1
        if self.reads > 1:
            raise RuntimeError("protocol list gone")
        return iter(["x"])

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> str:
        return "x"


def test_an_alpn_callback_that_fails_fails_the_handshake_with_the_reason():
    server_ctx, client_ctx = psk_contexts()
    _bindings.set_alpn_select(server_ctx, _ChangingProtocols())
    client_ctx.set_alpn_protos([b"a"])
    server, client = connections(server_ctx, client_ctx)
    notes = _bindings.attach_notes(server)
    with pytest.raises(SSL.Error):
        handshake(server, client)
    assert notes.alpn_offered == ("a",)
    assert notes.failure == "ALPN selection failed: RuntimeError: protocol list gone"


def certificate_contexts(pki):
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    server_ctx.use_certificate_file(str(pki.server_cert))
    server_ctx.use_privatekey_file(str(pki.server_key))
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    client_ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    return server_ctx, client_ctx


@pytest.mark.parametrize("with_notes", [True, False])
def test_a_certificate_request_is_noted_only_where_there_are_notes(pki, with_notes):
    server_ctx, client_ctx = certificate_contexts(pki)
    server_ctx.set_verify(SSL.VERIFY_PEER)  # asks; goes on without one
    _bindings.watch_handshake(client_ctx, server=False)
    server, client = connections(server_ctx, client_ctx)
    notes = _bindings.attach_notes(client) if with_notes else None
    handshake(server, client)
    assert server.get_peer_certificate() is None
    if notes is not None:
        assert notes.certificate_requested


@pytest.mark.parametrize("with_notes", [True, False])
def test_a_refused_renegotiation_is_noted_only_where_there_are_notes(pki, with_notes):
    server_ctx, client_ctx = certificate_contexts(pki)
    client_ctx.set_options(SSL.OP_NO_RENEGOTIATION)
    server, client = connections(server_ctx, client_ctx)
    notes = _bindings.attach_notes(client) if with_notes else None
    handshake(server, client)
    _bindings.watch_established(client)
    assert server.renegotiate()
    _bindings.do_handshake(server)  # writes a HelloRequest
    assert move(server, client)
    assert _bindings.read_plaintext(client) == _bindings._WANT_READ
    alert = _bindings.read_output(client)
    assert alert[0] == 21  # the client answered with an alert record
    if notes is not None:
        assert notes.renegotiation_refused


# -- the TLS engine's stream calls, one at a time ------------------------------------------------


def test_stream_read_returns_data_then_want_read_then_clean_close(pki):
    server, client = connections(*certificate_contexts(pki))
    handshake(server, client)
    _bindings.stream_write(client, b"hello")
    _bindings.stream_feed(server, _bindings.stream_drain(client))
    assert _bindings.stream_read(server) == b"hello"
    assert _bindings.stream_read(server) == _bindings.WANT_READ
    client.shutdown()
    _bindings.stream_feed(server, _bindings.stream_drain(client))
    assert _bindings.stream_read(server) == _bindings.CLEAN_CLOSE


def test_stream_read_raises_on_a_corrupted_record(pki):
    server, client = connections(*certificate_contexts(pki))
    handshake(server, client)
    _bindings.stream_write(client, b"hello")
    record = bytearray(_bindings.stream_drain(client))
    record[-1] ^= 1
    _bindings.stream_feed(server, bytes(record))
    with pytest.raises(SSL.Error):
        _bindings.stream_read(server)


def test_stream_write_after_shutdown_raises(pki):
    server, client = connections(*certificate_contexts(pki))
    handshake(server, client)
    client.shutdown()
    with pytest.raises(SSL.Error):
        _bindings.stream_write(client, b"too late")


def test_stream_read_all_takes_every_record_then_reports_how_it_stopped(pki):
    server, client = connections(*certificate_contexts(pki))
    handshake(server, client)
    assert _bindings.stream_drain(client) == b""  # nothing written yet
    _bindings.stream_write(client, b"one")
    _bindings.stream_write(client, b"two")
    _bindings.stream_feed(server, _bindings.stream_drain(client))
    assert _bindings.stream_read_all(server) == ([b"one", b"two"], _bindings.WANT_READ, None)
    _bindings.stream_write(client, b"three")
    client.shutdown()
    _bindings.stream_feed(server, _bindings.stream_drain(client))
    assert _bindings.stream_read_all(server) == ([b"three"], _bindings.CLEAN_CLOSE, None)


def test_stream_read_all_returns_the_chunks_before_an_error(pki):
    server, client = connections(*certificate_contexts(pki))
    handshake(server, client)
    _bindings.stream_write(client, b"good")
    good = _bindings.stream_drain(client)
    _bindings.stream_write(client, b"bad")
    bad = bytearray(_bindings.stream_drain(client))
    bad[-1] ^= 1
    _bindings.stream_feed(server, good + bytes(bad))
    chunks, status, error = _bindings.stream_read_all(server)
    assert chunks == [b"good"] and status == _bindings.WANT_READ
    assert isinstance(error, SSL.Error)


def test_session_addresses_follow_the_connections_session(pki):
    server, client = connections(*certificate_contexts(pki))
    assert _bindings.session_address(client) == 0  # no session before the handshake
    assert _bindings.session_address_of(None) == 0
    handshake(server, client)
    session = _bindings.get_session(client)
    assert session is not None
    assert _bindings.session_address(client) == _bindings.session_address_of(session) != 0


def test_verify_time_makes_a_valid_certificate_expired(pki):
    server_ctx, client_ctx = certificate_contexts(pki)
    client_ctx.load_verify_locations(str(pki.ca_cert))
    client_ctx.set_verify(SSL.VERIFY_PEER)
    server, client = connections(server_ctx, client_ctx)
    handshake(server, client)  # verifies now: the certificate is valid
    assert _bindings.verify_result(client) == 0
    server, client = connections(server_ctx, client_ctx)
    _bindings.set_verify_time(client, 4102444800)  # 2100-01-01
    with pytest.raises(SSL.Error, match="certificate verify failed"):
        handshake(server, client)
    assert _bindings.verify_result(client) == 10  # X509_V_ERR_CERT_HAS_EXPIRED


def test_server_contexts_built_at_once_share_the_cookie_callbacks_made_at_import(
    server_config, client_config
):
    """The cookie callbacks every server context points at exist from import on, and each
    context keeps them: eight threads building their first contexts at once make none (made
    lazily, two threads could each make a pair, and OpenSSL would call the one no longer
    held after cffi freed it). Each context then completes a handshake."""
    import sys
    import threading

    from dtlskit.core import ServerEngine
    from dtlskit.core.context import build_context
    from dtlskit.testing import MemoryPair

    pair = _bindings._COOKIE_CALLBACKS
    assert pair is not None
    made: list[object] = []
    real = _bindings._ffi

    class Counting:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def callback(self, *args: object, **kwargs: object) -> object:
            made.append(args[0])
            return real.callback(*args, **kwargs)

    contexts: list[SSL.Context] = []
    barrier = threading.Barrier(8)

    def build() -> None:
        barrier.wait()
        contexts.append(build_context(server_config, server=True))

    old_interval = sys.getswitchinterval()
    _bindings._ffi = Counting()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=build) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        _bindings._ffi = real
        sys.setswitchinterval(old_interval)
    assert len(contexts) == 8
    assert not [kind for kind in made if "unsigned char" in str(kind)], made
    assert _bindings._COOKIE_CALLBACKS is pair
    for n, ctx in enumerate(contexts):
        assert pair in _bindings._keepalive[ctx]
        engine = ServerEngine(server_config, context=ctx)
        memory = MemoryPair(
            server_config, client_config, server=engine, client_address=(f"127.0.9.{n + 1}", 5)
        )
        assert memory.handshake(), memory.client.error
