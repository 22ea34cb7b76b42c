"""The established-record primitives of :mod:`dtlskit._accel`, whichever implementation is active.

CI runs the suite with the native accelerator and with ``DTLSKIT_NATIVE=0``: the same tests pin
both to one contract.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest
from OpenSSL import SSL

import dtlskit
from dtlskit import _accel
from dtlskit.testing import MemoryPair


@pytest.fixture
def pair(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> MemoryPair:
    memory = MemoryPair(server_config, client_config)
    assert memory.handshake()
    assert memory.server_connection is not None
    return memory


def _handles(pair: MemoryPair) -> tuple[object, object]:
    assert pair.server_connection is not None
    return (
        _accel.make_handle(pair.client.ssl_object),
        _accel.make_handle(pair.server_connection.ssl_object),
    )


def test_accelerator_names_the_active_path() -> None:
    assert _accel.ACCELERATOR in ("native", "python")
    if os.environ.get("DTLSKIT_NATIVE") == "0":
        assert _accel.ACCELERATOR == "python"


def test_a_sealed_record_opens_on_the_other_side(pair: MemoryPair) -> None:
    client, server = _handles(pair)
    for message in (b"x", b"hello" * 10, bytes(range(256)) * 4):
        record = _accel.seal_record(client, message)
        assert isinstance(record, bytes)
        assert record[0] == 23  # application_data, one record: header + ciphertext
        assert len(record) == 13 + int.from_bytes(record[11:13], "big")
        assert _accel.open_record(server, record) == message
    reply = _accel.seal_record(server, b"back")
    assert isinstance(reply, bytes)
    assert _accel.open_record(client, reply) == b"back"


def test_a_replayed_or_corrupted_record_yields_want_read(pair: MemoryPair) -> None:
    client, server = _handles(pair)
    record = _accel.seal_record(client, b"once")
    assert isinstance(record, bytes)
    assert _accel.open_record(server, record) == b"once"
    assert _accel.open_record(server, record) == _accel.WANT_READ  # replay window
    corrupted = _accel.seal_record(client, b"twice")
    assert isinstance(corrupted, bytes)
    flipped = corrupted[:-1] + bytes([corrupted[-1] ^ 1])
    assert _accel.open_record(server, flipped) == _accel.WANT_READ  # bad MAC: dropped
    assert _accel.open_record(server, b"\x17\xfe\xfd" + b"\x00" * 10) == _accel.WANT_READ
    # The session is unharmed by all of it.
    good = _accel.seal_record(client, b"still up")
    assert isinstance(good, bytes)
    assert _accel.open_record(server, good) == b"still up"


def test_close_notify_yields_zero_return(pair: MemoryPair) -> None:
    _, server = _handles(pair)
    pair.client.close()
    (alert,) = pair.client.datagrams_to_send()
    assert _accel.open_record(server, alert) == _accel.ZERO_RETURN
    with pytest.raises(SSL.ZeroReturnError):
        assert pair.server_connection is not None
        _accel.raise_error(pair.server_connection.ssl_object, _accel.ZERO_RETURN)


def test_batches_move_datagrams_in_order_over_real_sockets() -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        b.setblocking(False)
        items = [(bytes([i]) * (i + 1), b.getsockname()) for i in range(10)]
        sent, error = _accel.send_batch(a, items)
        assert (sent, error) == (10, None)
        got: list[tuple[bytes, object]] = []
        for _ in range(100):  # bounded; loopback queues a datagram before sendto returns
            batch, error = _accel.recv_batch(b, 4)
            assert error is None
            assert len(batch) <= 4
            got.extend(batch)
            if len(got) == 10:
                break
        assert [data for data, _ in got] == [data for data, _ in items]
        assert {tuple(address) for _, address in got} == {a.getsockname()}
        assert _accel.recv_batch(b, 4) == ([], None)


def test_a_batch_reports_the_error_that_ended_it() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind(("127.0.0.1", 0))
        too_big = b"x" * 70000  # over the UDP maximum: EMSGSIZE for that datagram
        sent, error = _accel.send_batch(
            sock, [(b"ok", sock.getsockname()), (too_big, sock.getsockname())]
        )
        assert sent == 1
        assert isinstance(error, OSError) and error.errno == errno.EMSGSIZE
