"""The TLS stream primitives of :mod:`dtlskit._frontend.accel` (``stream_open``,
``stream_seal``), whichever implementation is active, and the two implementations against each
other on one session (real OpenSSL on memory BIOs, no sockets).

CI runs the suite with the native accelerator and with ``DTLSKIT_NATIVE=0``: the same tests pin
both to one contract.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import pytest
from OpenSSL import SSL

import dtlskit
from dtlskit._frontend import accel as _accel
from dtlskit.core.tls import TLSConnection

from .test_engine import pair, pump


@pytest.fixture
def engines(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> tuple[TLSConnection, TLSConnection]:
    client, server = pair(server_config, client_config)
    pump(client, server)
    assert client.handshake_completed and server.handshake_completed
    return client, server


def _handles(engines: tuple[TLSConnection, TLSConnection]) -> tuple[Any, Any]:
    client, server = engines
    return _accel.make_handle(client.ssl_object), _accel.make_handle(server.ssl_object)


def test_sealed_data_of_any_size_opens_whole_on_the_other_side(engines: Any) -> None:
    client, server = _handles(engines)
    # Sizes around one record (16,384 bytes) and several: pyOpenSSL enables partial writes,
    # so one SSL_write may take a record's worth; stream_seal writes everything.
    for size in (1, 64, 16383, 16384, 16385, 100_000, 300_001):
        data = os.urandom(size)
        records = _accel.stream_seal(client, data)
        assert isinstance(records, bytes) and len(records) > size
        plaintext, code, output = _accel.stream_open(server, records)
        assert (plaintext, code, output) == (data, _accel.WANT_READ, b"")


def test_records_split_anywhere_come_out_when_complete(engines: Any) -> None:
    client, server = _handles(engines)
    first, second = _accel.stream_seal(client, b"first"), _accel.stream_seal(client, b"second")
    assert isinstance(first, bytes) and isinstance(second, bytes)
    wire = first + second
    cut = len(first) - 3  # inside the first record
    assert _accel.stream_open(server, wire[:cut]) == (b"", _accel.WANT_READ, b"")
    assert _accel.stream_open(server, wire[cut : len(first) + 2]) == (
        b"first",
        _accel.WANT_READ,
        b"",
    )
    assert _accel.stream_open(server, wire[len(first) + 2 :]) == (b"second", _accel.WANT_READ, b"")
    assert _accel.stream_open(server, b"") == (b"", _accel.WANT_READ, b"")


def test_data_then_close_notify_in_one_chunk(engines: Any) -> None:
    client_engine, _ = engines
    client, server = _handles(engines)
    records = _accel.stream_seal(client, b"last words")
    assert isinstance(records, bytes)
    client_engine.close()
    plaintext, code, _ = _accel.stream_open(server, records + client_engine.data_to_send())
    assert (plaintext, code) == (b"last words", _accel.ZERO_RETURN)


def test_garbage_is_an_error_code_that_raise_error_explains(engines: Any) -> None:
    _, server_engine = engines
    client, server = _handles(engines)
    good = _accel.stream_seal(client, b"before")
    assert isinstance(good, bytes)
    plaintext, code, output = _accel.stream_open(server, good + b"\x17\x03\x03\x00\x20" + b"x" * 32)
    assert plaintext == b"before"  # what decrypted before the bad record is kept
    assert code not in (_accel.WANT_READ, _accel.ZERO_RETURN)
    assert output  # OpenSSL's alert for the peer
    with pytest.raises(SSL.Error):
        _accel.raise_error(server_engine.ssl_object, code)


def test_a_handle_after_shutdown_returns_codes(engines: Any) -> None:
    client_engine, _ = engines
    client, _ = _handles(engines)
    client_engine.close()
    result = _accel.stream_seal(client, b"too late")
    assert isinstance(result, int) and result not in (_accel.WANT_READ, _accel.ZERO_RETURN)
    with pytest.raises(SSL.Error):
        _accel.raise_error(client_engine.ssl_object, result)


@pytest.mark.skipif(
    importlib.util.find_spec("dtlskit._native") is None
    and os.environ.get("DTLSKIT_EXPECT_NATIVE") != "1",
    reason="dtlskit._native was not built (no C compiler at install time)",
)
def test_both_implementations_agree_on_one_session(engines: Any) -> None:
    from cryptography.hazmat.bindings._rust import _openssl

    native = importlib.import_module("dtlskit._native")
    native.init(_openssl.ffi, _openssl.lib)  # initialised even when DTLSKIT_NATIVE=0
    client_engine, server_engine = engines
    client_c = native.make_handle(client_engine.ssl_object)
    server_py = _accel._py_make_handle(server_engine.ssl_object)
    for size in (1, 700, 40_000):
        data = os.urandom(size)
        records = native.stream_seal(client_c, data)
        assert _accel._py_stream_open(server_py, records) == (data, _accel.WANT_READ, b"")
        back = _accel._py_stream_seal(server_py, data)
        assert native.stream_open(client_c, back) == (data, _accel.WANT_READ, b"")
