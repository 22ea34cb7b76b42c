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
