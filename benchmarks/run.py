"""Run every dtlskit benchmark on loopback and report each figure next to a ceiling of the same run.

    dtlskit bench [--quick] [--seconds S] [--sessions N] [--flavour asyncio|sync|both]
                  [--skip-uvloop] [--socket-buffer BYTES] [--json FILE] [--plot FILE.png]
    python benchmarks/run.py ...          (from a checkout)

Steps, in order (one progress line each on stderr):

1. Ceilings: in-memory raw pyOpenSSL handshakes/s and 64-byte records/s on one core
   (:mod:`.engine`, in this process, before anything else runs).
2. For each server flavour (asyncio on the default loop, asyncio on uvloop when importable,
   the blocking ``dtlskit.sync`` server), with the load in a separate process:

   a. plain UDP echo on the same loop (or a plain blocking echo thread): msgs/s, p50/p99 RTT;
   b. new DTLS handshakes per second, cookie exchange on, from distinct source addresses;
   c. DTLS echo msgs/s and p50/p99 RTT, 64 B and 1 KiB, a window of messages per client;
   d. resident memory per established session: a fresh server, /proc VmRSS before and after
      the load process establishes ``--sessions`` sessions.

The table goes to stdout, the figures to ``--json`` (default ``bench-results.json``), and with
``--plot`` a bar chart of the ratios (needs matplotlib). Exit status 0 when every step was
measured, 1 when one failed (the others are still reported), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

if __package__ in (None, ""):  # run as a script: import this directory as the package it is
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"  # makes the relative imports below work
    import benchmarks  # noqa: F401

import OpenSSL
from OpenSSL import SSL

from dtlskit.certs import PKIFiles, create_pki

from . import engine, report
from .common import BenchmarkError, Child, machine_busy_seconds, progress, rss_kib
from .loadgen import start_load
from .servers import ServerSpec, start_server, uvloop_unavailable

__all__ = ["Settings", "main"]

DEFAULT_SOCKET_BUFFER = 1 << 20
"""Bytes of SO_RCVBUF/SO_SNDBUF on every socket: room for the whole echo window of 1 KiB
messages (4 x 32 in flight). Linux's usual default (212,992 bytes) is not: when the server
falls behind, the kernel drops the excess and it shows up as lost messages."""

_SETTLE = 0.5  # seconds to let a server finish its work before reading its memory


@dataclass(frozen=True)
class Settings:
    """How long and how hard to measure."""

    seconds: float = 5.0
    """Measured seconds per figure (after a warm-up)."""
    sessions: int = 1000
    """Sessions held open for the memory measurement."""
    warmup: float = 0.5
    """Seconds of echo load before measuring."""
    concurrency: int = 16
    """Handshakes in flight at once."""
    clients: int = 4
    """Echo clients."""
    window: int = 32
    """Echo messages in flight per client."""
    loss_timeout: float = 1.0
    """Seconds after which an unanswered echo message is counted lost."""
    socket_buffer: int | None = DEFAULT_SOCKET_BUFFER
    """SO_RCVBUF/SO_SNDBUF of every socket (None: the system default)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtlskit bench",
        description="Benchmark dtlskit servers on loopback; every figure is reported as a "
        "ratio to a ceiling measured in the same run.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run for CI: about 1 s per measurement and 100 sessions (under a minute)",
    )
    parser.add_argument(
        "--seconds", type=float, help="seconds per measurement (default 5; 1 with --quick)"
    )
    parser.add_argument(
        "--sessions",
        type=int,
        help="sessions held for the memory figure (default 1000; 100 with --quick)",
    )
    parser.add_argument(
        "--flavour",
        choices=("asyncio", "sync", "both"),
        default="both",
        help="which front end to measure (asyncio includes uvloop when importable)",
    )
    parser.add_argument(
        "--socket-buffer",
        type=int,
        default=DEFAULT_SOCKET_BUFFER,
        metavar="BYTES",
        help="SO_RCVBUF/SO_SNDBUF of every socket, servers and clients alike "
        "(default %(default)s; 0 keeps the system default)",
    )
    parser.add_argument("--skip-uvloop", action="store_true", help="do not measure uvloop")
    parser.add_argument(
        "--json",
        default="bench-results.json",
        metavar="FILE",
        help="write the figures here (default: %(default)s)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw the ratios (needs matplotlib)")
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
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    sessions = args.sessions if args.sessions is not None else (100 if args.quick else 1000)
    if not seconds > 0 or sessions < 1 or args.socket_buffer < 0:
        parser.error("--seconds must be positive, --sessions at least 1, --socket-buffer >= 0")
    settings = Settings(
        seconds=seconds,
        sessions=sessions,
        warmup=0.2 if args.quick else 0.5,
        loss_timeout=0.5 if args.quick else 1.0,
        socket_buffer=args.socket_buffer or None,
    )
    flavours = ["asyncio", "uvloop", "sync"]
    if args.flavour == "asyncio":
        flavours.remove("sync")
    elif args.flavour == "sync":
        flavours = ["sync"]
    document = _new_document(settings, args.quick)
    if "uvloop" in flavours:
        why = "--skip-uvloop" if args.skip_uvloop else uvloop_unavailable()
        if why is not None:
            flavours.remove("uvloop")
            document["skipped"]["uvloop"] = why
            progress(f"note: uvloop skipped: {why}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dtlskit-bench-") as directory:
        pki = create_pki(directory)
        progress(f"ceiling: in-memory pyOpenSSL handshakes and records, {seconds:g} s each")
        document["ceilings"]["in_memory"] = _measure_in_memory(seconds, pki)
        load = start_load()
        try:
            for flavour in flavours:
                try:
                    _measure_flavour(document, flavour, settings, pki, load)
                except BenchmarkError as exc:
                    progress(f"{flavour}: FAILED: {exc}")
                    document["errors"][flavour] = str(exc)
                    load.end()  # it may be mid-job: start the next flavour with a fresh one
                    load = start_load()
        finally:
            load.end()
    document["meta"]["total_seconds"] = time.monotonic() - started
    document["meta"]["load_average_at_end"] = list(os.getloadavg())
    report.add_ratios(document)
    print(report.table(document), flush=True)
    report.write_json(document, args.json)
    progress(f"figures written to {args.json}")
    if args.plot:
        report.plot(document, args.plot)
        progress(f"ratios drawn in {args.plot}")
    return 1 if document["errors"] else 0


def _measure_in_memory(seconds: float, pki: PKIFiles) -> dict[str, float]:
    """:func:`.engine.measure`, plus how busy the rest of the machine was meanwhile."""
    wall, own, machine = time.monotonic(), time.process_time(), machine_busy_seconds()
    figures = engine.measure(seconds, pki=pki)
    wall = time.monotonic() - wall
    other = machine_busy_seconds() - machine - (time.process_time() - own)
    return {**figures, "other_cpu_share": max(0.0, other) / wall}


def _new_document(settings: Settings, quick: bool) -> dict[str, Any]:
    notes = [
        "the handshake ceiling runs client AND server on one core in memory; the servers "
        "measured run only the server side on their core (the clients run in another process), "
        "so their ratio can exceed 1",
        "echo msgs/s counts replies received by the clients; a message unanswered after "
        f"{settings.loss_timeout:g} s is counted lost (DTLS never retransmits application data)",
    ]
    if settings.socket_buffer is not None:
        notes.append(
            f"SO_RCVBUF/SO_SNDBUF set to {settings.socket_buffer} bytes on every socket "
            "(--socket-buffer 0 keeps the system default)"
        )
    else:
        notes.append("socket buffers: the system default")
    return {
        "meta": {
            "seconds": settings.seconds,
            "sessions": settings.sessions,
            "quick": quick,
            "warmup": settings.warmup,
            "concurrency": settings.concurrency,
            "clients": settings.clients,
            "window": settings.window,
            "loss_timeout": settings.loss_timeout,
            "socket_buffer": settings.socket_buffer,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyopenssl": OpenSSL.__version__,
            "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
            "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "ceilings": {"plain_udp": {}},
        "servers": {},
        "ratios": [],
        "skipped": {},
        "errors": {},
        "notes": notes,
    }


def _job_timeout(settings: Settings) -> float:
    return settings.warmup + settings.seconds + settings.loss_timeout + 60.0


def _measure_flavour(
    document: dict[str, Any], flavour: str, settings: Settings, pki: PKIFiles, load: Child
) -> None:
    figures: dict[str, Any] = {}
    document["servers"][flavour] = figures
    base = {
        "cafile": str(pki.ca_cert),
        "seconds": settings.seconds,
        "socket_buffer": settings.socket_buffer,
    }
    echo = {
        **base,
        "job": "echo",
        "clients": settings.clients,
        "window": settings.window,
        "warmup": settings.warmup,
        "loss_timeout": settings.loss_timeout,
    }
    timeout = _job_timeout(settings)

    # Ceiling: plain UDP echo on the same loop, through the same load generator.
    plain: dict[str, Any] = {}
    document["ceilings"]["plain_udp"][flavour] = plain
    child, port = start_server(ServerSpec(flavour, "udp", socket_buffer=settings.socket_buffer))
    try:
        for size in report.ECHO_SIZES:
            progress(f"{flavour}: ceiling: plain UDP echo, {size}-byte messages")
            spec = {**echo, "protocol": "udp", "port": port, "server_pid": child.pid, "size": size}
            plain[str(size)] = load.request(("job", spec), timeout)[1]
    finally:
        child.end()

    dtls = ServerSpec(
        flavour,
        "dtls",
        certfile=str(pki.server_cert),
        keyfile=str(pki.server_key),
        socket_buffer=settings.socket_buffer,
    )
    child, port = start_server(dtls)
    try:
        where = {"port": port, "server_pid": child.pid}
        progress(f"{flavour}: DTLS handshakes/s, {settings.concurrency} clients at a time")
        spec = {**base, **where, "job": "handshakes", "concurrency": settings.concurrency}
        figures["handshakes"] = load.request(("job", spec), timeout)[1]
        figures["echo"] = {}
        for size in report.ECHO_SIZES:
            progress(f"{flavour}: DTLS echo, {size}-byte messages")
            spec = {**echo, **where, "protocol": "dtls", "size": size}
            figures["echo"][str(size)] = load.request(("job", spec), timeout)[1]
        figures["statistics"] = child.request(("stats",), 30.0)[1]
    finally:
        child.end()

    progress(f"{flavour}: memory per session, {settings.sessions} sessions on a fresh server")
    figures["rss"] = _measure_rss(dtls, str(pki.ca_cert), settings, load)


def _measure_rss(spec: ServerSpec, cafile: str, settings: Settings, load: Child) -> dict[str, Any]:
    child, port = start_server(spec)
    try:
        hold = {
            "job": "hold",
            "cafile": cafile,
            "port": port,
            "concurrency": settings.concurrency,
            "hold_timeout": 120.0,
        }
        timeout = 60.0 + settings.sessions / 10  # generous: a few hundred handshakes/s expected
        # Warm up (code paths, first allocations, a handler thread or task), then measure.
        load.request(("job", {**hold, "sessions": settings.concurrency}), timeout)
        load.request(("release",), timeout)
        time.sleep(_SETTLE)
        before = rss_kib(child.pid)
        held = load.request(("job", {**hold, "sessions": settings.sessions}), timeout)[1]
        time.sleep(_SETTLE)
        after = rss_kib(child.pid)
        statistics = child.request(("stats",), 30.0)[1]
        load.request(("release",), timeout)
    finally:
        child.end()
    established = int(held["established"])
    if established < 1:
        raise BenchmarkError(f"no session could be established for the memory figure: {held}")
    return {
        **held,
        "before_kib": before,
        "after_kib": after,
        "kib_per_session": (after - before) / established,
        "server_sessions": statistics["sessions"],
    }


if __name__ == "__main__":
    sys.exit(main())
