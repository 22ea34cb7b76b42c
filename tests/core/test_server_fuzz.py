"""Adversarial review of issue 8: a seeded mutator against ``ServerEngine.receive_datagram``.

Seeds are real datagrams (cookie-less and cookie-carrying ClientHellos, whole and in 256-byte
fragments, a client's second flight, records of an established session); a mutation rewrites
the fields the new code parses (record length and epoch, handshake message_length, message_seq,
fragment_offset, fragment_length, cookie, random), flips bytes, truncates, duplicates and splices.
Datagrams come from addresses with no association, with a half-open one and with an established
one, and some carry a cookie that is valid for their address, so the post-cookie fragment path
and session replacement are exercised too.

Checked for every case: nothing raises out of the engine; every datagram that reached no
association was answered (HelloVerifyRequest), accepted (association) or counted as a drop;
what the engine keeps per peer stays within its limits. ``DTLSKIT_FUZZ_CASES`` sets the number
of cases (the review ran 50,000 per seed); the suite runs a few thousand.
"""

from __future__ import annotations

import os
import random
import struct
from typing import Any

import dtlskit
from dtlskit.core import DTLSConnection, ServerEngine, State
from dtlskit.core.records import HEADER_LENGTH, parse_client_hello_untrusted

CASES = int(os.environ.get("DTLSKIT_FUZZ_CASES", "3000"))
NOW = 1000.0


def exchange(server: ServerEngine, client: DTLSConnection, address: Any, now: float) -> list[bytes]:
    """Run a client against the engine until quiet; return every datagram the client sent."""
    sent: list[bytes] = []
    for _ in range(50):
        moved = False
        for data in client.datagrams_to_send():
            sent.append(data)
            server.receive_datagram(data, address, now)
            moved = True
        for data, to in server.datagrams_to_send():
            if to == address:
                client.receive_datagram(data, now)
                moved = True
        if not moved:
            break
    return sent


def with_cookie(hello: bytes, cookie: bytes) -> bytes:
    """A whole ClientHello (one record, one fragment) with its cookie replaced."""
    parsed = parse_client_hello_untrusted(hello)
    body = parsed.body
    at = 2 + 32
    at += 1 + body[at]  # session id
    new_body = body[:at] + bytes([len(cookie)]) + cookie + body[at + 1 + body[at] :]
    header = hello[HEADER_LENGTH : HEADER_LENGTH + 12]
    handshake = (
        header[:1]
        + len(new_body).to_bytes(3, "big")
        + header[4:6]
        + b"\x00\x00\x00"
        + len(new_body).to_bytes(3, "big")
        + new_body
    )
    return hello[:11] + struct.pack("!H", len(handshake)) + handshake


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(11)
        if not data:
            data = bytearray(rng.choice(seeds))
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            del data[rng.randrange(len(data) + 1) :]
        elif kind == 2 and len(data) >= HEADER_LENGTH + 12:  # message_length
            value = rng.choice(
                [0, 1, 255, 16_384, 16_385, 102_400, 2**24 - 1, rng.randrange(2**24)]
            )
            data[HEADER_LENGTH + 1 : HEADER_LENGTH + 4] = value.to_bytes(3, "big")
        elif kind == 3 and len(data) >= HEADER_LENGTH + 12:  # message_seq
            value = rng.choice([0, 1, 2, 3, 4, 5, 12, 65_535, rng.randrange(65_536)])
            data[HEADER_LENGTH + 4 : HEADER_LENGTH + 6] = value.to_bytes(2, "big")
        elif kind == 4 and len(data) >= HEADER_LENGTH + 12:  # fragment_offset
            value = rng.choice([0, 1, 200, 16_383, 2**24 - 1, rng.randrange(2**24)])
            data[HEADER_LENGTH + 6 : HEADER_LENGTH + 9] = value.to_bytes(3, "big")
        elif kind == 5 and len(data) >= HEADER_LENGTH + 12:  # fragment_length
            value = rng.choice([0, 1, len(data), 2**24 - 1, rng.randrange(2**24)])
            data[HEADER_LENGTH + 9 : HEADER_LENGTH + 12] = value.to_bytes(3, "big")
        elif kind == 6 and len(data) >= HEADER_LENGTH:  # record length / epoch / sequence
            field = rng.randrange(3)
            if field == 0:
                data[11:13] = rng.randrange(65_536).to_bytes(2, "big")
            elif field == 1:
                data[3:5] = rng.choice([0, 1, 2, 65_535]).to_bytes(2, "big")
            else:
                data[5:11] = rng.randrange(2**48).to_bytes(6, "big")
        elif kind == 7:  # splice two seeds
            other = rng.choice(seeds)
            data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
        elif kind == 8:  # several records in one datagram
            data = data + rng.choice(seeds)
        elif kind == 9 and len(data) >= HEADER_LENGTH + 12 + 34:  # the client random
            data[HEADER_LENGTH + 14 : HEADER_LENGTH + 46] = rng.randbytes(32)
        elif kind == 10:  # random bytes
            data = bytearray(rng.randbytes(rng.randrange(200)))
    return bytes(data)


def run_fuzz(
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
    seed: int,
    cases: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    limits = server_config.limits
    server = ServerEngine(server_config)
    now = NOW
    established = ("127.9.0.1", 4433)
    client = DTLSConnection(client_config, server=False)
    client.connect(now)
    seeds = exchange(server, client, established, now)
    assert client.state is State.ESTABLISHED
    client.send(b"application data")
    seeds += client.datagrams_to_send()
    small = client_config.replace(mtu=256, alpn_protocols=["x" * 200, "y" * 100])
    fragmented = DTLSConnection(small, server=False)
    fragmented.connect(now)
    seeds += exchange(server, fragmented, ("127.9.0.2", 4433), now)
    mutual = DTLSConnection(client_config, server=False)
    mutual.connect(now)
    plain_hello = mutual.datagrams_to_send()[0]
    seeds.append(plain_hello)
    addresses = (
        [established, ("127.9.0.2", 4433)]
        + [(f"127.9.{i // 8}.{10 + i % 8}", 5000 + i % 3) for i in range(64)]
        + [(f"::1:{i}", 6000, 0, 0) for i in range(8)]
    )
    unaccounted = 0
    for case in range(cases):
        address = rng.choice(addresses)
        data = mutate(rng, seeds)
        if rng.random() < 0.2:  # a valid cookie for this address: past the cookie check
            try:
                fields = parse_client_hello_untrusted(data).bound_fields
                cookie = server.cookies.issue(address, fields, now)
                data = with_cookie(data, cookie)
            except Exception:
                pass
        had_association = server.connection(address) is not None
        before = server.statistics()
        # No try: an exception out of the engine fails the test with its traceback.
        server.receive_datagram(data, address, now)
        server.datagrams_to_send()
        while server.next_event() is not None:
            pass
        after = server.statistics()
        if not had_association and (
            sum(after.drops.values()) == sum(before.drops.values())
            and after.hello_verify_requests_sent == before.hello_verify_requests_sent
            and after.associations_created == before.associations_created
        ):
            unaccounted += 1
        if case % 500 == 499:
            now += rng.choice([0.01, 1.0, 11.0])
            server.handle_timer(now)
            server.datagrams_to_send()
            while server.next_event() is not None:
                pass
        assert after.half_open <= limits.max_half_open
        assert len(server._hello_history) <= len(server._connections) + 1
        assert all(len(h) <= 16 for h in server._hello_history.values())
    return {"unaccounted": unaccounted, "stats": server.statistics()}


def test_mutated_datagrams_never_escape_the_engine_and_are_counted(server_config, client_config):
    for seed in (1, 2):
        result = run_fuzz(server_config, client_config, seed, CASES)
        assert result["unaccounted"] == 0, result
        stats = result["stats"]
        # The mutator reached the paths under review.
        assert stats.associations_created > 2, stats
        for reason in ("malformed_client_hello", "bad_cookie"):
            assert stats.drops.get(reason, 0) > 0, stats.drops


def test_an_established_peers_short_and_misframed_datagrams_take_the_general_path(
    server_config, client_config
):
    """The fast path's framing test (first byte 23 or 21, length field + 13 == size) reads
    bytes 0, 11 and 12: datagrams shorter than a record header, or whose length field is off by
    one, must fall through to the general path (dropped there, counted), never raise, and the
    session must go on."""
    server = ServerEngine(server_config)
    address = ("127.9.0.1", 4433)
    client = DTLSConnection(client_config, server=False)
    client.connect(NOW)
    exchange(server, client, address, NOW)
    assert client.state is State.ESTABLISHED
    while server.next_event() is not None:
        pass
    client.send(b"one real record")
    (record,) = client.datagrams_to_send()
    length = len(record) - HEADER_LENGTH
    odd = [b"", b"\x17", b"\x15", b"\x17" * 12]
    odd += [b"\x17" + record[1:k] for k in range(2, HEADER_LENGTH + 1)]
    for delta in (-1, 1):  # a length field one off either way, body unchanged
        odd.append(record[:11] + struct.pack("!H", length + delta) + record[HEADER_LENGTH:])
    odd.append(record + b"\x00")  # a byte beyond the record (which opens on the general path)
    for data in odd:
        before = sum(server.statistics().drops.values()) + sum(
            server.connection(address).statistics().drops.values()
        )
        server.receive_datagram(data, address, NOW)  # no try: nothing may escape
        server.datagrams_to_send()
        while server.next_event() is not None:
            pass
        conn = server.connection(address)
        assert conn is not None and conn.state is State.ESTABLISHED, data
        after = sum(server.statistics().drops.values()) + sum(conn.statistics().drops.values())
        assert after > before, (data, server.statistics().drops, conn.statistics().drops)
    client.send(b"the session goes on")
    (record,) = client.datagrams_to_send()
    server.receive_datagram(record, address, NOW)
    events = []
    while (item := server.next_event()) is not None:
        events.append(item[2])
    assert [getattr(e, "data", None) for e in events] == [b"the session goes on"]
