"""RELIABILITY scenarios run on the engines in memory, on a hand-advanced clock: 1-7 and 9-13
(and the in-memory half of 3). OpenSSL is real; only the network and the clock are simulated,
so times below are simulated seconds."""

from __future__ import annotations

import random
import ssl
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import exceptions as ex
from ..certs import certificate_pem, create_ca, issue_certificate, private_key_pem
from ..config import DTLSConfiguration, Limits
from ..core import DTLSConnection, ServerEngine, State
from ..core import events as ev
from ._harness import Fixture, Options, Outcome, median, percentile, scenario
from .flights import DropFlight, flight_of
from .memory import Clock, FakeNetwork, MemoryPair


def _close(a: float, b: float, tolerance: float = 1e-6) -> bool:
    return abs(a - b) <= tolerance


# -- 1 ------------------------------------------------------------------------------------------


@scenario(1, "each flight dropped once, in turn", "completes; timers 1, 2, 4 s")
def flights_dropped_in_turn(options: Options, fixture: Fixture) -> Outcome:
    server, client = fixture.server_config(), fixture.client_config()
    retransmits: dict[int, int] = {}
    problems = []
    for flight in range(1, 7):
        clock = Clock()
        drop = DropFlight(flight, clock)
        pair = MemoryPair(server, client, clock=clock, network=FakeNetwork(filters=[drop]))
        if not pair.handshake():
            problems.append(f"flight {flight}: handshake failed")
            continue
        retransmits[flight] = len(drop.sent_at) - 1
        if len(drop.sent_at) != 2 or not _close(drop.sent_at[1] - drop.sent_at[0], 1.0):
            problems.append(f"flight {flight}: re-sent at {drop.sent_at}")
    clock = Clock()
    drop = DropFlight(1, clock, times=3)
    pair = MemoryPair(server, client, clock=clock, network=FakeNetwork(filters=[drop]))
    pair.handshake()
    gaps = [round(b - a, 6) for a, b in zip(drop.sent_at, drop.sent_at[1:], strict=False)]
    if gaps != [1.0, 2.0, 4.0]:
        problems.append(f"timer gaps {gaps}, expected [1, 2, 4]")
    return Outcome(
        not problems,
        "retransmits per flight "
        + " ".join(f"{f}:{n}" for f, n in retransmits.items())
        + f"; gaps {'/'.join(f'{g:g}' for g in gaps)} s",
        {"retransmits_per_flight": retransmits, "timer_gaps": gaps},
        "; ".join(problems),
    )


# -- 2 and 3 (in memory) ------------------------------------------------------------------------


def lossy_handshakes(
    server: DTLSConfiguration,
    client: DTLSConfiguration,
    count: int,
    first_seed: int,
    **network: Any,
) -> tuple[int, list[float]]:
    """Handshakes on seeded lossy networks: (completed, simulated durations)."""
    durations = []
    for seed in range(first_seed, first_seed + count):
        pair = MemoryPair(server, client, network=FakeNetwork(seed=seed, **network))
        start = pair.clock.now
        if pair.handshake():
            durations.append(pair.clock.now - start)
    return len(durations), durations


@scenario(2, "100 handshakes, 10% drop + 10% duplicate + 10% reorder", "100/100")
def drop_duplicate_reorder(options: Options, fixture: Fixture) -> Outcome:
    count = 30 if options.quick else 100
    done, durations = lossy_handshakes(
        fixture.server_config(),
        fixture.client_config(),
        count,
        options.seed,
        drop=0.1,
        duplicate=0.1,
        reorder=0.1,
    )
    return Outcome(
        done == count,
        f"{done}/{count}, median {median(durations):.1f} s, p95 "
        f"{percentile(durations, 0.95):.1f} s (simulated)",
        {
            "completed": done,
            "handshakes": count,
            "median_seconds": median(durations),
            "p95_seconds": percentile(durations, 0.95),
        },
    )


# With RFC 6347's timer (1 s doubling to the 60 s cap, kept after a lossy flight) a handshake at
# 30% loss in both directions needs more than the default 30 s deadline: the scenario's "60 s
# cap" is the retransmission timer's, and the deadline is 300 s.
LOSS_DEADLINE = 300.0


def thirty_percent_in_memory(options: Options, fixture: Fixture) -> tuple[int, int, float]:
    count = 30 if options.quick else 100
    long = {"handshake_timeout": LOSS_DEADLINE, "max_retransmit_timeout": 60.0}
    done, durations = lossy_handshakes(
        fixture.server_config(**long),
        fixture.client_config(**long),
        count,
        1000 + options.seed,
        drop=0.3,
    )
    return done, count, percentile(durations, 0.95)


# -- 4, 5 ---------------------------------------------------------------------------------------


@scenario(4, "lost final flight only", "client completes via re-sent final flight")
def lost_final_flight(options: Options, fixture: Fixture) -> Outcome:
    clock = Clock()
    drop = DropFlight(6, clock)
    pair = MemoryPair(
        fixture.server_config(),
        fixture.client_config(),
        clock=clock,
        network=FakeNetwork(filters=[drop]),
    )
    ok = pair.handshake()
    conn = pair.server_connection
    resends = conn.statistics().final_flight_resends if conn is not None else 0
    return Outcome(
        ok and resends >= 1,
        f"completed after {clock.now - 1000.0:g} s; final flight re-sent {resends}x",
        {"completed": ok, "final_flight_resends": resends},
    )


@scenario(5, "silent peer", "HandshakeTimeout at the deadline +-1 RTO")
def silent_peer(options: Options, fixture: Fixture) -> Outcome:
    deadline = 10.0
    pair = MemoryPair(
        fixture.server_config(),
        fixture.client_config(handshake_timeout=deadline),
        network=FakeNetwork(drop=1.0),
    )
    start = pair.clock.now
    pair.start()
    pair.run()
    took = pair.clock.now - start
    error = pair.client.error
    ok = isinstance(error, ex.HandshakeTimeout) and abs(took - deadline) <= 1.0
    return Outcome(
        ok,
        f"{type(error).__name__} after {took:g} s (deadline {deadline:g} s)",
        {"seconds": took, "error": str(error)},
    )


# -- 6 ------------------------------------------------------------------------------------------


@scenario(6, "MTU 576/1280/256, 4096-bit RSA chain + intermediate", "completes; no datagram > MTU")
def small_mtu_big_chain(options: Options, fixture: Fixture) -> Outcome:
    directory = fixture.path("rsa4096")
    root = create_ca("root", key_type="rsa", rsa_bits=4096)
    intermediate = create_ca("intermediate", key_type="rsa", rsa_bits=4096, issuer=root)
    leaf, key = issue_certificate(
        intermediate, "localhost", hosts=["localhost"], key_type="rsa", rsa_bits=4096
    )
    (directory / "chain.pem").write_bytes(certificate_pem(leaf) + certificate_pem(intermediate[0]))
    (directory / "key.pem").write_bytes(private_key_pem(key))
    (directory / "ca.pem").write_bytes(certificate_pem(root[0]))
    per_mtu: dict[int, dict[int, int]] = {}
    problems = []
    for mtu in (576, 1280, 256):
        server = DTLSConfiguration.server(directory / "chain.pem", directory / "key.pem", mtu=mtu)
        client = DTLSConfiguration.client(directory / "ca.pem", "localhost", mtu=mtu)
        pair = MemoryPair(server, client)
        if not pair.handshake():
            problems.append(f"MTU {mtu}: handshake failed ({pair.client.error})")
            continue
        biggest = max(len(d.data) for d in pair.network.log)
        if biggest > mtu:
            problems.append(f"MTU {mtu}: a {biggest}-byte datagram")
        flights: dict[int, int] = {}
        for datagram in pair.network.log:
            flight = flight_of(datagram)
            if flight is not None:
                flights[flight] = flights.get(flight, 0) + 1
        per_mtu[mtu] = dict(sorted(flights.items()))
    figure = "; ".join(
        f"{mtu}: " + " ".join(f"{n}" for n in flights.values()) for mtu, flights in per_mtu.items()
    )
    return Outcome(
        not problems,
        f"datagrams per flight 1-6 at MTU {figure}",
        {"datagrams_per_flight": per_mtu},
        "; ".join(problems),
    )


# -- 7 ------------------------------------------------------------------------------------------

ADDRESS = ("127.0.0.1", 40000)


def hello_exchange(
    server_config: DTLSConfiguration, client_config: DTLSConfiguration, now: float = 1000.0
) -> tuple[ServerEngine, bytes]:
    """A server, and a client's second ClientHello carrying the server's valid cookie."""
    server = ServerEngine(server_config)
    client = DTLSConnection(client_config, server=False)
    client.connect(now)
    (first,) = client.datagrams_to_send()
    server.receive_datagram(first, ADDRESS, now)
    ((hello_verify, _),) = server.datagrams_to_send()
    client.receive_datagram(hello_verify, now)
    (second,) = client.datagrams_to_send()
    return server, second


@scenario(7, "cookie tampered at every byte; expired; for another address", "rejected, no state")
def cookie_tampering(options: Options, fixture: Fixture) -> Outcome:
    server_config, client_config = fixture.server_config(), fixture.client_config()
    server, second = hello_exchange(server_config, client_config)
    # The cookie and every field it is bound to: version, random, session id and the cookie
    # itself, all before the cookie's end (what follows it is not bound, so that a fragmented
    # ClientHello's first fragment can be checked alone; OpenSSL judges the rest).
    body = 13 + 12
    session_id_end = body + 2 + 32 + 1 + second[body + 34]
    bound_end = session_id_end + 1 + second[session_id_end]
    for offset in range(body, bound_end):
        tampered = bytearray(second)
        tampered[offset] ^= 0x01
        server.receive_datagram(bytes(tampered), ADDRESS, 1000.0)
        server.datagrams_to_send()
    tampered_cases = bound_end - body
    expired, _ = hello_exchange(server_config, client_config)
    expired.receive_datagram(second, ADDRESS, 1000.0 + 2 * 31.0)
    elsewhere, _ = hello_exchange(server_config, client_config)
    for other in (("127.0.0.2", 40000), ("127.0.0.1", 40001), ("::1", 40000, 0, 0)):
        elsewhere.receive_datagram(second, other, 1000.0)
    created = sum(s.statistics().associations_created for s in (server, expired, elsewhere))
    drops: dict[str, int] = {}
    for engine in (server, expired, elsewhere):
        for reason, n in engine.statistics().drops.items():
            drops[reason] = drops.get(reason, 0) + n
    # Control: the untampered ClientHello is accepted, so the rejections above mean something.
    control, good = hello_exchange(server_config, client_config)
    control.receive_datagram(good, ADDRESS, 1000.0)
    accepted = control.statistics().associations_created == 1
    return Outcome(
        created == 0 and accepted,
        f"{tampered_cases} tampered + 1 expired + 3 misaddressed: {created} associations",
        {"associations_created": created, "drops": drops, "control_accepted": accepted},
    )


# -- 9, 10 --------------------------------------------------------------------------------------


def junk_datagrams(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, truncated records, wrong versions, huge lengths."""
    junk = [rng.randbytes(rng.randrange(1, 300)) for _ in range(count)]
    junk += [b"\x17\xfe\xfd\x00\x01" + b"\x00" * 6 + b"\xff\xff" + b"x" * 10]  # huge length
    junk += [b"\x17\x03\x03\x00\x01" + b"\x00" * 6 + b"\x00\x05" + b"hello"]  # TLS, not DTLS
    junk += [b"\x17\xfe\xfd\x00\x01\x00"]  # truncated header
    junk += [b"\x16\xfe\xfd\x00\x00" + b"\x00" * 6 + b"\x00\x30" + b"\x01" + b"\x00" * 20]
    junk += [b"\x17\xfe\xfd\x00\x05" + b"\x00" * 6 + b"\x00\x20" + rng.randbytes(32)]  # epoch 5
    return junk


def drop_total(pair: MemoryPair) -> int:
    """Every drop counted on the server for this pair: the demultiplexer's and the session's."""
    total = sum(pair.server.statistics().drops.values())
    conn = pair.server_connection
    if conn is not None:
        total += sum(conn.statistics().drops.values())
    return total


def all_drops(pair: MemoryPair) -> dict[str, int]:
    drops = dict(pair.server.statistics().drops)
    conn = pair.server_connection
    if conn is not None:
        for reason, n in conn.statistics().drops.items():
            drops[f"session:{reason}"] = drops.get(f"session:{reason}", 0) + n
    return drops


def echoes(pair: MemoryPair, message: bytes) -> bool:
    """The established session still carries a message from the client to the server."""
    before = len(pair.server_messages())
    pair.client.send(message)
    pair.pump()
    return pair.run(lambda: pair.server_messages()[before:] == [message])


@scenario(
    9,
    "junk to a live server (random, truncated, wrong version, huge length)",
    "dropped and counted; sessions unaffected",
)
def junk_to_live_server(options: Options, fixture: Fixture) -> Outcome:
    pair = MemoryPair(fixture.server_config(), fixture.client_config())
    if not pair.handshake():
        return Outcome(False, "handshake failed", notes=str(pair.client.error))
    rng = random.Random(options.seed)
    junk = junk_datagrams(rng, 200 if options.quick else 2000)
    base = all_drops(pair)
    uncounted = 0
    for datagram in junk:
        before = drop_total(pair)
        pair.server.receive_datagram(datagram, pair.client_address, pair.clock.now)
        pair.pump()
        if drop_total(pair) == before:
            uncounted += 1
    drops = {k: v - base.get(k, 0) for k, v in all_drops(pair).items() if v != base.get(k, 0)}
    conn = pair.server_connection
    alive = conn is not None and conn.state is State.ESTABLISHED and echoes(pair, b"after")
    return Outcome(
        alive and uncounted == 0,
        f"{len(junk)} junk datagrams, {uncounted} not counted; drops "
        + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"),
        {"junk": len(junk), "uncounted": uncounted, "drops": drops, "session_alive": alive},
        "" if uncounted == 0 else "junk to an established session is dropped but not counted",
    )


@scenario(10, "replayed and corrupted application records", "dropped; session stays up")
def replayed_and_corrupted(options: Options, fixture: Fixture) -> Outcome:
    pair = MemoryPair(fixture.server_config(), fixture.client_config())
    if not pair.handshake():
        return Outcome(False, "handshake failed", notes=str(pair.client.error))
    pair.client.send(b"once")
    pair.pump()
    record = pair.network.log[-1].data
    pair.run(lambda: pair.server_messages() == [b"once"])
    for _ in range(3):
        pair.server.receive_datagram(record, pair.client_address, pair.clock.now)
    for offset in (13, len(record) // 2, len(record) - 1):
        corrupted = bytearray(record)
        corrupted[offset] ^= 0x01
        pair.server.receive_datagram(bytes(corrupted), pair.client_address, pair.clock.now)
    pair.pump()
    delivered = pair.server_messages()
    alive = echoes(pair, b"still up")
    return Outcome(
        delivered == [b"once"] and alive,
        f"3 replays + 3 corrupted: {len(delivered) - 1} delivered; session "
        + ("up" if alive else "down"),
        {"delivered_extra": len(delivered) - 1, "session_alive": alive, "drops": all_drops(pair)},
    )


# -- 11, 12 -------------------------------------------------------------------------------------


@scenario(
    11,
    "reconnect from the same address with a new ClientHello",
    "old session replaced after cookie",
)
def reconnect_same_address(options: Options, fixture: Fixture) -> Outcome:
    server, client = fixture.server_config(), fixture.client_config()
    pair = MemoryPair(server, client)
    first = pair.handshake()
    old = pair.server_connection
    second = MemoryPair(server, client, clock=pair.clock, server=pair.server, network=pair.network)
    again = second.handshake()
    stats = pair.server.statistics()
    ok = (
        first
        and again
        and stats.sessions_replaced == 1
        and stats.sessions == 1
        and old is not None
        and old.state is State.TERMINATED
        and stats.hello_verify_requests_sent == 2
    )
    return Outcome(
        ok,
        f"replaced {stats.sessions_replaced}, sessions {stats.sessions}, "
        f"cookies issued {stats.hello_verify_requests_sent}",
        {"sessions_replaced": stats.sessions_replaced, "sessions": stats.sessions},
    )


@scenario(
    12,
    "close_notify both ways; peer vanishes without it",
    "clean close; idle expiry frees the session",
)
def close_and_vanish(options: Options, fixture: Fixture) -> Outcome:
    server, client = fixture.server_config(), fixture.client_config()
    problems = []
    pair = MemoryPair(server, client)
    pair.handshake()
    pair.client.close()
    pair.pump()
    pair.run(lambda: any(isinstance(e, ev.SessionClosed) for e in pair.server_events))
    if ev.SessionClosed(by_peer=True, alert="close notify") not in pair.server_events:
        problems.append("server did not see the client's close_notify")
    pair = MemoryPair(server, client)
    pair.handshake()
    if pair.server_connection is not None:
        pair.server_connection.close()
    pair.pump()
    pair.run(lambda: pair.client.state is State.CLOSED)
    if ev.SessionClosed(by_peer=True, alert="close notify") not in pair.client_events:
        problems.append("client did not see the server's close_notify")
    idle = 30.0
    pair = MemoryPair(server.replace(limits=Limits(idle_timeout=idle)), client)
    pair.handshake()
    start = pair.clock.now
    pair.network.drop = 1.0  # the client vanishes
    pair.run(lambda: pair.server.statistics().sessions == 0)
    freed_after = pair.clock.now - start
    if pair.server.statistics().sessions != 0:
        problems.append("idle session was not freed")
    return Outcome(
        not problems,
        f"close_notify both ways; vanished peer freed after {freed_after:g} s (idle {idle:g} s)",
        {"idle_freed_after": freed_after},
        "; ".join(problems),
    )


# -- 13 -----------------------------------------------------------------------------------------


def _leaf(fixture: Fixture, name: str, **options: Any) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pki = fixture.pki
    ca = (
        x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()),
        serialization.load_pem_private_key(pki.ca_key.read_bytes(), None),
    )
    cert, key = issue_certificate(ca, name, **options)  # type: ignore[arg-type]
    directory = fixture.path("leaves")
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate_pem(cert))
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path


@scenario(
    13,
    "wrong CA, expired, not yet valid, wrong name, no client cert, wrong PSK, no common cipher",
    "HandshakeError subclass naming the cause",
)
def refused_handshakes(options: Options, fixture: Fixture) -> Outcome:
    now = datetime.now(timezone.utc)
    server, client = fixture.server_config(), fixture.client_config()
    other = create_ca("another CA")
    other_ca = fixture.path("other") / "ca.pem"
    other_ca.write_bytes(certificate_pem(other[0]))
    expired = _leaf(
        fixture,
        "expired",
        hosts=["localhost"],
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    future = _leaf(
        fixture,
        "future",
        hosts=["localhost"],
        not_before=now + timedelta(days=1),
        not_after=now + timedelta(days=30),
    )
    key = bytes(range(16))
    psk_server = DTLSConfiguration.server(psk_lookup={"dev1": key})
    cases: dict[str, tuple[DTLSConfiguration, DTLSConfiguration, str]] = {
        "wrong CA": (server, client.replace(cafile=other_ca), "issuer"),
        "expired": (DTLSConfiguration.server(*expired), client, "expired"),
        "not yet valid": (DTLSConfiguration.server(*future), client, "not yet valid"),
        "wrong host name": (server, client.replace(server_hostname="example.com"), "hostname"),
        "no client certificate": (
            server.replace(verify_mode=ssl.CERT_REQUIRED, cafile=fixture.pki.ca_cert),
            client,
            "certificate",
        ),
        "wrong PSK": (
            psk_server,
            DTLSConfiguration.client(psk=("dev1", b"\xff" * 16)),
            "PSK",
        ),
        "no common cipher": (
            server.replace(ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"),
            client.replace(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"),
            "",
        ),
    }
    results: dict[str, str] = {}
    problems = []
    for name, (server_cfg, client_cfg, word) in cases.items():
        pair = MemoryPair(server_cfg, client_cfg)
        completed = pair.handshake()
        error = pair.client.error
        results[name] = f"{type(error).__name__}: {error}"
        if completed or not isinstance(error, ex.HandshakeError) or word not in str(error):
            problems.append(f"{name}: {results[name]}")
    return Outcome(
        not problems,
        ", ".join(f"{n}: {r.split(':')[0]}" for n, r in results.items()),
        {"errors": results},
        "; ".join(problems),
    )
