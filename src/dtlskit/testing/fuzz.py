"""A seeded mutation fuzzer for the record layer and the handshake after a valid cookie.

``python -m dtlskit.testing.fuzz --cases 100000 [--seed N]`` (or scenario 19 of
``python -m dtlskit.testing.scenarios``; 10,000 cases with ``--quick``).

Seeds are real datagrams of real handshakes (OpenSSL on both sides, in memory). Each case
mutates one of them (bit flips, interesting bytes, truncation, extension, and targeted changes
of the record header's content type, version, epoch, sequence number and length, and of the
handshake header's type, length, message_seq, fragment_offset and fragment_length, duplicated
or spliced records) and feeds it to one of four targets, in turn:

* ``server/established`` - :meth:`ServerEngine.receive_datagram` from the address of an
  established session (the record layer under a live session), seeded with its application
  records and handshake records;
* ``server/after-cookie`` - :meth:`ServerEngine.receive_datagram` from the address of an
  association created by a valid cookie and waiting for the client's second flight, seeded with
  that flight and the cookie-carrying ClientHello;
* ``client/flight-4`` and ``client/flight-6`` - :meth:`DTLSConnection.receive_datagram` of a
  client waiting for the server's flight 4 or 6, seeded with that flight.

Targets are rebuilt every few hundred cases and whenever one ends. Pass: no exception leaves any
``receive_datagram``, and afterwards the established session still echoes. Drops are reported by
reason (the demultiplexer's and every fuzzed association's).

Hibernated sessions (``--hibernated``, :func:`fuzz_hibernated`): one session per implemented
AEAD family (AES-128/256-GCM, ChaCha20-Poly1305, AES-CCM, AES-CCM-8; PSK), both sides
hibernated (``Limits(hibernate_after=0)``), their records protected by
:mod:`dtlskit.core.record_protection`. Seeds are every datagram each side ever received (the
handshake flights, application records, all already accepted once). Targets: each session's
server side (through :meth:`ServerEngine.receive_datagram`) and client side, in turn. Pass: no
exception leaves the engine, no mutated datagram delivers a message (every seed was accepted
before: anything that authenticates is a replay), every case is counted in the session's drops,
and every session still echoes both ways afterwards.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import DTLSConfiguration
from ..core import DTLSConnection, ServerEngine, State
from ._engine_scenarios import echoes
from ._harness import Fixture, Options, Outcome, scenario
from .flights import flight_of
from .memory import Datagram, MemoryPair

__all__ = ["FuzzReport", "HibernatedFuzzReport", "fuzz", "fuzz_hibernated", "main", "mutate"]

_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
_CONTENT_TYPES = (0, 20, 21, 22, 23, 24, 25, 255)
_VERSIONS = (b"\xfe\xfd", b"\xfe\xff", b"\xfe\xfc", b"\x03\x03", b"\x00\x00", b"\xff\xff")
_REFRESH_EVERY = 400


def _records(data: bytes) -> list[int]:
    """Offsets of the records framed in ``data`` (stops at the first bad length)."""
    offsets: list[int] = []
    at = 0
    while at + 13 <= len(data) and len(offsets) < 64:
        offsets.append(at)
        at += 13 + int.from_bytes(data[at + 11 : at + 13], "big")
    return offsets or [0]


def _interesting_int(rng: random.Random, size: int, current: int) -> int:
    top = (1 << (8 * size)) - 1
    choices = (0, 1, top, top >> 1, current + 1, max(0, current - 1), rng.randrange(top + 1))
    return rng.choice(choices)


def mutate(rng: random.Random, seed: bytes, other: bytes) -> bytes:
    """One mutated datagram from ``seed`` (``other`` is a second seed for splicing)."""
    data = bytearray(seed)
    if not data:
        return bytes(rng.randbytes(rng.randrange(1, 64)))
    kind = rng.randrange(12)
    record = rng.choice(_records(bytes(data)))
    header = record + 13 <= len(data)

    def put(offset: int, size: int, value: int) -> None:
        if offset + size <= len(data):
            data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "big")

    def get(offset: int, size: int) -> int:
        return int.from_bytes(data[offset : offset + size], "big")

    if kind == 0:
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        data[rng.randrange(len(data))] = rng.choice(_INTERESTING_BYTES)
    elif kind == 2:
        del data[rng.randrange(len(data)) :]
    elif kind == 3:
        data += rng.randbytes(rng.randrange(1, 200))
    elif kind == 4 and header:
        data[record] = rng.choice(_CONTENT_TYPES)
    elif kind == 5 and header:
        data[record + 1 : record + 3] = rng.choice(_VERSIONS)
    elif kind == 6 and header:
        put(record + 3, 2, _interesting_int(rng, 2, get(record + 3, 2)))  # epoch
    elif kind == 7 and header:
        put(record + 5, 6, _interesting_int(rng, 6, get(record + 5, 6)))  # sequence number
    elif kind == 8 and header:
        put(record + 11, 2, _interesting_int(rng, 2, get(record + 11, 2)))  # record length
    elif kind == 9 and header and record + 25 <= len(data) and data[record] == 22:
        # Handshake header: type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3)
        field_at, size = rng.choice(((0, 1), (1, 3), (4, 2), (6, 3), (9, 3)))
        at = record + 13 + field_at
        put(at, size, _interesting_int(rng, size, get(at, size)))
    elif kind == 10 and header:
        end = min(len(data), record + 13 + get(record + 11, 2))
        data[end:end] = data[record:end]  # the record twice
    elif kind == 11:
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + other[rng.randrange(len(other) + 1) :]
    else:
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data[:65535])


@dataclass
class _Target:
    name: str
    feed: Callable[[bytes], None]
    seeds: list[bytes]
    engine: DTLSConnection | None
    """The association or client engine whose drops and life we watch."""
    uses: int = 0

    def alive(self) -> bool:
        return self.engine is None or self.engine.state in (State.HANDSHAKING, State.ESTABLISHED)


@dataclass
class FuzzReport:
    cases: int = 0
    escaped: int = 0
    """Exceptions that left a receive_datagram (must be zero)."""
    first_escape: str = ""
    per_target: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    rebuilt: int = 0
    session_still_echoes: bool = False
    seconds: float = 0.0


class _Fuzzer:
    def __init__(self, server_config: DTLSConfiguration, client_config: DTLSConfiguration) -> None:
        self.server_config, self.client_config = server_config, client_config
        self.server = ServerEngine(server_config)
        self.victim = MemoryPair(server_config, client_config, server=self.server)
        if not self.victim.handshake():
            raise RuntimeError(f"the established session failed: {self.victim.client.error}")
        self.victim_seeds = [d.data for d in self.victim.network.log if d.to_server]
        for n in range(4):
            self.victim.client.send(b"application data %d" % n * (n + 1))
            self.victim.pump()
            self.victim_seeds.append(self.victim.network.log[-1].data)
        self.victim.run()
        self.counter = 0
        self.clock = self.victim.clock

    def drain(self) -> None:
        self.server.datagrams_to_send()
        while self.server.next_event() is not None:
            pass

    def _pair_until(self, flight: int) -> tuple[MemoryPair, list[Datagram]]:
        """A handshake run until ``flight`` is in flight; its datagrams taken off the network."""
        self.counter += 1
        address = (f"127.9.{(self.counter >> 8) & 0xFF}.{self.counter & 0xFF}", 40000)
        pair = MemoryPair(
            self.server_config,
            self.client_config,
            server=self.server,
            clock=self.clock,
            client_address=address,
        )
        pair.start()
        pair.run(lambda: any(flight_of(d) == flight for d in pair.network.queue))
        held = [d for d in pair.network.queue if flight_of(d) == flight]
        pair.network.queue.clear()
        return pair, held

    def build(self, name: str) -> _Target:
        if name == "server/established":
            address = self.victim.client_address
            conn = self.victim.server_connection
            return _Target(name, lambda d: self._to_server(d, address), self.victim_seeds, conn)
        if name == "server/after-cookie":
            pair, held = self._pair_until(5)
            hello = [d.data for d in pair.network.log if flight_of(d) == 3]
            address = pair.client_address
            conn = self.server.connection(address)
            return _Target(
                name, lambda d: self._to_server(d, address), [d.data for d in held] + hello, conn
            )
        flight = 4 if name == "client/flight-4" else 6
        pair, held = self._pair_until(flight)
        client = pair.client

        def feed(data: bytes) -> None:
            client.receive_datagram(data, self.clock.now)
            client.datagrams_to_send()
            while client.next_event() is not None:
                pass

        return _Target(name, feed, [d.data for d in held], client)

    def _to_server(self, data: bytes, address: tuple[Any, ...]) -> None:
        self.server.receive_datagram(data, address, self.clock.now)
        self.drain()


TARGETS = ("server/established", "server/after-cookie", "client/flight-4", "client/flight-6")


def fuzz(
    server_config: DTLSConfiguration,
    client_config: DTLSConfiguration,
    cases: int,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> FuzzReport:
    """Run ``cases`` mutated datagrams against the four targets; see the module docstring."""
    started = time.monotonic()
    rng = random.Random(seed)
    fuzzer = _Fuzzer(server_config, client_config)
    report = FuzzReport()
    targets = {name: fuzzer.build(name) for name in TARGETS}

    def retire(target: _Target) -> None:
        if target.engine is not None and target.name != "server/established":
            report.drops.update(
                {f"{target.name}:{k}": v for k, v in target.engine.statistics().drops.items()}
            )

    for case in range(cases):
        name = TARGETS[case % len(TARGETS)]
        target = targets[name]
        if name != "server/established" and (target.uses >= _REFRESH_EVERY or not target.alive()):
            retire(target)
            target = targets[name] = fuzzer.build(name)
            report.rebuilt += 1
        target.uses += 1
        datagram = mutate(rng, rng.choice(target.seeds), rng.choice(target.seeds))
        try:
            target.feed(datagram)
        except Exception:
            report.escaped += 1
            if not report.first_escape:
                report.first_escape = f"{name}: {datagram.hex()}\n{traceback.format_exc()}"
        report.per_target[name] += 1
        report.cases += 1
        if progress is not None and case and case % 10_000 == 0:
            progress(f"{case} cases, {report.escaped} escaped, {time.monotonic() - started:.0f} s")
    for target in targets.values():
        retire(target)
    victim = fuzzer.server.connection(fuzzer.victim.client_address)
    if victim is not None:
        report.drops.update(
            {f"server/established:{k}": v for k, v in victim.statistics().drops.items()}
        )
    report.drops.update({f"server:{k}": v for k, v in fuzzer.server.statistics().drops.items()})
    report.session_still_echoes = victim is fuzzer.victim.server_connection and echoes(
        fuzzer.victim, b"still here"
    )
    report.seconds = time.monotonic() - started
    return report


HIBERNATED_SUITES = (
    "PSK-AES128-GCM-SHA256",
    "PSK-AES256-GCM-SHA384",
    "PSK-CHACHA20-POLY1305",
    "PSK-AES128-CCM",
    "PSK-AES128-CCM8:@SECLEVEL=0",
)


@dataclass
class HibernatedFuzzReport:
    cases: int = 0
    escaped: int = 0
    """Exceptions that left a receive_datagram (must be zero)."""
    first_escape: str = ""
    delivered: int = 0
    """Mutated datagrams that delivered a message (must be zero: every seed is a replay)."""
    uncounted: int = 0
    """Cases that left no trace in the session's drop counters (must be zero)."""
    per_target: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    sessions_still_echo: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            self.escaped == 0
            and self.delivered == 0
            and self.uncounted == 0
            and self.sessions_still_echo
        )


def _hibernated_pair(cipher: str, index: int) -> MemoryPair:
    from ..config import Limits

    key = bytes(range(16))
    limits = Limits(hibernate_after=0)
    server = DTLSConfiguration.server(psk_lookup={"fuzz": key}, ciphers=cipher, limits=limits)
    client = DTLSConfiguration.client(psk=("fuzz", key), ciphers=cipher, limits=limits)
    pair = MemoryPair(server, client, client_address=(f"127.0.0.{index + 1}", 40000))
    if not pair.handshake() or pair.server_connection is None:
        raise RuntimeError(f"the {cipher} session failed: {pair.client.error}")
    if not (pair.client.hibernated and pair.server_connection.hibernated):
        raise RuntimeError(f"the {cipher} session did not hibernate")
    for n in range(4):  # application records both ways, each accepted once
        pair.client.send(b"up %d" % n * (n + 1))
        pair.server_connection.send(b"down %d" % n * (n + 1))
        pair.pump()
    while pair.deliver_one():  # deliver, but fire no timer (the idle timeout would end it)
        pass
    return pair


def _counted(engine: DTLSConnection, server: ServerEngine | None) -> int:
    """Everything that records a datagram's fate: the session's drops and final-flight
    re-sends, plus (server side) the demultiplexer's drops and HelloVerifyRequests, which is
    where a ClientHello-shaped datagram goes (it never reaches the session)."""
    stats = engine.statistics()
    total = sum(stats.drops.values()) + stats.final_flight_resends
    if server is not None:
        server_stats = server.statistics()
        total += sum(server_stats.drops.values()) + server_stats.hello_verify_requests_sent
    return total


def fuzz_hibernated(
    cases: int,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    suites: tuple[str, ...] = HIBERNATED_SUITES,
) -> HibernatedFuzzReport:
    """Run ``cases`` mutated datagrams at hibernated sessions; see the module docstring."""
    started = time.monotonic()
    rng = random.Random(seed)
    report = HibernatedFuzzReport()
    pairs = [_hibernated_pair(cipher, i) for i, cipher in enumerate(suites)]
    targets: list[
        tuple[str, ServerEngine | None, DTLSConnection, list[bytes], Callable[[bytes], None]]
    ] = []
    for cipher, pair in zip(suites, pairs, strict=True):
        name = cipher.split(":")[0]
        server_conn = pair.server_connection
        assert server_conn is not None
        to_server = [d.data for d in pair.network.log if d.to_server]
        to_client = [d.data for d in pair.network.log if not d.to_server]

        def feed_server(data: bytes, pair: MemoryPair = pair) -> None:
            pair.server.receive_datagram(data, pair.client_address, pair.clock.now)
            pair.server.datagrams_to_send()
            while pair.server.next_event() is not None:
                pass

        def feed_client(data: bytes, pair: MemoryPair = pair) -> None:
            pair.client.receive_datagram(data, pair.clock.now)
            pair.client.datagrams_to_send()
            while pair.client.next_event() is not None:
                pass

        targets.append((f"{name}/server", pair.server, server_conn, to_server, feed_server))
        targets.append((f"{name}/client", None, pair.client, to_client, feed_client))
    for case in range(cases):
        name, server, engine, seeds, feed = targets[case % len(targets)]
        datagram = mutate(rng, rng.choice(seeds), rng.choice(seeds))
        counted = _counted(engine, server)
        received = engine.statistics().messages_received
        try:
            feed(datagram)
        except Exception:
            report.escaped += 1
            if not report.first_escape:
                report.first_escape = f"{name}: {datagram.hex()}\n{traceback.format_exc()}"
        stats = engine.statistics()
        if stats.messages_received != received:
            report.delivered += 1
        if _counted(engine, server) == counted:
            report.uncounted += 1
        report.per_target[name] += 1
        report.cases += 1
        if progress is not None and case and case % 10_000 == 0:
            progress(f"{case} cases, {report.escaped} escaped, {time.monotonic() - started:.0f} s")
    for name, _, engine, _, _ in targets:
        report.drops.update({f"{name}:{k}": v for k, v in engine.statistics().drops.items()})
    still = True
    for pair in pairs:
        still = still and echoes(pair, b"still here") and _echoes_down(pair)
    report.sessions_still_echo = still
    report.seconds = time.monotonic() - started
    return report


def _echoes_down(pair: MemoryPair) -> bool:
    conn = pair.server_connection
    if conn is None or conn.state is not State.ESTABLISHED or not conn.hibernated:
        return False
    conn.send(b"still here, down")
    pair.pump()
    return pair.run(lambda: b"still here, down" in pair.client_messages())


@scenario(
    19,
    "fuzzing: record layer and handshake after a valid cookie",
    "no exception leaves the engine; the session still echoes",
)
def fuzz_scenario(options: Options, fixture: Fixture) -> Outcome:
    cases = options.fuzz_cases or (10_000 if options.quick else 100_000)
    report = fuzz(
        fixture.server_config(),
        fixture.client_config(),
        cases,
        options.seed,
        progress=print if options.verbose else None,
    )
    top = ", ".join(f"{k} {v}" for k, v in report.drops.most_common(6))
    return Outcome(
        report.escaped == 0 and report.session_still_echoes,
        f"{report.cases} cases in {report.seconds:.0f} s: {report.escaped} escaped, session "
        + ("echoes" if report.session_still_echoes else "LOST")
        + f"; top drops {top}",
        {
            "cases": report.cases,
            "escaped": report.escaped,
            "seconds": report.seconds,
            "per_target": dict(report.per_target),
            "drops": dict(report.drops),
            "targets_rebuilt": report.rebuilt,
            "session_still_echoes": report.session_still_echoes,
        },
        report.first_escape,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dtlskit.testing.fuzz",
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hibernated",
        action="store_true",
        help="fuzz hibernated sessions (record_protection), one per AEAD suite family",
    )
    args = parser.parse_args(argv)
    if args.hibernated:
        hib = fuzz_hibernated(args.cases, args.seed, progress=print)
        print(
            f"{hib.cases} cases at hibernated sessions in {hib.seconds:.1f} s; "
            f"{hib.escaped} exceptions escaped; {hib.delivered} delivered a message; "
            f"{hib.uncounted} not counted; sessions still echo: {hib.sessions_still_echo}"
        )
        for reason, count in hib.drops.most_common():
            print(f"  {reason}: {count}")
        if hib.first_escape:
            print(hib.first_escape)
        return 0 if hib.passed else 1
    fixture = Fixture()
    try:
        report = fuzz(
            fixture.server_config(), fixture.client_config(), args.cases, args.seed, progress=print
        )
    finally:
        fixture.close()
    print(
        f"{report.cases} cases in {report.seconds:.1f} s; {report.escaped} exceptions escaped; "
        f"session still echoes: {report.session_still_echoes}; targets rebuilt {report.rebuilt}"
    )
    for reason, count in report.drops.most_common():
        print(f"  {reason}: {count}")
    if report.first_escape:
        print(report.first_escape)
    return 0 if report.escaped == 0 and report.session_still_echoes else 1


if __name__ == "__main__":
    sys.exit(main())
