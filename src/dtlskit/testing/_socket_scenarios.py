"""RELIABILITY scenarios on real sockets on loopback, through the public asyncio and blocking
APIs: 3 (30% loss, in memory and through the impairment proxy), 14 (signals), 15 (soak)."""

from __future__ import annotations

import asyncio
import json
import math
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from .. import exceptions as ex
from .. import sync
from ..asyncio import Channel, connect, serve
from ..config import DTLSConfiguration
from ._engine_scenarios import LOSS_DEADLINE, thirty_percent_in_memory
from ._harness import Fixture, Options, Outcome, percentile, scenario
from .impairment import ImpairmentProxy


def loopback(base: int, index: int) -> str:
    """The ``index``-th address of a 127.``base``.0.0/16 block (loopback needs no setup)."""
    return f"127.{base}.{(index >> 8) & 0xFF}.{index & 0xFF}"


# -- 3 ------------------------------------------------------------------------------------------


async def _echo(channel: Channel) -> None:
    async for message in channel:
        await channel.send(message)


async def handshakes_through_proxy(
    server_config: DTLSConfiguration,
    client_config: DTLSConfiguration,
    count: int,
    *,
    seed: int,
    **impairments: Any,
) -> tuple[list[float | None], dict[str, int], dict[str, int]]:
    """``count`` concurrent handshakes from real clients through an :class:`ImpairmentProxy`
    to a real server: each one's duration in seconds (None if it failed), the proxy's
    counters, and the failures by exception."""
    failures: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    async with serve(_echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        proxy = ImpairmentProxy(
            ("127.0.0.1", port),
            seed=seed,
            source_host=lambda n: loopback(5, n + 1),
            **impairments,
        )
        with proxy:
            host, proxy_port = proxy.address[:2]

            async def one() -> float | None:
                start = loop.time()
                try:
                    channel = await connect(host, proxy_port, config=client_config)
                except ex.DTLSError as exc:
                    kind = f"{type(exc).__name__}: {exc}"[:120]
                    failures[kind] = failures.get(kind, 0) + 1
                    return None
                took = loop.time() - start
                channel.close()
                return took

            durations = await asyncio.gather(*(one() for _ in range(count)))
        return list(durations), dict(proxy.counters), failures


@scenario(
    3,
    "100 handshakes at 30% symmetric random loss, 60 s timer cap",
    ">= 99/100 in memory and on real sockets",
)
def thirty_percent_loss(options: Options, fixture: Fixture) -> Outcome:
    done, count, p95 = thirty_percent_in_memory(options, fixture)
    # Real time: with RFC 6347's timers a tail handshake takes minutes. The quick run scales
    # every timer by 1/10 (0.1 s initial, 6 s cap, 30 s deadline): the same sequence of
    # retransmissions in a tenth of the wall time.
    scale = 0.1 if options.quick else 1.0
    real_count = 100
    timers = {
        "initial_retransmit_timeout": 1.0 * scale,
        "max_retransmit_timeout": 60.0 * scale,
        "handshake_timeout": LOSS_DEADLINE * scale,
    }
    durations, counters, failures = asyncio.run(
        handshakes_through_proxy(
            fixture.server_config(**timers),
            fixture.client_config(**timers),
            real_count,
            seed=options.seed,
            drop=0.3,
        )
    )
    real = [d for d in durations if d is not None]
    real_p95 = percentile(real, 0.95)
    need_memory = count - count // 100
    # One handshake in ~300 fails at 30% loss whatever the deadline (measured in memory: the
    # server's final flight lost until the server forgets the session). On real sockets the
    # outcome is not seeded, so 100 handshakes miss ">= 99" about 4% of the time by chance
    # alone; the CI-sized run asks for >= 98 (0.5%), the full run for >= 99.
    need_real = real_count - (2 if options.quick else 1)
    scaled = " (timers x0.1)" if scale != 1.0 else ""
    return Outcome(
        done >= need_memory and len(real) >= need_real,
        f"memory {done}/{count}, p95 {p95:.0f} s simulated; sockets {len(real)}/{real_count}, "
        f"p95 {real_p95:.1f} s{scaled}",
        {
            "memory_completed": done,
            "memory_handshakes": count,
            "memory_p95_seconds": p95,
            "socket_completed": len(real),
            "socket_handshakes": real_count,
            "socket_p95_seconds": real_p95,
            "timer_scale": scale,
            "proxy": counters,
            "socket_failures": failures,
        },
        "; ".join(f"{n}x {k}" for k, n in failures.items()),
    )


# -- a server in its own process (14, 15, 16) ---------------------------------------------------


class ServerProcess:
    """``dtlskit.testing._server_child``: an asyncio echo server in a process of its own."""

    def __init__(
        self,
        fixture: Fixture,
        limits: dict[str, Any] | None = None,
        arguments: list[str] | None = None,
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "dtlskit.testing._server_child",
            "--cert",
            str(fixture.pki.server_cert),
            "--key",
            str(fixture.pki.server_key),
        ]
        if limits:
            command += ["--limits", json.dumps(limits)]
        command += arguments or []
        # Its log (one line per failed handshake under attack) goes to a file, not our stderr.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        try:
            line = self.read_line("READY", 60.0)
        except BaseException:
            self.__exit__()
            raise
        _, pid, port = line.split()
        self.pid, self.port = int(pid), int(port)

    def read_line(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix`` (others are skipped)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the server process said no {prefix} line in {timeout:g} s")
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if not ready:
                continue
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the server process exited ({self.process.poll()})")
            if line.startswith(prefix):
                return line.strip()

    def ask(self, command: str, prefix: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read_line(prefix, 30.0)[len(prefix) + 1 :]

    def rss(self) -> int:
        return int(self.ask("rss", "RSS"))

    def statistics(self) -> dict[str, Any]:
        return dict(json.loads(self.ask("stats", "STATS")))

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def log_text(self) -> str:
        """What the server process wrote to stderr so far."""
        self.log.seek(0)
        return self.log.read()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        for stream in (self.process.stdin, self.process.stdout, self.log):
            if stream is not None:
                stream.close()


# -- 14 -----------------------------------------------------------------------------------------


@scenario(
    14,
    "SIGINT/SIGTERM to a server with live sessions",
    "close_notify to all; exit 0; no leaked fds",
)
def signals(options: Options, fixture: Fixture) -> Outcome:
    figures: dict[str, Any] = {}
    problems = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        name = signal.Signals(signum).name
        with ServerProcess(fixture) as server:
            clients = [
                sync.connect("127.0.0.1", server.port, config=fixture.client_config())
                for _ in range(5)
            ]
            for client in clients:
                client.send(b"hello")
                client.recv(timeout=10.0)
            status = server.stop(signum)
            closed = 0
            for client in clients:
                try:
                    client.recv(timeout=10.0)
                except ex.ConnectionClosedByPeer:
                    closed += 1
                except ex.DTLSError:
                    pass
                client.close()
            stats = json.loads(server.read_line("CLOSED", 10.0)[len("CLOSED ") :])
            before, after = map(int, server.read_line("FDS", 10.0).split()[1:])
            tracebacks = server.log_text().count("Traceback")
        figures[name] = {
            "exit": status,
            "close_notify_received": closed,
            "fds_before": before,
            "fds_after": after,
            "sessions_at_exit": stats["sessions"],
            "tracebacks": tracebacks,
        }
        if status != 0 or closed != len(clients) or after > before or tracebacks:
            problems.append(f"{name}: {figures[name]}")
    return Outcome(
        not problems,
        "; ".join(
            f"{n}: exit {f['exit']}, close_notify {f['close_notify_received']}/5, "
            f"fds {f['fds_before']}->{f['fds_after']}"
            for n, f in figures.items()
        ),
        figures,
        "; ".join(problems),
    )


# -- 15 -----------------------------------------------------------------------------------------
#
# What the soak measures. RSS per minute measured allocator high-water as much as leaks: under
# load the server's RSS steps up with the most sessions it ever held at once, and OpenSSL's
# caches fill, then both stay; a loaded machine makes the steps bigger and later. So the soak
# compares memory against the work done, at quiet points: the load stops at checkpoints (after
# a warm-up quarter, then at equal intervals), every session ends, the server collects garbage,
# and the exact signals are read (live gc objects, allocated memory blocks, tracemalloc's traced
# bytes, open fds, the sizes of the server's tables) beside RSS. A leak grows them by the same
# amount for every session served, in the second half of the measured window as in the first;
# a bounded cache or high-water stops growing. Pass: no error, every checkpoint quiet, and the
# second half's growth per session served within the bounds below.

SOAK_IDLE_TIMEOUT = 15.0
"""The soak server's idle timeout: a session whose close_notify was lost ends within it."""
SOAK_QUIET_SECONDS = SOAK_IDLE_TIMEOUT + 25.0
"""How long a checkpoint waits for every session to end."""
SOAK_BOUNDS = {
    "gc_objects": (0.05, 200),
    "allocated_blocks": (0.1, 400),
    "traced_bytes": (16, 64 * 1024),
    "rss_kib": (0.5, 8 * 1024),
}
"""Signal -> (growth per session, slack) allowed over the second half of the measured window.
A session served leaves nothing behind (measured: 0 objects, -14 blocks, -2 KiB traced over
800 sessions at CI size), so one object, block or 64 bytes kept per session fails once a half
serves about 1,000 sessions. RSS, the only signal that sees OpenSSL's own allocations, allows
half a KiB per session beyond 8 MiB of allocator high-water (a leaked session holds ~60 KiB)."""


def soak_bound(signal: str, sessions: int) -> float:
    """The growth of ``signal`` allowed over a half that served ``sessions`` sessions."""
    rate, slack = SOAK_BOUNDS[signal]
    return slack + rate * sessions


async def soak_clients(
    port: int,
    config: DTLSConfiguration,
    clients: int,
    segments: list[float],
    checkpoint: Any,
) -> dict[str, Any]:
    """``clients`` tasks, each on its own 127.6.x.y: connect, echo three messages, close, pause
    ``clients / 100`` s (so the offered load stays near 100 sessions/s whatever the number of
    clients), again. The load runs in ``segments`` (seconds each); after each one the clients
    finish their session and wait while ``checkpoint(index)`` runs (in a thread).

    UDP may lose an echo (a full socket buffer under load): like any application over UDP, a
    client re-sends a message unanswered for 2 s, up to 5 times (counted as ``resends``). An
    error is a session that fails: a handshake error, or a message never echoed."""
    loop = asyncio.get_running_loop()
    pause = clients / 100.0
    totals = {"cycles": 0, "messages": 0, "resends": 0, "errors": 0}
    errors: dict[str, int] = {}
    running = asyncio.Event()
    idle = asyncio.Event()
    state = {"active": 0, "stop": False}

    async def echo(channel: Channel, message: bytes) -> None:
        for _ in range(5):
            await channel.send(message)
            try:
                for _ in range(16):  # skip late echoes of earlier copies
                    if await asyncio.wait_for(channel.recv(), 2.0) == message:
                        return
            except asyncio.TimeoutError:
                totals["resends"] += 1
        raise ex.DTLSTimeoutError(f"no echo of {message!r} after 5 tries")

    async def cycle(local: tuple[str, int]) -> None:
        state["active"] += 1
        try:
            async with connect("127.0.0.1", port, config=config, local_addr=local) as ch:
                for n in range(3):
                    await echo(ch, b"soak %d" % n)
                    totals["messages"] += 1
            totals["cycles"] += 1
        except ex.DTLSError as exc:
            totals["errors"] += 1
            name = type(exc).__name__
            errors[name] = errors.get(name, 0) + 1
        finally:
            state["active"] -= 1
            if not state["active"] and not running.is_set():
                idle.set()

    async def client(index: int) -> None:
        local = (loopback(6, index + 1), 0)
        while True:
            await running.wait()
            if state["stop"]:
                return
            await asyncio.sleep(pause * index / clients)  # spread the handshakes (pacing)
            while running.is_set() and not state["stop"]:
                await cycle(local)
                await asyncio.sleep(pause)

    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    try:
        for index, length in enumerate(segments):
            idle.clear()
            running.set()
            await asyncio.sleep(length)
            running.clear()
            if state["active"]:
                # Bounded: a session ends within 3 echoes x 5 tries x 2 s plus its handshake.
                await asyncio.wait_for(idle.wait(), 120.0)
            await loop.run_in_executor(None, checkpoint, index)
        state["stop"] = True
        running.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return {**totals, "error_kinds": errors}


def soak_segments(seconds: float) -> list[float]:
    """Load time before each checkpoint: a warm-up quarter, then two halves of equal
    segments (one per half up to 2 minutes; about 5 minutes each for long runs)."""
    warm_up = seconds / 4
    per_half = max(1, math.ceil((seconds - warm_up) / 2 / 300.0))
    return [warm_up] + [(seconds - warm_up) / (2 * per_half)] * (2 * per_half)


def quiet_probe(server: ServerProcess, timeout: float = SOAK_QUIET_SECONDS) -> dict[str, Any]:
    """The server's probe once every session and handler has ended (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        probe = dict(json.loads(server.ask("probe", "PROBE")))
        polls += 1
        quiet = probe["sessions"] == 0 and probe["tables"].get("server._tasks", 0) == 0
        if quiet or time.monotonic() >= deadline:
            probe["quiet"] = quiet
            return probe
        # A bounded poll for a condition, not an ordering sleep: sessions end on their own.
        time.sleep(0.2 if polls < 50 else 1.0)


def soak_judgement(checkpoints: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Growth per session over each half of the measured window, and what is out of bounds."""
    middle = (len(checkpoints) - 1) // 2
    first, mid, last = checkpoints[0], checkpoints[middle], checkpoints[-1]
    figures: dict[str, Any] = {}
    problems = []
    served = {
        "first": mid["handlers_finished"] - first["handlers_finished"],
        "second": last["handlers_finished"] - mid["handlers_finished"],
    }
    figures["sessions_per_half"] = served
    for kind in SOAK_BOUNDS:
        if first.get(kind) is None:
            continue
        halves = {"first": mid[kind] - first[kind], "second": last[kind] - mid[kind]}
        bound = soak_bound(kind, served["second"])
        figures[kind] = {
            "growth": halves,
            "per_session": {h: g / max(served[h], 1) for h, g in halves.items()},
            "bound_second_half": bound,
        }
        if halves["second"] > bound:
            problems.append(
                f"{kind} grew {halves['second']:+,} over {served['second']:,} sessions "
                f"(bound {bound:,.0f})"
            )
    if last["fds"] > first["fds"]:
        problems.append(f"open fds {first['fds']} -> {last['fds']}")
    tables = {
        name: [c["tables"].get(name, 0) for c in checkpoints]
        for name in last["tables"]
        if any(c["tables"].get(name, 0) for c in checkpoints)
    }
    figures["nonempty_tables"] = tables
    for name, sizes in tables.items():
        if sizes[-1] > sizes[0] and sizes[-1] > sizes[middle]:
            problems.append(f"server table {name} grew {sizes}")
    noisy = [n for n, c in enumerate(checkpoints) if not c["quiet"]]
    if noisy:
        problems.append(f"sessions still open {SOAK_QUIET_SECONDS:g} s after checkpoints {noisy}")
    return figures, problems


@scenario(
    15,
    "soak: clients reconnecting and echoing",
    "no error; no growth per session served (objects, blocks, traced bytes, fds, tables, RSS)",
)
def soak(options: Options, fixture: Fixture) -> Outcome:
    seconds = options.soak_seconds or (30.0 if options.quick else 120.0)
    clients = options.soak_clients or ((20 if options.quick else 100) if seconds <= 120 else 1000)
    segments = soak_segments(seconds)
    checkpoints: list[dict[str, Any]] = []
    started = time.monotonic()
    with ServerProcess(fixture, {"idle_timeout": SOAK_IDLE_TIMEOUT}, ["--trace"]) as server:

        def checkpoint(index: int) -> None:
            probe = quiet_probe(server)
            probe["seconds"] = round(time.monotonic() - started, 1)
            checkpoints.append(probe)
            if options.verbose or seconds > 120:  # long runs always show their progress
                print(
                    f"      soak checkpoint {index}/{len(segments) - 1} at {probe['seconds']:g} s:"
                    f" {probe['handlers_finished']:,} sessions served,"
                    f" RSS {probe['rss_kib']:,} KiB,"
                    f" {probe['traced_bytes'] or 0:,} bytes traced, "
                    f"{probe['gc_objects']:,} objects, {probe['allocated_blocks']:,} blocks, "
                    f"fds {probe['fds']}, quiet {probe['quiet']}",
                    flush=True,
                )

        totals = asyncio.run(
            soak_clients(server.port, fixture.client_config(), clients, segments, checkpoint)
        )
        stats = server.statistics()
    figures, problems = soak_judgement(checkpoints)
    if totals["errors"]:
        problems.insert(0, f"{totals['errors']} client errors {totals['error_kinds']}")
    served = figures["sessions_per_half"]
    per = {s: figures[s]["per_session"]["second"] for s in SOAK_BOUNDS if s in figures}
    return Outcome(
        not problems,
        f"{clients} clients, {seconds:g} s: {totals['cycles']} sessions, "
        f"{totals['errors']} errors, {totals['resends']} echoes re-sent; second half "
        f"({served['second']:,} sessions) growth per session: "
        + ", ".join(f"{s} {v:+.2f}" for s, v in per.items())
        + f"; RSS {checkpoints[0]['rss_kib'] // 1024}->{checkpoints[-1]['rss_kib'] // 1024} MiB",
        {
            **totals,
            "clients": clients,
            "seconds": seconds,
            "segments": segments,
            **figures,
            "checkpoints": checkpoints,
            "server_drops": stats.get("drops", {}),
            "server_sessions_at_end": stats["sessions"],
        },
        "; ".join(problems),
    )


# -- 20 -----------------------------------------------------------------------------------------

PIN_BOUND = 1 << 20  # bytes one session may make the server hold for a handler that does not read


async def pin_one_session(
    server_config: DTLSConfiguration, client_config: DTLSConfiguration, limit: int
) -> tuple[int, int, int, dict[str, int]]:
    """A real asyncio server whose handler never reads; a client sends the largest messages a
    record carries until the server refuses (or ``limit`` sent). Returns (message size, messages
    sent, messages held by the server's channel, the session's drops)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Channel] = loop.create_future()
    done = asyncio.Event()

    async def idle(channel: Channel) -> None:
        accepted.set_result(channel)
        await done.wait()

    async with serve(idle, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        async with connect("127.0.0.1", port, config=client_config) as client:
            channel = await asyncio.wait_for(accepted, 30.0)
            message = b"p" * min(client.cleartext_mtu, 16384)
            sent = 0

            def arrived() -> int:
                stats = channel.statistics()
                return stats.messages_received + sum(stats.drops.values())

            while sent < limit and not channel.statistics().drops:
                await client.send(message)
                sent += 1
                # Let the server take each message before the next: the socket buffer in front
                # of it holds only ~200 KiB. A bounded wait for a condition, not a sleep.
                for _ in range(1000):
                    if arrived() >= sent:
                        break
                    await asyncio.sleep(0.001)
            held = channel.pending()
            drops = dict(channel.statistics().drops)
        done.set()
    return len(message), sent, held, drops


@scenario(
    20,
    "memory a peer can pin: 16 KiB messages to a handler that does not read",
    "bytes held per session <= 1 MiB; the excess dropped and counted",
)
def pinned_memory(options: Options, fixture: Fixture) -> Outcome:
    server_config = fixture.server_config()
    limits = server_config.limits
    size, sent, held, drops = asyncio.run(
        pin_one_session(
            server_config, fixture.client_config(mtu=65507), 2 * limits.max_queued_messages
        )
    )
    held_bytes = held * size
    per_address = held_bytes * limits.max_sessions_per_address
    total = held_bytes * limits.max_sessions
    mib = 1 << 20
    ok = held_bytes <= PIN_BOUND and bool(drops)
    return Outcome(
        ok,
        f"{size}-byte messages: {held_bytes / mib:.1f} MiB held per session ({held} of {sent} "
        f"sent); x {limits.max_sessions_per_address} sessions per address = "
        f"{per_address / mib:,.0f} MiB; x {limits.max_sessions} sessions = {total / mib:,.0f} MiB"
        " (unless a global budget stops it)",
        {
            "message_bytes": size,
            "sent": sent,
            "held_messages": held,
            "held_bytes_per_session": held_bytes,
            "per_address_bytes": per_address,
            "total_bytes_by_session_limits": total,
            "drops": drops,
        },
        "" if ok else "receive queues are bounded in messages, not bytes (issue 8 defect 1)",
    )
