"""``dtlskit.core._bindings``: the OpenSSL calls pyOpenSSL does not offer. The callbacks never
let an exception into C: a PSK lookup that fails or returns a bad key fails that handshake with
the reason in the error, and the server goes on. Real OpenSSL handshakes in memory."""

from __future__ import annotations

import pytest

import dtlskit
from dtlskit.core import _bindings
from dtlskit.testing import MemoryPair

KEY = bytes(range(16))


def psk_pair(lookup, hint: str | None = None, client_key: bytes = KEY) -> MemoryPair:
    server = dtlskit.DTLSConfiguration.server(psk_lookup=lookup, psk_identity_hint=hint)
    client = dtlskit.DTLSConfiguration.client(psk=("sensor", client_key))
    return MemoryPair(server, client)


def server_failure(pair: MemoryPair) -> str:
    pair.start()
    pair.run()
    while pair.deliver_one():
        pass
    failures = [
        str(event.error)
        for event in pair.server_events
        if isinstance(event, dtlskit.core.ConnectionTerminated)
    ]
    assert failures, pair.server_events
    return failures[0]


@pytest.mark.parametrize(
    ("lookup", "words"),
    [
        (lambda identity: None, "unknown PSK identity 'sensor'"),
        (lambda identity: "a str", "returned 'a str', not a key"),
        (lambda identity: b"", "returned b'', not a key"),
        (lambda identity: b"k" * 1000, "OpenSSL allows at most"),
        (lambda identity: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_a_bad_psk_lookup_fails_that_handshake_with_its_reason(lookup, words) -> None:
    assert words in server_failure(psk_pair(lookup))


def test_the_client_sees_the_identity_hint_and_the_server_the_identity() -> None:
    pair = psk_pair({"sensor": KEY}, hint="gateway-3")
    assert pair.handshake()
    assert pair.client.psk_identity_hint == "gateway-3"
    assert pair.server_connection is not None
    assert pair.server_connection.psk_identity == "sensor"


def test_missing_bindings_are_configuration_errors_naming_them(monkeypatch) -> None:
    assert not _bindings.has("SSL_no_such_function")
    with pytest.raises(dtlskit.ConfigurationError, match="SSL_no_such_function"):
        _bindings._require("SSL_no_such_function")
    monkeypatch.setitem(_bindings._bound, "X509_verify_cert_error_string", False)
    assert _bindings.verify_error_string(20) == "certificate verification error 20"


def test_verify_error_strings_and_notes_of_foreign_connections() -> None:
    assert "issuer" in _bindings.verify_error_string(20)
    assert _bindings.notes_of(None) is None
    from OpenSSL import SSL

    foreign = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    assert _bindings.notes_of(foreign) is None  # not made by a dtlskit engine


def client_engine_on(context, client_config):
    from dtlskit.core import DTLSConnection
    from dtlskit.testing.memory import SERVER_ADDRESS

    return DTLSConnection(client_config, server=False, peer_address=SERVER_ADDRESS, context=context)


@pytest.mark.parametrize(
    ("identity", "key", "words"),
    [
        (b"sensor", b"k" * 2000, "longer than OpenSSL allows"),
        (b"i" * 300, KEY, "longer than OpenSSL allows"),
        (b"sensor", "not bytes", "PSK client callback failed: TypeError"),
    ],
)
def test_a_psk_client_callback_that_cannot_answer_fails_its_handshake(identity, key, words):
    # Beyond what the configuration lets through: the binding itself must refuse, in words.
    server = dtlskit.DTLSConfiguration.server(psk_lookup={"sensor": KEY})
    client = dtlskit.DTLSConfiguration.client(psk=("sensor", KEY))
    context = client.build_context(server=False)
    _bindings.set_psk_client(context, identity, key)
    pair = MemoryPair(server, client)
    pair.client = client_engine_on(context, client)
    pair.start()
    pair.run()
    assert pair.client.error is not None
    assert words in str(pair.client.error)


def test_openssl_refusing_the_psk_identity_hint_is_a_configuration_error():
    from OpenSSL import SSL

    context = SSL.Context(SSL.DTLS_METHOD)
    with pytest.raises(dtlskit.ConfigurationError, match="refused the PSK identity hint"):
        _bindings.set_psk_server(context, lambda identity: None, b"h" * 1000)


def test_openssl_refusals_of_names_and_sessions_are_configuration_errors(monkeypatch):
    from OpenSSL import SSL

    connection = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    with pytest.raises(dtlskit.ConfigurationError, match="refused 'a\\\\x00b' as the expected"):
        _bindings.set_expected_peer_name(connection, "a\x00b")
    with pytest.raises(dtlskit.ConfigurationError, match="could not serialise the session"):
        _bindings.session_to_der(_bindings._ffi.NULL)
    monkeypatch.setitem(_bindings._bound, "ERR_clear_error", False)
    _bindings._clear_errors()  # without the binding: nothing to clear, no error
