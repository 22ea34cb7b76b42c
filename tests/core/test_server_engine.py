"""The server demultiplexer: stateless cookies, limits, junk (RELIABILITY scenarios 7, 9)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dtlskit
from dtlskit.core import DTLSConnection, ServerEngine, State
from dtlskit.core import events as ev
from dtlskit.core.records import parse_client_hello_untrusted
from dtlskit.testing import MemoryPair

ADDRESS = ("127.0.0.1", 40000)


def hello_exchange(server_config, client_config, now=1000.0):  # type: ignore[no-untyped-def]
    """A server, and the client's second ClientHello carrying a valid cookie."""
    server = ServerEngine(server_config)
    client = DTLSConnection(client_config, server=False)
    client.connect(now)
    (first,) = client.datagrams_to_send()
    server.receive_datagram(first, ADDRESS, now)
    ((hello_verify, to),) = server.datagrams_to_send()
    assert to == ADDRESS
    client.receive_datagram(hello_verify, now)
    (second,) = client.datagrams_to_send()
    return server, first, hello_verify, second


def assert_no_state(server: ServerEngine) -> None:
    stats = server.statistics()
    assert stats.associations_created == 0
    assert stats.sessions == 0
    assert server.connections == {}


def test_first_client_hello_gets_a_small_stateless_answer(server_config, client_config):
    server, first, hello_verify, _ = hello_exchange(server_config, client_config)
    assert_no_state(server)
    assert len(hello_verify) < len(first)
    stats = server.statistics()
    assert stats.bytes_sent_unvalidated <= stats.bytes_received_unvalidated
    # The answer is never retransmitted: no timer exists.
    assert server.get_timer() is None


def test_valid_cookie_allocates_exactly_one_association(server_config, client_config):
    server, _, _, second = hello_exchange(server_config, client_config)
    server.receive_datagram(second, ADDRESS, 1000.0)
    assert server.statistics().associations_created == 1
    assert server.connection(ADDRESS) is not None
    assert server.datagrams_to_send()  # flight 4


def test_cookie_tampered_at_every_byte_is_rejected_without_state(server_config, client_config):
    server, _, _, second = hello_exchange(server_config, client_config)
    hello = parse_client_hello_untrusted(second)
    body_start = 13 + 12
    cookie_offset = body_start + 2 + 32 + 1 + second[body_start + 34] + 1
    assert second[cookie_offset : cookie_offset + len(hello.cookie)] == hello.cookie
    # The cookie's length and every byte of it. (The cookie is bound to the address and time,
    # not to ClientHello fields: see dtlskit.core.server; replays are refused by client random.)
    offsets = range(cookie_offset - 1, cookie_offset + len(hello.cookie))
    for offset in offsets:
        tampered = bytearray(second)
        tampered[offset] ^= 0x01
        server.receive_datagram(bytes(tampered), ADDRESS, 1000.0)
        server.datagrams_to_send()
    assert_no_state(server)
    drops = server.statistics().drops
    assert drops.get("bad_cookie", 0) + drops.get("malformed_client_hello", 0) == len(offsets)
    assert drops["bad_cookie"] >= len(hello.cookie)


def test_expired_cookie_is_rejected(server_config, client_config):
    server, _, _, second = hello_exchange(server_config, client_config)
    server.receive_datagram(second, ADDRESS, 1000.0 + 2 * 31.0)
    assert_no_state(server)
    assert server.statistics().drops == {"bad_cookie": 1}


def test_cookie_still_valid_within_its_lifetime(server_config, client_config):
    server, _, _, second = hello_exchange(server_config, client_config)
    server.receive_datagram(second, ADDRESS, 1000.0 + 29.0)
    assert server.statistics().associations_created == 1


@pytest.mark.parametrize(
    "other", [("127.0.0.2", 40000), ("127.0.0.1", 40001), ("::1", 40000, 0, 0)]
)
def test_cookie_for_another_address_is_rejected(server_config, client_config, other):
    server, _, _, second = hello_exchange(server_config, client_config)
    server.receive_datagram(second, other, 1000.0)
    assert_no_state(server)


def test_rotated_secret_invalidates_cookies(server_config, client_config):
    server, _, _, second = hello_exchange(server_config, client_config)
    server.cookies.rotate()
    server.receive_datagram(second, ADDRESS, 1000.0)
    assert_no_state(server)


def test_shared_cookie_secret_is_accepted_by_another_server(server_config, client_config):
    config = server_config.replace(cookie_secret=b"k" * 32)
    first_server, _, _, second = hello_exchange(config, client_config)
    other = ServerEngine(config)
    other.receive_datagram(second, ADDRESS, 1000.0)
    assert other.statistics().associations_created == 1
    assert first_server.statistics().associations_created == 0


def test_smallest_client_hello_still_gets_no_more_than_it_sent(server_config):
    """Bytes sent toward an unvalidated address never exceed bytes received from it: even the
    smallest well-formed ClientHello (empty session id, one suite, no extensions) is larger than
    our HelloVerifyRequest."""
    server = ServerEngine(server_config)
    body = b"\xfe\xfd" + b"r" * 32 + b"\x00" + b"\x00" + b"\x00\x02\xc0\x2b" + b"\x01\x00"
    message = b"\x01" + len(body).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00"
    message += len(body).to_bytes(3, "big") + body
    record = b"\x16\xfe\xfd\x00\x00" + b"\x00" * 6 + len(message).to_bytes(2, "big") + message
    server.receive_datagram(record, ("127.0.0.3", 1), 1000.0)
    ((reply, _),) = server.datagrams_to_send()
    assert len(reply) <= len(record)
    stats = server.statistics()
    assert stats.bytes_sent_unvalidated == len(reply)
    assert stats.bytes_received_unvalidated == len(record)


def test_optional_hello_verify_cap_is_global_not_per_source(server_config, client_config):
    """``Limits.hello_verify_per_second`` caps cookie exchanges of all sources together (so a
    spoofer cannot single out one address: everyone is delayed alike)."""
    config = server_config.replace(limits=dtlskit.Limits(hello_verify_per_second=5.0))
    server, first, _, _ = hello_exchange(config, client_config)
    for _ in range(100):
        server.receive_datagram(first, ADDRESS, 1000.0)
    sent = len(server.datagrams_to_send())
    assert sent == 9  # burst of 10 minus the one already used
    assert server.statistics().drops["hello_verify_rate_limited"] == 91
    server.receive_datagram(first, ("127.0.0.2", 5), 1000.0)
    assert server.datagrams_to_send() == []
    server.receive_datagram(first, ("127.0.0.2", 5), 1000.2)  # one interval later
    assert len(server.datagrams_to_send()) == 1


def test_session_limits_are_enforced_and_counted(server_config, client_config):
    config = server_config.replace(
        limits=dtlskit.Limits(max_sessions=3, max_sessions_per_address=2, max_half_open=10)
    )
    server = ServerEngine(config)
    results = []
    for index in range(5):
        ip = "127.0.0.1" if index < 3 else f"127.0.0.{index}"
        p = MemoryPair(config, client_config, server=server, client_address=(ip, 50000 + index))
        results.append(p.handshake())
    assert results == [True, True, False, True, False]
    drops = server.statistics().drops
    # A refused client retries its ClientHello; every refusal is counted.
    assert drops["max_sessions_per_address"] >= 1
    assert drops["max_sessions"] >= 1
    assert server.statistics().sessions == 3


def test_half_open_limit(server_config, client_config):
    config = server_config.replace(limits=dtlskit.Limits(max_half_open=2))
    server = ServerEngine(config)
    for index in range(3):
        _, _, _, second = hello_exchange(config, client_config)
        address = ("127.0.0.1", 41000 + index)
        # Re-issue the cookie for this address with this server's secret.
        client = DTLSConnection(client_config, server=False)
        client.connect(1000.0)
        (first,) = client.datagrams_to_send()
        server.receive_datagram(first, address, 1000.0)
        ((hello_verify, _),) = server.datagrams_to_send()
        client.receive_datagram(hello_verify, 1000.0)
        (second,) = client.datagrams_to_send()
        server.receive_datagram(second, address, 1000.0)
        server.datagrams_to_send()
    stats = server.statistics()
    assert stats.half_open == 2
    # The pool was full of handshakes still at the server's first flight: the oldest made room.
    assert stats.drops["half_open_evicted"] == 1
    assert stats.associations_created == 3
    assert server.connection(("127.0.0.1", 41000)) is None


JUNK_SERVER: dict[str, ServerEngine] = {}


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=1500),
    prefix=st.sampled_from(
        [b"", b"\x16\xfe\xfd\x00\x00", b"\x16\xfe\xff\x00\x00\x00\x00\x00\x00\x00\x00"]
    ),
)
def test_random_bytes_are_dropped_and_counted(server_config, data, prefix):
    server = JUNK_SERVER.setdefault("server", ServerEngine(server_config))
    before = server.statistics()
    server.receive_datagram(prefix + data, ("127.0.0.5", 7), 1000.0)
    server.datagrams_to_send()
    after = server.statistics()
    assert after.associations_created == 0
    accounted = sum(after.drops.values()) - sum(before.drops.values())
    answered = after.hello_verify_requests_sent - before.hello_verify_requests_sent
    assert accounted + answered == 1


def test_junk_to_an_established_session_does_not_disturb_it(server_config, client_config):
    """RELIABILITY scenario 9: random bytes, truncated records, wrong versions, huge lengths."""
    p = MemoryPair(server_config, client_config)
    assert p.handshake()
    import random

    rng = random.Random(3)
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))) for _ in range(200)]
    junk += [b"\x17\xfe\xfd\x00\x01" + b"\x00" * 6 + b"\xff\xff" + b"x" * 10]  # huge length
    junk += [b"\x17\x03\x03\x00\x01" + b"\x00" * 6 + b"\x00\x05" + b"hello"]  # TLS, not DTLS
    junk += [b"\x17\xfe\xfd\x00\x01\x00"]  # truncated header
    for datagram in junk:
        p.server.receive_datagram(datagram, p.client_address, p.clock.now)
    p.pump()
    assert p.server_connection is not None
    assert p.server_connection.state is State.ESTABLISHED
    p.client.send(b"after the junk")
    p.pump()
    assert p.run(lambda: p.server_messages() == [b"after the junk"])
    assert not any(isinstance(e, ev.ConnectionTerminated) for e in p.server_events)


def test_duplicate_client_hello_is_ignored(server_config, client_config):
    server, _, _, second = hello_exchange(server_config, client_config)
    server.receive_datagram(second, ADDRESS, 1000.0)
    conn = server.connection(ADDRESS)
    server.receive_datagram(second, ADDRESS, 1000.0)
    assert server.connection(ADDRESS) is conn
    assert server.statistics().associations_created == 1
    assert server.statistics().drops["duplicate_client_hello"] == 1


def test_close_all_sends_close_notify_to_every_peer(server_config, client_config):
    server = ServerEngine(server_config)
    pairs = [
        MemoryPair(server_config, client_config, server=server, client_address=("127.0.0.1", p))
        for p in (50001, 50002, 50003)
    ]
    for p in pairs:
        assert p.handshake()
    server.close_all()
    out = server.datagrams_to_send()
    assert sorted(address for _, address in out) == sorted(p.client_address for p in pairs)
    for p in pairs:
        for data, address in out:
            if address == p.client_address:
                p.client.receive_datagram(data, p.clock.now)
        assert p.client.state is State.CLOSED
    while server.next_event() is not None:
        pass
    assert server.statistics().sessions == 0


def test_timer_heap_stays_small_while_a_busy_session_moves_its_idle_deadline(
    server_config, client_config
):
    """Found in review: every message pushed a heap entry, kept until it reached the top."""
    server = ServerEngine(server_config)
    idle = MemoryPair(server_config, client_config, server=server, client_address=("127.0.0.1", 1))
    assert idle.handshake()
    busy = MemoryPair(
        server_config,
        client_config,
        server=server,
        client_address=("127.0.0.1", 2),
        clock=idle.clock,
    )
    assert busy.handshake()
    for _ in range(2000):
        idle.clock.advance(0.01)
        busy.client.send(b"x")
        busy.pump()
        while busy.deliver_one():
            pass
    assert len(busy.server_messages()) == 2000
    assert len(server._timers) <= 2 * len(server.connections) + 64
    # The timers still work: both sessions expire when idle.
    assert idle.run(lambda: server.statistics().sessions == 0)


def test_hello_verify_rate_below_half_a_second_still_answers(server_config, client_config):
    """Found in review: a rate under 0.5/s made a negative burst allowance and refused all."""
    config = server_config.replace(limits=dtlskit.Limits(hello_verify_per_second=0.2))
    server, _, _, _ = hello_exchange(config, client_config)
    assert server.statistics().hello_verify_requests_sent == 1


def test_ended_associations_are_freed_while_the_server_runs(server_config, client_config):
    """Found by the soak scenario: the timer heap held every ended association (and its OpenSSL
    object) until stale entries outnumbered live ones, so RSS followed the peak of sessions."""
    import gc

    server = ServerEngine(server_config)
    # A long-lived session whose idle deadline stays at the top of the heap.
    keeper = MemoryPair(
        server_config, client_config, server=server, client_address=("127.0.0.1", 1)
    )
    assert keeper.handshake()
    for number in range(20):
        keeper.clock.advance(1.0)
        pair = MemoryPair(
            server_config,
            client_config,
            server=server,
            client_address=("127.0.0.1", 1000 + number),
            clock=keeper.clock,
        )
        assert pair.handshake()
        pair.client.close()
        pair.pump()
        while pair.deliver_one():
            pass
        assert server.statistics().sessions == 1
        del pair
    gc.collect()
    ours = {("127.0.0.1", 1)} | {("127.0.0.1", 1000 + number) for number in range(20)}
    alive = [o for o in gc.get_objects() if isinstance(o, DTLSConnection)]
    held = [conn.peer_address for conn in alive if conn.is_server and conn.peer_address in ours]
    assert held == [("127.0.0.1", 1)]


@pytest.mark.parametrize(
    ("address_key", "expected"),
    [("address", [True, False, False, False]), ("address_and_port", [True, True, True, True])],
)
def test_limits_behind_a_proxy_count_per_address_and_port(
    server_config, client_config, address_key, expected
):
    """Behind a UDP proxy every client arrives from the proxy's address, one port each."""
    limits = dtlskit.Limits(
        max_sessions_per_address=1, max_half_open_per_address=1, address_key=address_key
    )
    config = server_config.replace(limits=limits)
    server = ServerEngine(config)
    results = []
    for index in range(4):
        p = MemoryPair(
            config, client_config, server=server, client_address=("10.0.0.1", 4000 + index)
        )
        results.append(p.handshake())
    assert results == expected
    with pytest.raises(dtlskit.ConfigurationError, match="address_key"):
        dtlskit.Limits(address_key="port")


def _junk_then_a_message(pair: MemoryPair) -> list[bytes]:
    import random

    rng = random.Random(5)
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(100)]
    junk += [b"\x17\xfe\xfd\x00\x01" + b"\x00" * 6 + b"\x00\x05" + b"hello"]  # bad record
    junk += [b"\x15\xfe\xfd\x00\x01" + b"\x00" * 8, b""]  # a short alert, an empty datagram
    pair.client.send(b"the message")
    return junk + list(pair.client.datagrams_to_send())


def test_a_batch_is_fed_exactly_as_its_datagrams_one_by_one(server_config, client_config):
    one_by_one = MemoryPair(server_config, client_config)
    batched = MemoryPair(server_config, client_config)
    for pair in (one_by_one, batched):
        assert pair.handshake()
    for datagram in _junk_then_a_message(one_by_one):
        one_by_one.server.receive_datagram(datagram, one_by_one.client_address, 5.0)
    batch = [(d, batched.client_address) for d in _junk_then_a_message(batched)]
    batched.server.receive_batch(batch, 5.0)
    for pair in (one_by_one, batched):
        pair.pump()
        assert pair.run(lambda p=pair: p.server_messages() == [b"the message"])
    assert batched.server.statistics() == one_by_one.server.statistics()
    assert batched.server.statistics().drops  # the junk was counted, the same way


def test_a_failing_datagram_in_a_batch_goes_to_failed_and_the_rest_are_fed(
    server_config, client_config
):
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    server = pair.server
    real = server._receive_other
    bad = ("127.0.0.1", 9)

    def receive_other(data, address, conn, now):  # type: ignore[no-untyped-def]
        if address == bad:
            raise RuntimeError("injected engine bug")
        real(data, address, conn, now)

    server._receive_other = receive_other  # type: ignore[method-assign]
    pair.client.send(b"after the bug")
    (record,) = pair.client.datagrams_to_send()
    failures: list[tuple[object, Exception]] = []
    hello = b"\x16\xfe\xfd" + bytes(20)
    server.receive_batch(
        [(hello, bad), (record, pair.client_address)], 5.0, lambda a, e: failures.append((a, e))
    )
    assert [(a, str(e)) for a, e in failures] == [(bad, "injected engine bug")]
    pair.pump()
    assert pair.run(lambda: pair.server_messages() == [b"after the bug"])
    with pytest.raises(RuntimeError, match="injected"):
        server.receive_batch([(hello, bad)], 6.0)  # without failed: it propagates


def _messages_and_junk(pair: MemoryPair, count: int) -> list[bytes]:
    datagrams: list[bytes] = []
    for i in range(count):
        pair.client.send(b"message %d" % i)
        datagrams.extend(pair.client.datagrams_to_send())
    record = datagrams[1]
    datagrams.insert(2, record)  # a replay: OpenSSL drops it, counted
    datagrams.insert(4, record[:-1] + bytes([record[-1] ^ 1]))  # a bad MAC, counted
    datagrams.insert(6, b"\x17\xfe\xfd\x00\x01" + b"\x00" * 6 + b"\x00\x05" + b"hello")
    datagrams.insert(8, b"\x16\xfe\xfd" + bytes(20))  # not application data: the general path
    return datagrams


@pytest.mark.parametrize("consumer", ["callback", "inbox"])
def test_a_batch_of_established_records_is_taken_exactly_as_one_by_one(
    server_config, client_config, consumer
):
    # With the accelerator, receive_batch takes these in C (receive_established); without it,
    # in Python. Either way: the same messages, in order, and the same counters as
    # receive_datagram one datagram at a time.
    results = []
    for batched in (False, True):
        pair = MemoryPair(server_config, client_config)
        assert pair.handshake()
        conn = pair.server_connection
        assert conn is not None
        got: list[bytes] = []
        if consumer == "callback":
            conn.on_message = got.append
        else:
            conn.open_inbox()
        datagrams = _messages_and_junk(pair, 20)
        conn_before, server_before = conn.statistics(), pair.server.statistics()
        if batched:
            pair.server.receive_batch([(d, pair.client_address) for d in datagrams], 7.0)
        else:
            for datagram in datagrams:
                pair.server.receive_datagram(datagram, pair.client_address, 7.0)
        if consumer == "inbox":
            assert conn.inbox is not None
            while (message := conn.inbox.take()) is not None:
                got.append(message)
        conn_after, server_after = conn.statistics(), pair.server.statistics()
        results.append(
            (
                got,
                [
                    getattr(conn_after, name) - getattr(conn_before, name)
                    for name in ("datagrams_received", "bytes_received", "messages_received")
                ],
                conn_after.drops,
                server_after.datagrams_received - server_before.datagrams_received,
                server_after.bytes_received - server_before.bytes_received,
                server_after.drops,
                conn._idle_deadline,
                conn._read_high,
            )
        )
    assert results[0][0] == [b"message %d" % i for i in range(20)]
    assert results[0] == results[1]
    assert results[1][2]  # the replay, the bad MAC and the bad record were counted


def test_a_message_callback_that_raises_in_a_batch_goes_to_failed(server_config, client_config):
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    conn = pair.server_connection
    assert conn is not None
    got: list[bytes] = []

    def on_message(data: bytes) -> None:
        if data == b"bad":
            raise ValueError("handler bug")
        got.append(data)

    conn.on_message = on_message
    datagrams = []
    for message in (b"one", b"bad", b"two"):
        pair.client.send(message)
        datagrams.extend(pair.client.datagrams_to_send())
    failures: list[tuple[object, Exception]] = []
    before = pair.server.statistics().datagrams_received
    pair.server.receive_batch(
        [(d, pair.client_address) for d in datagrams], 8.0, lambda a, e: failures.append((a, e))
    )
    assert got == [b"one", b"two"]
    assert [(a, str(e)) for a, e in failures] == [(pair.client_address, "handler bug")]
    assert pair.server.statistics().datagrams_received == before + 3
    assert conn.statistics().messages_received >= 3
    pair.client.send(b"bad")
    with pytest.raises(ValueError, match="handler bug"):  # without failed: it propagates
        pair.server.receive_batch(
            [(d, pair.client_address) for d in pair.client.datagrams_to_send()], 9.0
        )


def _batch_scenario(server_config, client_config, kind, run, monkeypatch):  # type: ignore[no-untyped-def]
    """Six established records fed by receive_batch with ``accel.receive_established`` set to
    ``run``; the callback, on m2, reads statistics, raises, interrupts or empties the batch
    (``kind``). Returns what the callback and ``failed`` saw and the server's counters."""
    from dtlskit._frontend import accel

    monkeypatch.setattr(accel, "receive_established", run)
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    conn, server = pair.server_connection, pair.server
    assert conn is not None
    datagrams = []
    for i in range(6):
        pair.client.send(b"m%d" % i)
        datagrams.extend(pair.client.datagrams_to_send())
    items = [(d, pair.client_address) for d in datagrams]
    seen: list[object] = []
    before = server.statistics()

    def on_message(data: bytes) -> None:
        seen.append(data)
        if data == b"m2":
            if kind == "read_stats":
                st = server.statistics()
                seen.append(
                    (
                        st.datagrams_received - before.datagrams_received,
                        st.bytes_received - before.bytes_received,
                    )
                )
            elif kind == "kbint":
                raise KeyboardInterrupt
            elif kind == "raise":
                raise ValueError("m2")
            else:
                items.clear()

    conn.on_message = on_message
    try:
        server.receive_batch(items, 7.0, lambda a, e: seen.append((a, repr(e))))
    except KeyboardInterrupt:
        seen.append("interrupted")
    st = server.statistics()
    return (
        seen,
        st.datagrams_received - before.datagrams_received,
        st.bytes_received - before.bytes_received,
    )


@pytest.mark.parametrize("kind", ["read_stats", "kbint", "clear_batch", "raise"])
def test_receive_batch_is_the_same_with_and_without_the_c_run(
    server_config, client_config, kind, monkeypatch
):
    # (review A1-A3) The C run of receive_batch (accel.receive_established, when built) and
    # Python's loop: the same messages, the same server counters seen from inside a callback
    # and after it, a BaseException keeps what was counted, a batch that shrinks is fine.
    from dtlskit._frontend import accel

    real = accel.receive_established
    with_run = _batch_scenario(server_config, client_config, kind, real, monkeypatch)
    assert with_run == _batch_scenario(server_config, client_config, kind, None, monkeypatch)


@pytest.mark.parametrize("kind", ["read_stats", "raise", "clear_batch"])
def test_receive_batch_hands_what_an_accelerator_run_leaves_to_python(
    server_config, client_config, kind, monkeypatch
):
    # receive_batch's contract with an accelerator run (accel.receive_established): the run
    # returns (next index, error, address); Python takes the datagram at that index and hands
    # the rest back. Checked on every build, with a run that takes nothing (everything falls
    # to Python one datagram at a time) and one that reports each datagram's error as the C
    # run does: the same messages and counters as Python's own loop.

    def takes_nothing(connections, batch, index, now, stats):  # type: ignore[no-untyped-def]
        return index, None, None

    def one_at_a_time(connections, batch, index, now, stats):  # type: ignore[no-untyped-def]
        data, address = batch[index]
        conn = connections.get(address)
        if conn is None or data[0] != 23:
            return index, None, None
        stats.datagrams_received += 1
        stats.bytes_received += len(data)
        try:
            conn.receive_record(data, now)
        except Exception as exc:
            return index + 1, exc, address
        return index + 1, None, None

    expected = _batch_scenario(server_config, client_config, kind, None, monkeypatch)
    assert b"m1" in expected[0]
    for run in (takes_nothing, one_at_a_time):
        assert _batch_scenario(server_config, client_config, kind, run, monkeypatch) == expected
