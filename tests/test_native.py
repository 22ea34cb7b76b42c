"""The C accelerator itself: how it is built, linked and switched, beside the contract tests
of tests/test_accel.py (which run against whichever implementation is active).

CI sets ``DTLSKIT_EXPECT_NATIVE=1`` for the run that must be accelerated: then a missing or
broken extension fails here instead of quietly falling back to Python.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest

import dtlskit
from dtlskit._frontend import accel as _accel
from dtlskit.testing import MemoryPair

_SPEC = importlib.util.find_spec("dtlskit._native")
_EXPECTED = os.environ.get("DTLSKIT_EXPECT_NATIVE") == "1"
_OFF = os.environ.get("DTLSKIT_NATIVE", "1").strip().lower() in ("0", "off", "no", "false")

needs_native = pytest.mark.skipif(
    _SPEC is None and not _EXPECTED,
    reason="dtlskit._native was not built (no C compiler at install time)",
)


def test_the_expected_path_is_active() -> None:
    assert dtlskit.ACCELERATOR == _accel.ACCELERATOR
    if _OFF:
        assert dtlskit.ACCELERATOR == "python"
    elif _EXPECTED:
        assert _SPEC is not None, "DTLSKIT_EXPECT_NATIVE=1 but dtlskit._native was not built"
        assert dtlskit.ACCELERATOR == "native"
    else:
        assert ("native" if _SPEC is not None else "python") == dtlskit.ACCELERATOR


@needs_native
@pytest.mark.parametrize(
    ("value", "expected"), [("0", "python"), ("off", "python"), ("1", "native")]
)
def test_the_environment_switches_it(value: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import dtlskit; print(dtlskit.ACCELERATOR)"],
        capture_output=True,
        text=True,
        env={**os.environ, "DTLSKIT_NATIVE": value},
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == expected


def _native() -> Any:
    """The extension, initialised even when DTLSKIT_NATIVE=0 left it unused."""
    from cryptography.hazmat.bindings._rust import _openssl

    from dtlskit import _native  # type: ignore[attr-defined]

    _native.init(_openssl.ffi, _openssl.lib)
    return _native


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} (binutils) is needed to inspect the built extension"
    return path


@needs_native
def test_the_extension_links_no_openssl() -> None:
    assert _SPEC is not None and _SPEC.origin is not None
    library = _SPEC.origin
    dynamic = subprocess.run(
        [_tool("readelf"), "-d", library], capture_output=True, text=True, check=True
    ).stdout
    needed = [line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert not [lib for lib in needed if "ssl" in lib or "crypto" in lib], needed
    undefined = subprocess.run(
        [_tool("nm"), "-D", "--undefined-only", library], capture_output=True, text=True, check=True
    ).stdout.split()
    undefined = [symbol.split("@")[0] for symbol in undefined]
    assert "recvmmsg" in undefined and "sendmmsg" in undefined  # the inspection sees symbols
    openssl = [s for s in undefined if s.startswith(("SSL_", "BIO_", "ERR_", "EVP_", "OPENSSL_"))]
    assert openssl == []


@needs_native
def test_both_implementations_interoperate_on_one_session(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    native = _native()
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    assert pair.server_connection is not None
    client_c = native.make_handle(pair.client.ssl_object)
    server_py = _accel._py_make_handle(pair.server_connection.ssl_object)
    server_c = native.make_handle(pair.server_connection.ssl_object)
    client_py = _accel._py_make_handle(pair.client.ssl_object)
    for size in (1, 64, 1000):
        message = os.urandom(size)
        record = native.seal_record(client_c, message)
        assert _accel._py_open_record(server_py, record) == message
        back = _accel._py_seal_record(server_py, message)
        assert native.open_record(client_c, back) == message
        assert native.open_record(client_c, back) == _accel._py_open_record(client_py, back)
        assert native.open_record(server_c, b"\x17\xfe\xfd") == _accel.WANT_READ


@needs_native
def test_both_implementations_read_the_same_addresses() -> None:
    native = _native()
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.bind(("::1", 0))
        sender.bind(("::1", 0))
        receiver.setblocking(False)
        for data in (b"a", b"b"):
            sender.sendto(data, receiver.getsockname())
        got: list[tuple[bytes, object]] = []
        for _ in range(1000):  # bounded
            batch, error = (native.recv_batch if not got else _accel._py_recv_batch)(receiver, 1)
            assert error is None
            got.extend(batch)
            if len(got) == 2:
                break
        (first, a), (second, b) = got
        assert (first, second) == (b"a", b"b")
        assert a == b == sender.getsockname()


@needs_native
def test_both_protocol_calls_behave_alike_and_hold_no_reference() -> None:
    from dtlskit import _native

    class Boom(Exception):
        pass

    def received(data: bytes) -> None:
        if data == b"raise":
            raise Boom(data)

    message = b"m" * 10
    for implementation in (_native.ProtocolCall, _accel._PyProtocolCall):
        failures: list[BaseException] = []
        call = implementation(received, failures.append)
        before = sys.getrefcount(message)
        for _ in range(10_000):
            assert call(message) is None
        assert sys.getrefcount(message) == before, implementation  # nothing leaked or kept
        assert call(b"raise") is None
        assert [type(f) for f in failures] == [Boom], implementation


@needs_native
def test_a_peer_s_datagrams_carry_one_address_object() -> None:
    # The native address cache: one tuple per peer (equal to recvfrom's), so the engine's dict
    # lookup matches its key by identity. The pure-Python path makes a new, equal tuple.
    native = _native()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.bind(("127.0.0.1", 0))
        sender.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        got: list[tuple[bytes, object]] = []
        for data in (b"a", b"b", b"c"):
            sender.sendto(data, receiver.getsockname())
            batch, error = native.recv_batch(receiver, 8, 5.0)  # waits up to 5 s for it
            assert error is None and batch, "the datagram never came"
            got.extend(batch)
        assert [data for data, _ in got] == [b"a", b"b", b"c"]
        first = got[0][1]
        assert first == sender.getsockname()
        assert all(address is first for _, address in got)
