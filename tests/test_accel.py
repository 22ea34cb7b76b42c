"""The established-record primitives of :mod:`dtlskit._frontend.accel`, whichever implementation
is active.

CI runs the suite with the native accelerator and with ``DTLSKIT_NATIVE=0``: the same tests pin
both to one contract.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import threading

import pytest
from OpenSSL import SSL

import dtlskit
from dtlskit._frontend import accel as _accel
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


def test_a_handle_needs_memory_bios(server_config: dtlskit.DTLSConfiguration) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        on_socket = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), sock)
        with pytest.raises(ValueError, match="memory BIOs"):
            _accel.make_handle(on_socket)


def test_a_handle_keeps_its_connection(pair: MemoryPair) -> None:
    client, _ = _handles(pair)
    assert client.connection is pair.client.ssl_object  # type: ignore[attr-defined]


def test_an_empty_datagram_is_nothing(pair: MemoryPair) -> None:
    client, server = _handles(pair)
    assert _accel.open_record(server, b"") == _accel.WANT_READ
    record = _accel.seal_record(client, b"after")
    assert isinstance(record, bytes)
    assert _accel.open_record(server, record) == b"after"


def test_a_handle_used_after_shutdown_returns_codes_not_crashes(pair: MemoryPair) -> None:
    client, server = _handles(pair)
    assert pair.server_connection is not None
    pair.client.close()
    code = _accel.seal_record(client, b"too late")
    assert isinstance(code, int) and code not in (_accel.WANT_READ, _accel.ZERO_RETURN)
    with pytest.raises(SSL.Error, match="shutdown"):
        _accel.raise_error(pair.client.ssl_object, code)
    assert _accel.open_record(client, b"\x17\xfe\xfd" + b"\x00" * 20) in (
        _accel.WANT_READ,
        _accel.ZERO_RETURN,
    )
    # The peer shuts down too; its handle keeps answering with codes.
    server_conn = pair.server_connection.ssl_object
    server_conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
    code = _accel.seal_record(server, b"x")
    assert isinstance(code, int)
    with pytest.raises(SSL.Error):
        _accel.raise_error(server_conn, code)


def _mutations(record: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:  # random bytes, any length up to a jumbo datagram
        return rng.randbytes(rng.choice((1, 13, 14, 40, rng.randrange(1, 3000))))
    if kind == 1:  # flip bits anywhere
        data = bytearray(record)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:  # truncated
        return record[: rng.randrange(1, len(record))]
    if kind == 3:  # extended with junk
        return record + rng.randbytes(rng.randrange(1, 64))
    if kind == 4:  # header fields rewritten: type, version, epoch, sequence, length
        data = bytearray(record)
        field = rng.choice(((0, 1), (1, 3), (3, 5), (5, 11), (11, 13)))
        for i in range(*field):
            data[i] = rng.randrange(256)
        return bytes(data)
    if kind == 5:  # the length claims more or less than there is
        length = rng.choice((0, 1, 0xFFFF, (len(record) - 13 + rng.randrange(-20, 20)) % 0x10000))
        return record[:11] + length.to_bytes(2, "big") + record[13:]
    if kind == 6:  # several records back to back, one of them damaged
        bad = bytearray(record)
        bad[-1] ^= 0xFF
        return bytes(bad) + record[: rng.randrange(13, len(record))]
    return bytes([rng.choice((20, 21, 22, 23, 24, 25))]) + record[1:]  # every content type


def test_fuzzed_datagrams_give_only_documented_results(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    rng = random.Random(0x14DA7A)
    cases = 0
    errors = 0
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    client, server = _handles(pair)
    while cases < 10_000:  # bounded: every pass adds at least one case
        record = _accel.seal_record(client, rng.randbytes(rng.randrange(1, 200)))
        assert isinstance(record, bytes)
        datagram = _mutations(record, rng)
        result = _accel.open_record(server, datagram)
        cases += 1
        if isinstance(result, bytes):
            assert result  # plaintext is never empty
            continue
        assert isinstance(result, int)
        if result in (_accel.WANT_READ, _accel.ZERO_RETURN):
            continue
        # Anything else is an error OpenSSL explains on this thread's queue.
        errors += 1
        assert pair.server_connection is not None
        with pytest.raises(SSL.Error):
            _accel.raise_error(pair.server_connection.ssl_object, result)
        pair = MemoryPair(server_config, client_config)  # that session is dead; go on
        assert pair.handshake()
        client, server = _handles(pair)
    assert cases == 10_000
    # The last session still works after all that junk.
    good = _accel.seal_record(client, b"alive")
    assert isinstance(good, bytes)
    assert _accel.open_record(server, good) == b"alive"


def _recv_until(sock: socket.socket, count: int) -> tuple[list[tuple[bytes, object]], object]:
    got: list[tuple[bytes, object]] = []
    error: object = None
    for _ in range(1000):  # bounded; loopback queues a datagram before the send returns
        batch, error = _accel.recv_batch(sock, count - len(got))
        got.extend(batch)
        if len(got) >= count or error is not None:
            break
    return got, error


@pytest.mark.parametrize(
    ("family", "host", "sender_family", "sender_host"),
    [
        (socket.AF_INET, "127.0.0.1", socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET6, "::1", socket.AF_INET6, "::1"),
        (socket.AF_INET6, "::ffff:127.0.0.1", socket.AF_INET, "127.0.0.1"),  # v4-mapped
    ],
)
def test_addresses_are_exactly_what_recvfrom_gives(
    family: int, host: str, sender_family: int, sender_host: str
) -> None:
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    sender = socket.socket(sender_family, socket.SOCK_DGRAM)
    with receiver, sender:
        if family == socket.AF_INET6:
            receiver.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        receiver.bind((host, 0))
        receiver.setblocking(False)
        sender.bind((sender_host, 0))
        target = (
            ("127.0.0.1", receiver.getsockname()[1])
            if host.startswith("::ffff:")
            else (receiver.getsockname())
        )
        for data in (b"one", b"two", b"three"):
            sender.sendto(data, target)
        got, error = _recv_until(receiver, 2)
        assert error is None
        assert [data for data, _ in got] == [b"one", b"two"]
        receiver.setblocking(True)
        data, reference = receiver.recvfrom(100)
        assert data == b"three"
        for _, address in got:
            assert address == reference
            assert type(address) is tuple and type(address[0]) is str
            assert len(address) == (4 if family == socket.AF_INET6 else 2)
        if host.startswith("::ffff:"):
            assert reference[0] == host
        # And back: a batch sends to the very address objects it received.
        receiver.setblocking(False)
        sent, error = _accel.send_batch(receiver, [(b"back", address) for _, address in got])
        assert (sent, error) == (2, None)
        assert sender.recvfrom(100)[0] == b"back"


def test_the_largest_udp_datagrams_arrive_whole() -> None:
    for family, host, largest in (
        (socket.AF_INET, "127.0.0.1", 65507),
        (socket.AF_INET6, "::1", 65527),
    ):
        a = socket.socket(family, socket.SOCK_DGRAM)
        b = socket.socket(family, socket.SOCK_DGRAM)
        with a, b:
            a.bind((host, 0))
            b.bind((host, 0))
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            a.setblocking(False)
            b.setblocking(False)
            payloads = [bytes([i]) * largest for i in range(3)] + [b"small"]
            sent, error = _accel.send_batch(a, [(p, b.getsockname()) for p in payloads])
            assert (sent, error) == (4, None)
            got, error = _recv_until(b, 4)
            assert error is None
            assert [data for data, _ in got] == payloads


def test_an_oversized_datagram_is_reported_not_delivered_truncated() -> None:
    # Only a non-UDP datagram socket can carry more than 65,535 bytes: AF_UNIX.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        b.setblocking(False)
        exactly = b"e" * 65536
        a.send(b"before")
        a.send(b"x" * 65537)
        a.send(exactly)
        a.send(b"after")
        got, error = _accel.recv_batch(b, 10)
        assert [data for data, _ in got] == [b"before", exactly, b"after"]
        assert [address for _, address in got] == [None, None, None]  # what recvfrom says
        assert isinstance(error, OSError) and error.errno == errno.EMSGSIZE
        assert "truncated" in str(error)
        assert _accel.recv_batch(b, 10) == ([], None)


def test_batches_on_a_connected_socket_and_with_a_bounded_count() -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        a.setblocking(False)
        b.setblocking(False)
        items: list[tuple[bytes, object]] = [(b"%d" % i, None) for i in range(70)]
        assert _accel.send_batch(a, items) == (70, None)
        assert _accel.recv_batch(b, 0) == ([], None)
        got, error = _accel.recv_batch(b, 50)
        assert error is None and len(got) <= 50
        rest, error = _recv_until(b, 70 - len(got))
        assert error is None
        assert [data for data, _ in got + rest] == [data for data, _ in items]


def test_send_batch_takes_whatever_sendto_takes() -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.setblocking(False)
        b.setblocking(False)
        port = b.getsockname()[1]
        items = [
            (b"tuple", ("127.0.0.1", port)),
            (b"name", ("localhost", port)),  # a host name: resolved as sendto does
            (b"v6 form on a v4 socket", ("127.1", port)),  # only sendto parses this
            (b"tuple again", ("127.0.0.1", port)),
        ]
        sent, error = _accel.send_batch(a, items)
        if error is not None:  # "localhost" may not resolve to 127.0.0.1 everywhere
            assert isinstance(error, OSError)
        got, _ = _recv_until(b, sent)
        assert [data for data, _ in got] == [data for data, _ in items[:sent]]
        with pytest.raises(TypeError):
            _accel.send_batch(a, [(b"bad", ("127.0.0.1", "port"))])


def test_send_batch_reports_a_refused_peer_with_the_count() -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a:
        a.bind(("127.0.0.1", 0))
        with gone:
            gone.bind(("127.0.0.1", 0))
            address = gone.getsockname()
        a.connect(address)
        a.setblocking(False)
        first, error = _accel.send_batch(a, [(b"x", None)])
        assert (first, error) == (1, None)
        # The ICMP port-unreachable for the first datagram is reported on a later call.
        for _ in range(1000):  # bounded
            sent, error = _accel.send_batch(a, [(b"y", None), (b"z", None)])
            if error is not None:
                break
        assert isinstance(error, ConnectionRefusedError)
        assert sent in (0, 1)


def test_a_socket_with_a_timeout_keeps_socket_semantics() -> None:
    # Not the non-blocking socket the contract asks for: both paths then behave as
    # recvfrom/sendto on that socket do (the native one hands the call to the Python one).
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.settimeout(5.0)
        b.settimeout(0.05)
        assert _accel.send_batch(a, [(b"only one", b.getsockname())]) == (1, None)
        got, error = _accel.recv_batch(b, 2)
        assert got == [(b"only one", a.getsockname())]
        assert isinstance(error, TimeoutError)


def test_threads_each_with_their_own_sessions_do_not_mix_records(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    pairs = [MemoryPair(server_config, client_config) for _ in range(3)]
    for pair in pairs:
        assert pair.handshake()
    failures: list[str] = []

    def work(index: int, pair: MemoryPair) -> None:
        client, server = _handles(pair)
        for i in range(2000):
            message = b"%d:%d:" % (index, i) + bytes([index]) * (i % 300)
            record = _accel.seal_record(client, message)
            assert isinstance(record, bytes)
            if _accel.open_record(server, record) != message:
                failures.append(f"thread {index} message {i}")
                return

    threads = [threading.Thread(target=work, args=(i, p)) for i, p in enumerate(pairs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_a_thread_that_only_seals_and_one_that_also_opens_give_the_same_records(
    pair: MemoryPair,
) -> None:
    # The pure-Python path seals into a per-thread buffer only on a thread that opened a record
    # before (an I/O thread) and into an exact-size one elsewhere (a blocking handler's send):
    # both must hand back every byte OpenSSL wrote, for every size up to the cleartext MTU.
    client, server = _handles(pair)
    sizes = [1, 2, 63, 64, 65, 255, 256, 1000, pair.client.cleartext_mtu]
    sealed: list[bytes | int] = []

    def seal_all() -> None:
        sealed.extend(_accel.seal_record(client, bytes([n % 251]) * n) for n in sizes)

    thread = threading.Thread(target=seal_all)  # a fresh thread: has opened nothing
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert _accel.open_record(client, _accel.seal_record(server, b"x")) == b"x"  # opens: buffer
    seal_all()  # now on a thread that has opened a record
    assert len(sealed) == 2 * len(sizes)
    for record, n in zip(sealed, sizes + sizes, strict=True):
        assert isinstance(record, bytes)
        assert len(record) == 13 + int.from_bytes(record[11:13], "big")
        assert _accel.open_record(server, record) == bytes([n % 251]) * n


def test_each_datagram_keeps_its_own_sender_around_a_dropped_one() -> None:
    # AF_UNIX (Linux abstract names) is the one datagram socket that can carry an oversized
    # datagram; two senders interleave around it.
    tag = f"dtlskit-accel-{os.getpid()}-{random.randrange(1 << 30)}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with receiver, first, second:
        receiver.bind(f"\0{tag}-r")
        first.bind(f"\0{tag}-a")
        second.bind(f"\0{tag}-b")
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        second.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        receiver.setblocking(False)
        target = receiver.getsockname()
        first.sendto(b"from a", target)
        second.sendto(b"b" * 70000, target)
        second.sendto(b"from b", target)
        first.sendto(b"from a again", target)
        got, error = _accel.recv_batch(receiver, 10)
        assert isinstance(error, OSError) and error.errno == errno.EMSGSIZE
        assert got == [
            (b"from a", first.getsockname()),
            (b"from b", second.getsockname()),
            (b"from a again", first.getsockname()),
        ]
        assert isinstance(first.getsockname(), bytes)  # what recvfrom gives for these names


def _receiver() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """A non-blocking receiver, a sender, and a non-blocking wake-up socketpair."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    return rx, tx, wake_r, wake_w


def _in_thread(call: object) -> dict[str, object]:
    """Run ``call`` on a thread; the returned dict gets its result (bounded join by caller)."""
    out: dict[str, object] = {}

    def run() -> None:
        out["result"] = call()  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    out["thread"] = thread
    thread.start()
    return out


def test_a_waiting_batch_returns_the_datagram_that_ends_the_wait() -> None:
    rx, tx, wake_r, wake_w = _receiver()
    with rx, tx, wake_r, wake_w:
        out = _in_thread(lambda: _accel.recv_batch(rx, 8, None, wake_r.fileno()))
        tx.sendto(b"first", rx.getsockname())
        thread = out["thread"]
        assert isinstance(thread, threading.Thread)
        thread.join(10)
        assert not thread.is_alive()
        batch, error = out["result"]  # type: ignore[misc]
        assert error is None
        # the wait ended on the datagram, which was read in the same call
        assert [(data, tuple(address)) for data, address in batch] == [(b"first", tx.getsockname())]


def test_a_wake_up_ends_the_wait_empty_and_is_consumed() -> None:
    rx, tx, wake_r, wake_w = _receiver()
    with rx, tx, wake_r, wake_w:
        out = _in_thread(lambda: _accel.recv_batch(rx, 8, None, wake_r.fileno()))
        wake_w.send(b"\0" * 10000)  # many wake-ups pending: all of them consumed at once
        thread = out["thread"]
        assert isinstance(thread, threading.Thread)
        thread.join(10)
        assert not thread.is_alive()
        assert out["result"] == ([], None)
        with pytest.raises(BlockingIOError):
            wake_r.recv(1)
        # the datagram that comes next is read as usual
        tx.sendto(b"after", rx.getsockname())
        batch, error = _accel.recv_batch(rx, 8, None, wake_r.fileno())
        assert error is None and [data for data, _ in batch] == [b"after"]


def test_a_waiting_socket_is_read_without_consuming_a_pending_wake_up() -> None:
    rx, tx, wake_r, wake_w = _receiver()
    with rx, tx, wake_r, wake_w:
        tx.sendto(b"queued", rx.getsockname())
        wake_w.send(b"\0")
        # Data waits: no poll, so the wake-up stays for the next call that would wait.
        batch, error = _accel.recv_batch(rx, 8, None, wake_r.fileno())
        assert error is None and [data for data, _ in batch] == [b"queued"]
        assert _accel.recv_batch(rx, 8, None, wake_r.fileno()) == ([], None)
        with pytest.raises(BlockingIOError):
            wake_r.recv(1)


@pytest.mark.parametrize("timeout", [0, 0.0, -1.0, 0.001, 0.05])
def test_a_wait_with_a_timeout_and_nothing_to_read_returns_empty(timeout: float) -> None:
    rx, tx, wake_r, wake_w = _receiver()
    with rx, tx, wake_r, wake_w:
        assert _accel.recv_batch(rx, 8, timeout, wake_r.fileno()) == ([], None)
        assert _accel.recv_batch(rx, 8, timeout) == ([], None)
        assert _accel.recv_batch(rx, 8, timeout, -1) == ([], None)


def test_a_wait_ends_with_the_error_the_socket_reports() -> None:
    # A connected socket whose peer port is closed: the ICMP error ends the wait and is
    # returned as the batch's error, nothing read.
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        sock.send(b"anyone?")
        batch, error = _accel.recv_batch(sock, 8, 10.0, -1)
        assert batch == []
        assert isinstance(error, ConnectionRefusedError)


# -- ProtocolCall: a callback-style session's message call -----------------------------------


def test_a_protocol_call_gives_each_message_and_returns_none() -> None:
    got: list[bytes] = []
    failures: list[BaseException] = []
    call = _accel.ProtocolCall(got.append, failures.append)
    for message in (b"a", b"bc", bytes(300)):
        assert call(message) is None
    assert got == [b"a", b"bc", bytes(300)] and failures == []


def test_a_protocol_call_hands_an_exception_to_failed_and_raises_nothing() -> None:
    failures: list[BaseException] = []

    def received(data: bytes) -> None:
        raise ValueError(data)

    call = _accel.ProtocolCall(received, failures.append)
    assert call(b"boom") is None
    (error,) = failures
    assert type(error) is ValueError and error.args == (b"boom",)
    assert error.__traceback__ is not None  # what the log line prints


def test_a_protocol_call_lets_base_exceptions_and_failed_s_own_error_through() -> None:
    failures: list[BaseException] = []

    def interrupted(data: bytes) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _accel.ProtocolCall(interrupted, failures.append)(b"x")
    assert failures == []

    def broken(exc: BaseException) -> None:
        raise RuntimeError("the failure handler failed")

    with pytest.raises(RuntimeError, match="failure handler"):
        _accel.ProtocolCall(lambda data: 1 / 0, broken)(b"x")


def test_a_protocol_call_refuses_what_it_cannot_call() -> None:
    with pytest.raises(TypeError):
        _accel.ProtocolCall(None, print)
    with pytest.raises(TypeError):
        _accel.ProtocolCall(print, 3)
    call = _accel.ProtocolCall(print, print)
    with pytest.raises(TypeError):
        call()
    with pytest.raises(TypeError):
        call(b"a", b"b")


def test_many_peers_each_get_their_own_address_both_ways() -> None:
    # More peers than the native address caches have slots (512): every datagram still carries
    # its own sender's address, and every reply reaches the peer it was sent to.
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(600)]
    try:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        for i, peer in enumerate(peers):
            peer.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
            peer.setblocking(False)
        by_address = {peer.getsockname(): i for i, peer in enumerate(peers)}
        for round_ in range(2):
            order = list(range(len(peers)))
            random.Random(round_).shuffle(order)
            got: list[tuple[bytes, object]] = []
            for start in range(0, len(order), 50):  # 50 at a time: within the receive buffer
                for i in order[start : start + 50]:
                    peers[i].sendto(b"%d" % i, server.getsockname())
                for _ in range(10_000):  # bounded; each read waits up to 5 s for a datagram
                    batch, error = _accel.recv_batch(server, 64, 5.0)
                    assert error is None and batch, "a datagram never came"
                    got.extend(batch)
                    if len(got) == min(start + 50, len(order)):
                        break
            assert len(got) == len(peers)
            for data, address in got:
                assert by_address[address] == int(data)  # (KeyError: an address never used)
            replies = [(b"to %s" % data, address) for data, address in got]
            for start in range(0, len(replies), 64):
                assert _accel.send_batch(server, replies[start : start + 64]) == (
                    len(replies[start : start + 64]),
                    None,
                )
            for i, peer in enumerate(peers):
                peer.settimeout(5.0)  # a bound on a reply that never comes, not a timing check
                assert peer.recv(100) == b"to %d" % i
                peer.setblocking(False)
    finally:
        server.close()
        for peer in peers:
            peer.close()
