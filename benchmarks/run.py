"""Run every dtlskit benchmark on loopback; report each figure next to ceilings and floors of the
same run.

    dtlskit bench [--quick] [--seconds S] [--sessions N] [--flavour asyncio|sync|both]
                  [--accelerator on|off|both] [--load auto|c|python] [--skip-uvloop]
                  [--skip-trio] [--skip-mbedtls] [--skip-newcomer] [--skip-tls] [--skip-quic]
                  [--socket-buffer BYTES]
                  [--json FILE] [--plot FILE.png]
    python benchmarks/run.py ...          (from a checkout)

Each server runs in a process of its own pinned to CPU 0; the load generator (the C one of
:mod:`.cload`, built on the fly, or the Python fallback) runs pinned to CPU 1. The main figure
is the **server's CPU time per echoed message** (user + system, from /proc/PID/stat over the
measured interval, divided by the replies received in it), which does not depend on whether the
load kept the server busy. A measured interval lasts its ``--seconds`` and, on a loaded machine,
longer: until it saw at least ``min_replies`` replies (``min_handshakes`` handshakes) and
``min_server_ticks`` clock ticks of the server's CPU time, up to 10 x ``--seconds``
(:func:`.common.window_state`); short of that the row fails with a reason naming the load.

Rows, in order (one progress line each on stderr):

1. ceilings: plain UDP echo in Python on uvloop, on the default asyncio loop (a
   ``DatagramProtocol`` and a reader draining up to 64 datagrams per wake-up; the cheaper is
   the ceiling) and blocking (``recvfrom``/``sendto``);
2. the floor: a minimal pyOpenSSL DTLS server, no cookies (messages, handshakes, memory);
3. peers: trio's ``DTLSEndpoint`` (when trio is installed) and python-mbedtls (when it is);
4. dtlskit: asyncio, uvloop, blocking; each with the accelerator on and off (when there is one)
   and each handler style of :data:`.servers.STYLES` (messages and handshakes; memory per
   session at ``--sessions`` sessions for asyncio and blocking);
5. the newcomer's program (:mod:`.newcomer`): 100 clients x 100 fire-and-forget messages;
6. TLS over TCP (:mod:`.tls`): ``dtlskit.tls`` against asyncio's own TLS streams, echo and
   handshakes, with the ratios (a table of its own after the DTLS one).
7. QUIC (:mod:`.quic`): echo streams/s and new connections/s per CPU-second through
   ``dtlskit.quic`` against aioquic used directly, and their ratio (``--skip-quic``).
8. hibernation (issue 15): the asyncio callback server with ``Limits(hibernate_after=0)``
   (echo next to the same server keeping OpenSSL's objects), and "many sessions"
   (:mod:`.many_sessions`): ``--many-sessions`` sessions (100,000; 2,000 with ``--quick``) held
   by one asyncio server, KiB per idle session, and an echo round over all of them.

The table goes to stdout, the figures to ``--json`` (default ``bench-results.json``), and with
``--plot`` a chart of the ratios in two panels (lower is better, higher is better). Exit status
0 when every row was measured, 1 when one failed (the others are still reported), 2 for a usage
error.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any

if __package__ in (None, ""):  # run as a script: import this directory as the package it is
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"  # makes the relative imports below work
    import benchmarks  # noqa: F401

import OpenSSL
from OpenSSL import SSL

from dtlskit.certs import PKIFiles, create_pki

from . import many_sessions, newcomer, report
from . import quic as quic_bench
from . import tls as tls_bench
from .cload import Load, open_load
from .common import BenchmarkError, progress, rss_kib
from .servers import (
    SERVER_CPU,
    STYLES,
    ServerSpec,
    accelerator,
    mbedtls_unavailable,
    start_server,
    trio_unavailable,
    uvloop_unavailable,
)

__all__ = ["Settings", "main", "plan"]

DEFAULT_SOCKET_BUFFER = 1 << 20
"""Bytes of SO_RCVBUF/SO_SNDBUF on every measured socket (not the newcomer's): room for the echo
window of 1 KiB messages. With Linux's usual default a server that falls behind loses the
excess, which would show up as lost messages rather than as CPU per message."""

_SETTLE = 0.5  # seconds to let a server finish its work before reading its memory


@dataclass(frozen=True)
class Settings:
    """How long and how hard to measure."""

    seconds: float = 5.0
    """Measured seconds per figure (after a warm-up)."""
    sessions: int = 10_000
    """Sessions held open for the memory figure."""
    warmup: float = 0.5
    """Seconds of echo load before measuring."""
    concurrency: int = 32
    """Handshakes in flight at once."""
    echo_sessions: int = 4
    """Echo sessions (each from its own source address)."""
    window: int = 8
    """Echo messages in flight per session (32 in all by default)."""
    loss_timeout: float = 1.0
    """Seconds after which an unanswered echo message is counted lost."""
    socket_buffer: int | None = DEFAULT_SOCKET_BUFFER
    """SO_RCVBUF/SO_SNDBUF of every measured socket (None: the system default)."""
    newcomer_clients: int = 100
    newcomer_messages: int = 100
    many_sessions: int = 100_000
    """Sessions held for the "many sessions" row (0: skip it)."""
    many_echo_seconds: float = 60.0
    """Length of the many-sessions echo round."""
    min_replies: int = 200
    """Replies an echo window must see before it ends (the window rule, common.window_state)."""
    min_handshakes: int = 32
    """Completed handshakes a handshakes window must see before it ends."""
    min_server_ticks: int = 5
    """Clock ticks (10 ms each) of server CPU time a window must see before it ends."""


@dataclass(frozen=True)
class Row:
    """One server to measure, and what to measure on it."""

    key: str
    """Its name in the document (``rows``)."""
    role: str
    """``ceiling`` (plain UDP), ``floor`` (minimal pyOpenSSL), ``peer`` (trio) or ``dtlskit``."""
    spec: ServerSpec
    handshakes: bool = True
    memory: bool = False


def plan(
    flavours: list[str],
    accelerators: list[str],
    with_trio: bool,
    with_uvloop: bool,
    with_mbedtls: bool = False,
) -> list[Row]:
    """The rows of one run, in the order they are measured."""
    rows: list[Row] = []
    loops = [loop for loop in ("asyncio", "uvloop", "sync") if loop in flavours]
    if not with_uvloop and "uvloop" in loops:
        loops.remove("uvloop")
    if "uvloop" in loops:
        rows.append(Row("udp-uvloop", "ceiling", ServerSpec("udp", "uvloop"), handshakes=False))
    if "asyncio" in loops:
        for kind, key in (("udp", "udp-asyncio-protocol"), ("udp-drain", "udp-asyncio-drain")):
            rows.append(Row(key, "ceiling", ServerSpec(kind, "asyncio"), handshakes=False))
    if "sync" in loops:
        rows.append(Row("udp-blocking", "ceiling", ServerSpec("udp-block", "sync"), False))
    rows.append(Row("pyopenssl-floor", "floor", ServerSpec("pyopenssl", "sync"), memory=True))
    if with_trio:
        rows.append(Row("trio", "peer", ServerSpec("trio", "trio")))
    if with_mbedtls:
        rows.append(Row("mbedtls", "peer", ServerSpec("mbedtls", "sync")))
    for loop in loops:
        for switch in accelerators:
            for style in STYLES:
                key = f"dtlskit-{loop}-{style}-accel-{switch}"
                # Memory per session: both styles on asyncio; the callback style only on the
                # blocking server (its iterator style is a thread per peer by design).
                memory = (
                    loop != "uvloop"
                    and switch == accelerators[0]
                    and (loop == "asyncio" or style == "callback")
                )
                spec = ServerSpec("dtlskit", loop, style=style, accelerator=switch)
                rows.append(Row(key, "dtlskit", spec, memory=memory))
    if "asyncio" in loops:
        # Issue 15: the same server with every session hibernated, for the echo-cost ratio.
        switch = accelerators[0]
        spec = ServerSpec(
            "dtlskit", "asyncio", style="callback", accelerator=switch, hibernate_after=0.0
        )
        key = f"dtlskit-asyncio-callback-accel-{switch}-hibernated"
        rows.append(Row(key, "hibernated", spec, handshakes=False))
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtlskit bench",
        description="Benchmark dtlskit servers on loopback: server CPU per echoed message and "
        "per new handshake, round trips, memory per session and the newcomer's fire-and-forget "
        "program, each next to ceilings (plain UDP echo) and floors (a minimal pyOpenSSL "
        "server) measured in the same run. Servers run pinned to CPU 0, the load (a C client "
        "built on the fly with cc and the system libssl) on CPU 1.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run for CI: 0.5 s per figure, 1,000 sessions for memory (under a minute)",
    )
    parser.add_argument(
        "--seconds", type=float, help="seconds per figure (default 5; 0.5 with --quick)"
    )
    parser.add_argument(
        "--sessions",
        type=int,
        help="sessions held for the memory figure (default 10000; 1000 with --quick)",
    )
    parser.add_argument(
        "--flavour",
        choices=("asyncio", "sync", "both"),
        default="both",
        help="which dtlskit front end to measure (asyncio includes uvloop when importable)",
    )
    parser.add_argument(
        "--accelerator",
        choices=("on", "off", "both"),
        default="both",
        help="measure dtlskit with its native accelerator on, off (DTLSKIT_NATIVE=0 in the "
        "server) or both (default; 'on' is only measured when an accelerator is installed)",
    )
    parser.add_argument(
        "--load",
        choices=("auto", "c", "python"),
        default="auto",
        help="load generator: the C one (built with cc and libssl; 'auto' falls back to the "
        "Python one when it cannot be built) or the Python one",
    )
    parser.add_argument(
        "--socket-buffer",
        type=int,
        default=DEFAULT_SOCKET_BUFFER,
        metavar="BYTES",
        help="SO_RCVBUF/SO_SNDBUF of every measured socket, servers and clients alike "
        "(default %(default)s; 0 keeps the system default; the newcomer's program always "
        "keeps the default)",
    )
    parser.add_argument("--skip-uvloop", action="store_true", help="do not measure uvloop")
    parser.add_argument("--skip-trio", action="store_true", help="do not measure trio")
    parser.add_argument("--skip-mbedtls", action="store_true", help="do not measure python-mbedtls")
    parser.add_argument(
        "--skip-tls",
        action="store_true",
        help="do not measure TLS over TCP (dtlskit.tls against asyncio's own TLS streams)",
    )
    parser.add_argument(
        "--skip-quic",
        action="store_true",
        help="do not measure QUIC (dtlskit.quic against aioquic used directly)",
    )
    parser.add_argument(
        "--skip-newcomer", action="store_true", help="do not run the newcomer's program"
    )
    parser.add_argument(
        "--many-sessions",
        type=int,
        metavar="N",
        help="sessions one asyncio server holds for the 'many sessions' row (hibernated; "
        "default 100000, 2000 with --quick; 0 skips the row)",
    )
    parser.add_argument(
        "--many-echo-seconds",
        type=float,
        metavar="S",
        help="length of the many-sessions echo round (default 60; 5 with --quick)",
    )
    parser.add_argument(
        "--json",
        default="bench-results.json",
        metavar="FILE",
        help="write the figures here (default: %(default)s)",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw the ratios, two panels (needs matplotlib)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; print the table to stdout. Returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.plot and not report.can_plot():
        print(
            "dtlskit bench: error: --plot needs matplotlib, which is not installed "
            "(pip install matplotlib)",
            file=sys.stderr,
        )
        return 2
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 5.0)
    sessions = args.sessions if args.sessions is not None else (1000 if args.quick else 10_000)
    if not seconds > 0 or sessions < 1 or args.socket_buffer < 0:
        parser.error("--seconds must be positive, --sessions at least 1, --socket-buffer >= 0")
    many = args.many_sessions
    if many is None:
        many = 2000 if args.quick else 100_000
    many_seconds = args.many_echo_seconds or (5.0 if args.quick else 60.0)
    if many < 0 or not many_seconds > 0:
        parser.error("--many-sessions must be >= 0 and --many-echo-seconds positive")
    settings = Settings(
        many_sessions=many,
        many_echo_seconds=many_seconds,
        seconds=seconds,
        sessions=sessions,
        warmup=0.2 if args.quick else 0.5,
        loss_timeout=0.5 if args.quick else 1.0,
        socket_buffer=args.socket_buffer or None,
    )
    document = _new_document(settings, args.quick)
    flavours = ["asyncio", "uvloop", "sync"]
    if args.flavour == "asyncio":
        flavours.remove("sync")
    elif args.flavour == "sync":
        flavours = ["sync"]
    why_not_uvloop = "--skip-uvloop" if args.skip_uvloop else uvloop_unavailable()
    if "uvloop" in flavours and why_not_uvloop is not None:
        document["skipped"]["uvloop"] = why_not_uvloop
    why_not_trio = "--skip-trio" if args.skip_trio else trio_unavailable()
    if why_not_trio is not None:
        document["skipped"]["trio"] = why_not_trio
    installed = accelerator()
    accelerators = ["off"] if args.accelerator == "off" else ["on"]
    if args.accelerator in ("on", "both") and installed == "python":
        document["skipped"]["accelerator on"] = (
            "no native accelerator installed (dtlskit.ACCELERATOR is 'python'): the pure-Python "
            "path is what runs"
        )
        accelerators = ["off"]
    elif args.accelerator == "both":
        accelerators = ["on", "off"]
    document["meta"]["accelerator_installed"] = installed
    why_not_mbedtls = "--skip-mbedtls" if args.skip_mbedtls else mbedtls_unavailable()
    if why_not_mbedtls is not None:
        document["skipped"]["python-mbedtls"] = why_not_mbedtls
    rows = plan(
        flavours,
        accelerators,
        why_not_trio is None,
        why_not_uvloop is None,
        why_not_mbedtls is None,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dtlskit-bench-") as directory:
        pki = create_pki(directory)
        try:
            load = open_load(args.load, str(pki.ca_cert))
        except BenchmarkError as exc:
            print(f"dtlskit bench: error: {exc}", file=sys.stderr)
            return 2
        document["meta"]["load_generator"] = load.kind
        document["meta"]["load_generator_description"] = load.description
        progress(f"load generator: {load.description}")
        try:
            for row in rows:
                _measure_row(document, row, settings, pki, load)
        finally:
            load.close()
        if not args.skip_newcomer:
            _measure_newcomer(document, settings, pki)
        if not args.skip_tls:  # TLS over TCP (issue 10): benchmarks/tls.py
            document["tls"] = tls_bench.measure(settings.seconds, pki, 1 if args.quick else 3)
        if not args.skip_quic:
            _measure_quic(document, settings, pki, args.quick)
        if settings.many_sessions:
            _measure_many_sessions(document, settings)
    document["meta"]["total_seconds"] = time.monotonic() - started
    document["meta"]["load_average_at_end"] = list(os.getloadavg())
    report.add_ratios(document)
    print(report.table(document), flush=True)
    if "tls" in document:
        print(tls_bench.table(document["tls"]), flush=True)
    if document.get("quic"):
        print(quic_bench.table(document["quic"]), flush=True)
    report.write_json(document, args.json)
    progress(f"figures written to {args.json}")
    if args.plot:
        report.plot(document, args.plot)
        progress(f"ratios drawn in {args.plot}")
    return 1 if document["errors"] or document.get("tls", {}).get("errors") else 0


def _new_document(settings: Settings, quick: bool) -> dict[str, Any]:
    in_flight = settings.echo_sessions * settings.window
    notes = [
        "server CPU per message = the server process's user+system CPU time over the measured "
        "interval (/proc/PID/stat, 10 ms ticks) divided by the replies received in it",
        f"echo: {settings.echo_sessions} sessions x {settings.window} = {in_flight} messages "
        f"in flight; a message unanswered after {settings.loss_timeout:g} s is counted lost "
        "(DTLS never retransmits application data)",
        "handshakes: new sessions with full handshakes (no resumption), each from its own "
        "loopback source address, so no per-address limit (HelloVerifyRequests per second) caps "
        "them; the floor and trio get the same load",
        "memory: resident set growth of a fresh server from a warm start to --sessions "
        "established sessions, divided by the sessions; what dtlskit adds = its figure minus "
        "the minimal pyOpenSSL server's (the same SSL objects, a dict entry each)",
    ]
    if settings.socket_buffer is not None:
        notes.append(
            f"SO_RCVBUF/SO_SNDBUF set to {settings.socket_buffer} bytes on every measured socket "
            "(--socket-buffer 0 keeps the system default)"
        )
    return {
        "meta": {
            "seconds": settings.seconds,
            "sessions": settings.sessions,
            "quick": quick,
            "warmup": settings.warmup,
            "concurrency": settings.concurrency,
            "echo_sessions": settings.echo_sessions,
            "window": settings.window,
            "in_flight": in_flight,
            "loss_timeout": settings.loss_timeout,
            "socket_buffer": settings.socket_buffer,
            "server_cpu": SERVER_CPU,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyopenssl": OpenSSL.__version__,
            "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
            "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "rows": {},
        "ceilings": {},
        "newcomer": None,
        "ratios": [],
        "memory": [],
        "targets": [],
        "summary": "",
        "skipped": {},
        "errors": {},
        "notes": notes,
    }


def _measure_row(
    document: dict[str, Any], row: Row, settings: Settings, pki: PKIFiles, load: Load
) -> None:
    spec = replace(
        row.spec,
        certfile=str(pki.server_cert),
        keyfile=str(pki.server_key),
        socket_buffer=settings.socket_buffer,
        max_sessions=max(20_000, 2 * settings.sessions),
    )
    figures: dict[str, Any] = {
        "role": row.role,
        "kind": spec.kind,
        "loop": spec.loop,
        "style": spec.style if spec.kind == "dtlskit" else None,
        "accelerator_switch": spec.accelerator if spec.kind == "dtlskit" else None,
        "label": report.row_label(row.key, spec.kind, spec.loop, spec.style, None),
        "echo": {},
    }
    document["rows"][row.key] = figures
    protocol = "udp" if spec.kind.startswith("udp") else "dtls"
    try:
        child, port, info = start_server(spec)
        try:
            figures["accelerator"] = info["accelerator"]
            figures["server_cpus"] = info["cpus"]
            figures["label"] = report.row_label(
                row.key, spec.kind, spec.loop, spec.style, info["accelerator"]
            )
            for size in report.ECHO_SIZES:
                progress(f"{row.key}: echo, {size}-byte messages")
                figures["echo"][str(size)] = load.echo(
                    protocol=protocol,
                    port=port,
                    server_pid=child.pid,
                    sessions=settings.echo_sessions,
                    window=settings.window,
                    size=size,
                    warmup=settings.warmup,
                    seconds=settings.seconds,
                    loss_timeout=settings.loss_timeout,
                    socket_buffer=settings.socket_buffer,
                    min_work=settings.min_replies,
                    min_ticks=settings.min_server_ticks,
                )
            if row.handshakes:
                progress(f"{row.key}: new handshakes, {settings.concurrency} at a time")
                figures["handshakes"] = load.handshakes(
                    port=port,
                    server_pid=child.pid,
                    concurrency=settings.concurrency,
                    seconds=settings.seconds,
                    min_work=settings.min_handshakes,
                    min_ticks=settings.min_server_ticks,
                )
            figures["statistics"] = child.request(("stats",), 30.0)[1]
        finally:
            child.end()
        if row.memory:
            progress(f"{row.key}: memory, {settings.sessions} sessions on a fresh server")
            figures["memory"] = _measure_memory(spec, settings, load)
    except BenchmarkError as exc:
        progress(f"{row.key}: FAILED: {exc}")
        document["errors"][row.key] = str(exc)


def _measure_memory(spec: ServerSpec, settings: Settings, load: Load) -> dict[str, Any]:
    child, port, _ = start_server(spec)
    try:
        keep = {"port": port, "server_pid": child.pid, "concurrency": settings.concurrency}
        # Warm up (code paths, first allocations, a handler thread or task), then measure.
        load.handshakes(**keep, count=settings.concurrency, keep=True)
        load.release()
        time.sleep(_SETTLE)
        before = rss_kib(child.pid)
        held = load.handshakes(**keep, count=settings.sessions, keep=True)
        time.sleep(_SETTLE)
        after = rss_kib(child.pid)
        statistics = child.request(("stats",), 30.0)[1]
        load.release()
    finally:
        child.end()
    established = int(held["completed"])
    if established < 1:
        raise BenchmarkError(f"no session could be established for the memory figure: {held}")
    server_sessions = int(statistics.get("sessions", 0))
    return {
        "sessions_wanted": settings.sessions,
        "established": established,
        "failed": int(held.get("failed", 0)),
        "server_sessions": server_sessions,
        "seconds_to_establish": held.get("wall_s", held.get("seconds_to_establish")),
        "before_kib": before,
        "after_kib": after,
        "kib_per_session": (after - before) / established,
    }


def _measure_quic(
    document: dict[str, Any], settings: Settings, pki: PKIFiles, quick: bool
) -> None:
    """The QUIC rows (:mod:`.quic`): dtlskit.quic against aioquic used directly."""
    rounds = 2 if quick else 5
    progress(f"QUIC: dtlskit.quic vs aioquic, {rounds} alternating rounds")
    try:
        document["quic"] = quic_bench.measure(pki, settings.seconds, rounds)
    except ImportError as exc:
        document["skipped"]["quic"] = f"aioquic is not installed ({exc}): pip install dtlskit[quic]"
    except (BenchmarkError, OSError, AssertionError, TimeoutError) as exc:
        progress(f"QUIC: FAILED: {exc}")
        document["errors"]["quic"] = str(exc)


def _measure_many_sessions(document: dict[str, Any], settings: Settings) -> None:
    many = many_sessions.ManySettings(
        sessions=settings.many_sessions,
        warmup_sessions=min(500, max(50, settings.many_sessions // 10)),
        echo_seconds=settings.many_echo_seconds,
        idle_seconds=32.0 if settings.many_sessions >= 10_000 else 12.0,
    )
    progress(f"many sessions: {many.sessions} hibernated sessions on one asyncio server")
    try:
        document["many_sessions"] = many_sessions.measure(many)
    except BenchmarkError as exc:
        progress(f"many sessions: FAILED: {exc}")
        document["errors"]["many_sessions"] = str(exc)


def _measure_newcomer(document: dict[str, Any], settings: Settings, pki: PKIFiles) -> None:
    clients, messages = settings.newcomer_clients, settings.newcomer_messages
    progress(f"newcomer's program: {clients} clients x {messages} fire-and-forget messages")
    try:
        document["newcomer"] = newcomer.run_in_child(
            str(pki.server_cert), str(pki.server_key), str(pki.ca_cert), clients, messages
        )
    except BenchmarkError as exc:
        progress(f"newcomer: FAILED: {exc}")
        document["errors"]["newcomer"] = str(exc)


if __name__ == "__main__":
    sys.exit(main())
